"""PNG plots with matplotlib (headless): training curves, ROC curves, reliability diagram."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from mura_cli.files import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def training_curves(log: pd.DataFrame, path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(log["epoch"], log["train_loss"], marker="o", label="train (weighted BCE)")
    left.plot(log["epoch"], log["val_loss"], marker="o", label="validation studies (BCE)")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    right.plot(log["epoch"], log["val_auroc"], marker="o", label="AUROC")
    right.plot(log["epoch"], log["val_kappa"], marker="o", label="Cohen's kappa @0.5")
    right.set_xlabel("epoch")
    right.set_ylim(-0.05, 1.0)
    right.set_title("validation, study level")
    right.legend()
    return _save(fig, path)


def roc_curves(curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]], path: Path) -> Path:
    """curves: name -> (labels, probabilities, auroc)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, (y, p, auc) in curves.items():
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})", linewidth=2.2 if name == "overall" else 1.2)
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def reliability_diagram(predicted, observed, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=0.8, label="perfect calibration")
    ax.plot(predicted, observed, marker="o", label="model")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive share")
    ax.legend(fontsize=8)
    return _save(fig, path)
