"""Distillation: a trained model's calibrated probabilities on the training images as soft targets.

The teacher (a model folder or a model name) scores every training image once, un-augmented, at its
own input size, with its own calibration and test-time augmentation, before the first epoch. Each
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

TEACHER_FILE = "teacher_probabilities.csv"


@dataclass(frozen=True)
class Teacher:
    """The teacher's probabilities on the training images (in the records' order; NaN where it could
    not score one) and where they came from, for the student's provenance."""

    probabilities: np.ndarray
    provenance: dict


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


def check_no_leak(directory: Path, val_paths) -> bool:
    """Refuse a teacher that trained on any of the student's validation images (its ``split.csv``
    says which images it trained on): the student would learn a function fitted to the images that
    choose its epoch, calibration and threshold. Returns whether the teacher's split could be read."""
    split_file = directory / "split.csv"
    if not split_file.is_file():
        return False
    split = pd.read_csv(split_file)
    if not {"rel_path", "side"} <= set(split.columns):
        return False
    seen = set(split.loc[split["side"] == "train", "rel_path"].astype(str)) & set(val_paths)
    if seen:
        raise MuraError(
            f"--distill-from {directory}: the teacher trained on {len(seen)} of this run's validation "
            f"images (e.g. {sorted(seen)[0]}), which would leak into the choice of epoch and the "
            "calibration; train the teacher on the same split (same data, --seed and --val-fraction)"
        )
    return True


def checked_teacher(model: str, val_paths) -> tuple[Path, bool]:
    """(the teacher's folder, whether its split could be checked for leakage), refusing a teacher
    that is not a model folder or that trained on any of ``val_paths``."""
    directory = resolve_teacher(model)
    return directory, check_no_leak(directory, val_paths)


def teacher_probabilities(
    directory: Path, records, runtime: Runtime, batch_size: int, workers: int
) -> Teacher:
    """Score ``records`` with the teacher in ``directory`` (NaN where it cannot decode an image: that
    image keeps its label as its target). The scoring runs on a forked torch random state, so that a
    resumed run draws the same augmentation afterwards as an uninterrupted one."""
    loaded = load_model(directory)
    predictor = Predictor(loaded, runtime, heatmaps=False)
    probs = np.full(len(records), np.nan)
    with torch.random.fork_rng(devices=[]):
        for result in predict_records(predictor, records, batch_size, workers):
            probs[np.asarray(result.indices)] = np.asarray(result.probabilities, dtype=float)
    cfg = loaded.config
    scored = np.isfinite(probs)
    return Teacher(
        probs,
        {
            "model": str(directory),
            "name": cfg.name,
            "weights_sha256": loaded.weights_sha256,
            "input_size": list(cfg.input_size),
            "tta": cfg.tta,
            "validation_auroc": (cfg.provenance or {}).get("validation_study_metrics", {}).get("auroc"),
            "mean_probability": float(probs[scored].mean()) if scored.any() else None,
            "images_unscored": int((~scored).sum()),
        },
    )


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
        }
    ).to_csv(path, index=False)
    return path
