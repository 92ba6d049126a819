"""Temperature scaling (Guo et al., 2017) for a one-logit model: p = sigmoid(logit / T).

T is fitted on validation images by minimising the log loss; it changes no ranking (AUROC, the
heatmaps and every decision stay the same when the threshold moves with it), only how far the
probabilities can be read as frequencies.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-7


def logits_from(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, float)))


def rescale(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities made at temperature 1 -> the same at ``temperature`` (NaN stays NaN)."""
    return sigmoid(logits_from(probabilities) / temperature)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, bounds=(0.05, 20.0)) -> float:
    """The temperature minimising the mean log loss of ``labels`` under rescaled ``probabilities``
    (made at temperature 1). Needs both labels; searched on log T within ``bounds``."""
    y = np.asarray(labels, float)
    z = logits_from(probabilities)
    keep = np.isfinite(z)
    y, z = y[keep], z[keep]
    if len(set(y.tolist())) < 2:
        raise ValueError("temperature scaling needs images of both labels")

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, s) - y * s))  # BCE with logits, stable

    found = minimize_scalar(loss, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(found.x))
