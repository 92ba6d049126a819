"""Calibration of a one-logit model: p = sigmoid(logit / T + b).

Temperature scaling (Guo et al., 2017) fits T alone; with class-weighted training the logits are also
shifted (a weighted positive class pushes every probability up), which a temperature cannot undo, so
the bias b is fitted with it (Platt scaling with a positive slope). Both are fitted on validation
images by minimising the log loss; they change no ranking (AUROC, the heatmaps and every decision stay
the same when the threshold moves with them), only how far the probabilities can be read as frequencies.
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


def rescale(probabilities: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """Probabilities made at temperature 1, bias 0 -> the same at ``temperature``, ``bias`` (NaN stays)."""
    return sigmoid(logits_from(probabilities) / temperature + bias)


def uncalibrate(probabilities: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """The inverse of ``rescale``: calibrated probabilities -> those the raw logit gives."""
    return sigmoid((logits_from(probabilities) - bias) * temperature)


def fit_platt(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(temperature, bias) minimising the mean log loss of ``labels`` under sigmoid(logit / T + b) of
    ``probabilities`` made at temperature 1, bias 0 (scikit-learn's logistic regression, unpenalised)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels, int)
    z = logits_from(probabilities)
    keep = np.isfinite(z)
    if len(set(y[keep].tolist())) < 2:
        raise ValueError("calibration needs images of both labels")
    fit = LogisticRegression(C=np.inf, solver="lbfgs").fit(z[keep, None], y[keep])  # C=inf: unpenalised
    slope, bias = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if slope <= 1e-3:  # a logit that does not rank the labels: keep the temperature alone
        return fit_temperature(probabilities, labels), 0.0
    return 1.0 / slope, bias


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
