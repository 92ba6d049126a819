"""Distillation: trained models' calibrated probabilities on the training images as soft targets.

The teacher (a model folder or a model name) scores every training image once, un-augmented, at its
own input size, with its own calibration and test-time augmentation, before the first epoch. Several
teachers cross-fit: each trained without one fold of the training images (``train --split`` with that
fold's side 'holdout') scores the images it never saw, so that no image's soft target comes from a
model that fitted its label. Each
image's target is then ``(1 - weight) * label + weight * teacher probability``, so that a student
held back by other losses (the box and deletion losses) can learn what a plainer, stronger model knows
about how likely each image is to be positive (Hinton et al., 2015, "Distilling the knowledge in a
neural network"; for a binary task the soft target is the teacher's probability itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mura_cli.errors import ModelError, MuraError
from mura_cli.inference.device import Runtime
from mura_cli.inference.predictor import Predictor, predict_records
from mura_cli.model.factory import CONFIG_FILE, WEIGHTS_FILE, load_model, resolve_model_dir
from mura_cli.training.split import read_split_file

TEACHER_FILE = "teacher_probabilities.csv"


@dataclass(frozen=True)
class Teacher:
    """The teachers' probability per training image (in the records' order; NaN where none could
    score it), whether it came from teachers that never trained on the image (out of fold), and where
    the probabilities came from, for the student's provenance."""

    probabilities: np.ndarray
    out_of_fold: np.ndarray
    provenance: dict


@dataclass(frozen=True)
class TeacherSource:
    """A teacher's folder and the side of each image its ``split.csv`` names (None: no split file,
    so it is taken to have seen every image)."""

    directory: Path
    sides: dict[str, str] | None

    def held_out(self, rel_path: str) -> bool:
        """Whether the teacher's split names the image and it did not train on it."""
        return self.sides is not None and self.sides.get(rel_path, "train") != "train"


def resolve_teacher(model: str) -> Path:
    """The teacher's model folder; a ModelError naming the option when it is not a model folder."""
    try:
        directory = resolve_model_dir(model)
    except ModelError as exc:
        raise ModelError(f"--distill-from: {exc}") from None
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise ModelError(
            f"--distill-from {model}: not a model folder (no {' or '.join(missing)} in {directory})"
        )
    return directory


def teacher_sides(directory: Path) -> dict[str, str] | None:
    """rel_path -> side of the teacher's ``split.csv`` (None without one; a MuraError naming the file
    when it cannot be read as a split file)."""
    split_file = directory / "split.csv"
    if not split_file.is_file():
        return None
    try:
        split = read_split_file(split_file)
    except MuraError as exc:
        raise MuraError(f"--distill-from: {exc}") from None
    return dict(zip(split["rel_path"], split["side"]))


def check_no_leak(source: TeacherSource, val_paths, train_paths) -> None:
    """Refuse a teacher that trained on any of the student's validation images (the student would
    learn a function fitted to the images that choose its epoch, calibration and threshold), and one
    whose split names none of this run's images (other data, or the same images under another path
    form, e.g. a manifest's paths against a folder's): its leakage could not be checked."""
    if source.sides is None:
        return
    if not set(source.sides) & (set(val_paths) | set(train_paths)):
        raise MuraError(
            f"--distill-from {source.directory}: its split.csv names none of this run's images (another "
            "dataset, or the same images under another path form: train teacher and student on the "
            "same DATA), so it cannot be checked for leakage"
        )
    seen = sorted(p for p in val_paths if source.sides.get(p) == "train")
    if seen:
        raise MuraError(
            f"--distill-from {source.directory}: the teacher trained on {len(seen)} of this run's "
            f"validation images (e.g. {seen[0]}), which would leak into the choice of epoch and "
            "the calibration; train the teacher on the same validation images (--split SPLIT.csv)"
        )


def checked_teachers(models, val_paths, train_paths) -> tuple[TeacherSource, ...]:
    """Each teacher's folder and split, refusing one that is not a model folder, has an unreadable
    split, or trained on any of ``val_paths``."""
    sources = []
    for model in models:
        directory = resolve_teacher(model)
        source = TeacherSource(directory, teacher_sides(directory))
        check_no_leak(source, val_paths, train_paths)
        sources.append(source)
    return tuple(sources)


