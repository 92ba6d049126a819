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

from mura_cli.errors import MuraError
from mura_cli.inference.device import Runtime
from mura_cli.inference.predictor import Predictor, predict_records
from mura_cli.model.factory import load_model, resolve_model_dir

TEACHER_FILE = "teacher_probabilities.csv"


@dataclass(frozen=True)
class Teacher:
    """The teacher's probabilities on the training images (in the records' order) and where they
    came from, for the student's provenance."""

    probabilities: np.ndarray
    provenance: dict


def teacher_probabilities(model: str, records, runtime: Runtime, batch_size: int, workers: int) -> Teacher:
    """Score ``records`` with the teacher; every image must get a probability (an image the teacher
    cannot decode has no target, so the run stops and names it)."""
    directory = resolve_model_dir(model)
    loaded = load_model(directory)
    predictor = Predictor(loaded, runtime, heatmaps=False)
    probs = np.full(len(records), np.nan)
    for result in predict_records(predictor, records, batch_size, workers):
        probs[np.asarray(result.indices)] = np.asarray(result.probabilities, dtype=float)
    missing = [records[i].rel_path for i in np.flatnonzero(~np.isfinite(probs))]
    if missing:
        raise MuraError(
            f"--distill-from {model}: the teacher could not score {len(missing)} training image(s), "
            f"e.g. {missing[0]}"
        )
    cfg = loaded.config
    return Teacher(
        probs,
        {
            "model": str(directory),
            "name": cfg.name,
            "weights_sha256": loaded.weights_sha256,
            "input_size": list(cfg.input_size),
            "tta": cfg.tta,
            "validation_auroc": (cfg.provenance or {}).get("validation_study_metrics", {}).get("auroc"),
            "mean_probability": float(probs.mean()),
        },
    )


def soft_targets(labels: np.ndarray, teacher: np.ndarray | None, weight: float) -> np.ndarray:
    """(1 - weight) * label + weight * teacher probability; the labels themselves without a teacher."""
    labels = np.asarray(labels, dtype=float)
    if teacher is None or weight == 0:
        return labels
    return (1.0 - weight) * labels + weight * np.asarray(teacher, dtype=float)


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
