"""Metrics the field reports, from scikit-learn: AUROC, Cohen's kappa, sensitivity, specificity, ...;
bootstrap confidence intervals by resampling studies; operating points; calibration; localisation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import brier_score_loss, cohen_kappa_score, confusion_matrix, roc_auc_score, roc_curve

from mura_cli.inputs.boxes import grow_box

CI_METRICS = ("auroc", "kappa", "accuracy", "sensitivity", "specificity", "precision", "f1")


def _nan_safe(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """Point metrics at one threshold. AUROC is None when only one class is present."""
    y = np.asarray(y, dtype=int)
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    both = len(np.unique(y)) == 2
    with warnings.catch_warnings():  # kappa is undefined when truth and prediction share one label
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = _nan_safe(cohen_kappa_score(y, pred, labels=[0, 1])) if len(y) else None
    return {
        "n": int(len(y)),
        "n_positive": int(y.sum()),
        "auroc": float(roc_auc_score(y, p)) if both else None,
        "kappa": kappa,
        "accuracy": (tp + tn) / len(y) if len(y) else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def resample_weights(n_rows: int, resamples: int, seed: int, groups=None) -> np.ndarray:
    """(resamples, n_rows) counts: how often each row is drawn when studies are resampled with
    replacement. Rows are studies, or images with ``groups`` naming their study (whole studies drawn)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=resamples).astype(float)
    codes, uniques = pd.factorize(pd.Series(groups))
    counts = rng.multinomial(len(uniques), np.full(len(uniques), 1.0 / len(uniques)), size=resamples)
    return counts[:, codes].astype(float)


def weighted_metrics(y, p, threshold: float, weights: np.ndarray) -> dict[str, np.ndarray]:
    """CI_METRICS for many weightings at once (rows of ``weights``), NaN where undefined.

    The same definitions as scikit-learn's roc_auc_score and cohen_kappa_score with sample_weight
    (checked against them in the tests), vectorised: a bootstrap of 1000 resamples costs milliseconds
    instead of a minute of per-call input validation."""
    y, p = np.asarray(y, dtype=bool), np.asarray(p, dtype=float)
    pred = p >= threshold
    tp, fp = weights @ (y & pred), weights @ (~y & pred)
    fn, tn = weights @ (y & ~pred), weights @ (~y & ~pred)
    total = tp + fp + fn + tn
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = (tp + tn) / total
        expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / total**2
        return {
            "auroc": _weighted_auroc(y, p, weights),
            "kappa": (observed - expected) / (1 - expected),
            "accuracy": observed,
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "precision": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def _weighted_auroc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """P(score of a positive > score of a negative) + half the ties, under each weighting."""
    order = np.argsort(p, kind="mergesort")
    values, starts = np.unique(p[order], return_index=True)
    w = weights[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)
    neg = np.add.reduceat(w * ~y[order], starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def bootstrap_ci(
    y, p, threshold: float, resamples: int = 1000, seed: int = 0, level: float = 0.95, groups=None
) -> dict:
    """Percentile intervals over study resamples; resamples where a metric is undefined (one class
    missing) are left out for that metric."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    if not np.isfinite(p).all():
        raise ValueError("probabilities must be finite")
    if len(y) == 0:
        return {name: None for name in CI_METRICS}
    draws = weighted_metrics(y, p, threshold, resample_weights(len(y), resamples, seed, groups))
    tail = (1 - level) / 2 * 100
    out = {}
    for name in CI_METRICS:
        finite = draws[name][np.isfinite(draws[name])]
        out[name] = (
            [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]
            if finite.size
            else None
        )
    return out


def operating_points(y, p, model_threshold: float, target_sensitivity: float = 0.9) -> dict:
    """Thresholds: the model's, Youden's J (max sensitivity + specificity - 1), and the highest
    threshold that reaches the target sensitivity."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    points = {"model": model_threshold}
    if len(np.unique(y)) == 2:
        fpr, tpr, thresholds = roc_curve(y, p)
        finite = np.isfinite(thresholds)
        j = np.where(finite, tpr - fpr, -np.inf)
        points["youden"] = float(thresholds[int(np.argmax(j))])
        reach = np.flatnonzero((tpr >= target_sensitivity) & finite)
        if reach.size:
            points[f"sensitivity_{target_sensitivity:g}"] = float(thresholds[reach[0]])
    return {name: {"threshold": t, **threshold_metrics(y, p, t)} for name, t in points.items()}


def calibration(y, p, bins: int = 10) -> dict:
    """Brier score, expected calibration error (equal-width bins, weighted by bin size) and the
    reliability curve (sklearn's calibration_curve)."""
    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = sum(
        abs(y[which == b].mean() - p[which == b].mean()) * (which == b).mean()
        for b in range(bins)
        if (which == b).any()
    )
    observed, predicted = (
        calibration_curve(y, p, n_bins=bins, strategy="uniform") if len(np.unique(y)) == 2 else ([], [])
    )
    return {
        "brier": float(brier_score_loss(y, p, labels=[0, 1])),
        "ece": float(ece),
        "bins": bins,
        "curve": {"predicted": [float(v) for v in predicted], "observed": [float(v) for v in observed]},
    }


def pointing_hit(peak_xy, boxes, margin: float = 0.1, slack: float = 0.0) -> bool:
    """Is the heatmap's peak inside any box, each grown by ``margin`` of its size on every side (or by
    ``slack`` pixels where that is more: the tolerant pointing game)?"""
    x, y = peak_xy
    return any(
        x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in (grow_box(b, margin, slack) for b in boxes)
    )


def energy_inside(heatmap: np.ndarray, boxes) -> float:
    """Share of the heatmap's total energy (sum) that lies inside the boxes (pixel coordinates of the
    heatmap's own grid; a pixel counts when its centre is inside)."""
    total = float(heatmap.sum())
    if total <= 0:
        return 0.0
    ys, xs = np.mgrid[0 : heatmap.shape[0], 0 : heatmap.shape[1]]
    inside = np.zeros(heatmap.shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= (xs + 0.5 >= x0) & (xs + 0.5 <= x1) & (ys + 0.5 >= y0) & (ys + 0.5 <= y1)
    return float(heatmap[inside].sum() / total)