def assign_teachers(sources, rel_paths) -> tuple[np.ndarray, np.ndarray]:
    """(which teachers score each image: a teachers x images bool matrix, whether each image is
    scored out of fold). An image goes to the teachers whose split shows they did not train on it
    (cross-fitting: folds of the training images, one teacher trained without each fold); an image
    every teacher trained on (or that no split names) goes to all of them."""
    out = np.array([[s.held_out(p) for p in rel_paths] for s in sources], dtype=bool)
    out = out.reshape(len(sources), len(rel_paths))
    held_out = out.any(axis=0)
    return np.where(held_out[None, :], out, True), held_out


def teacher_probabilities(sources, records, runtime: Runtime, batch_size: int, workers: int) -> Teacher:
    """Score ``records`` with the teachers ``assign_teachers`` gives each image, the image's
    probability the mean of theirs (NaN where none could decode it: that image keeps its label as its
    target). The scoring runs on a forked torch random state, so that a resumed run draws the same
    augmentation afterwards as an uninterrupted one."""
    assigned, held_out = assign_teachers(sources, [r.rel_path for r in records])
    probs = np.full(assigned.shape, np.nan)
    described = []
    with torch.random.fork_rng(devices=[]):
        for t, source in enumerate(sources):
            loaded = load_model(source.directory)
            chosen = np.flatnonzero(assigned[t])
            if chosen.size:
                predictor = Predictor(loaded, runtime, heatmaps=False)
                subset = [records[i] for i in chosen]
                for result in predict_records(predictor, subset, batch_size, workers):
                    probs[t, chosen[np.asarray(result.indices)]] = np.asarray(
                        result.probabilities, dtype=float
                    )
                del predictor
            described.append(_describe(source, loaded, chosen.size))
            del loaded  # one teacher in memory at a time
    scored = np.isfinite(probs).any(axis=0)
    mean = np.full(len(records), np.nan)
    mean[scored] = np.nanmean(probs[:, scored], axis=0)
    out_of_fold = held_out & scored
    provenance = {
        "teachers": described,
        "images_out_of_fold": int(out_of_fold.sum()),
        "images_in_sample": int((scored & ~held_out).sum()),
        "mean_probability": float(mean[scored].mean()) if scored.any() else None,
        "images_unscored": int((~scored).sum()),
    }
    return Teacher(mean, out_of_fold, provenance)


def teacher_shas(provenance: dict | None) -> list[str]:
    """The teachers' weight hashes in a run's teacher provenance, also of a checkpoint written when a
    run had a single teacher (its provenance one teacher's, not a list)."""
    if not provenance:
        return []
    if "teachers" in provenance:
        return [str(t.get("weights_sha256")) for t in provenance["teachers"]]
    return [str(provenance.get("weights_sha256"))]


def _describe(source: TeacherSource, loaded, images: int) -> dict:
    cfg = loaded.config
    return {
        "model": str(source.directory),
        "name": cfg.name,
        "weights_sha256": loaded.weights_sha256,
        "input_size": list(cfg.input_size),
        "tta": cfg.tta,
        "validation_auroc": (cfg.provenance or {}).get("validation_study_metrics", {}).get("auroc"),
        "split_checked": source.sides is not None,
        "images_scored": int(images),
    }


def soft_targets(labels: np.ndarray, teacher: np.ndarray | None, weight: float) -> np.ndarray:
    """(1 - weight) * label + weight * teacher probability; the label itself without a teacher or
    where the teacher has no probability (NaN)."""
    labels = np.asarray(labels, dtype=float)
    if teacher is None or weight == 0:
        return labels
    teacher = np.asarray(teacher, dtype=float)
    return np.where(np.isfinite(teacher), (1.0 - weight) * labels + weight * teacher, labels)


def write_teacher_file(records, teacher: Teacher, out_dir: Path) -> Path:
    """The teacher's probability per training image, beside the student (what it was taught)."""
    path = Path(out_dir) / TEACHER_FILE
    pd.DataFrame(
        {
            "path": [r.rel_path for r in records],
            "label": [int(r.label) for r in records],
            "teacher_probability": teacher.probabilities,
            "out_of_fold": teacher.out_of_fold,
        }
    ).to_csv(path, index=False)
    return path
