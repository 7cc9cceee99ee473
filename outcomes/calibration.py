"""Calibration of the outcome model's probabilities: temperature scaling (Guo et al. 2017) fitted on held-out
patients, and the expected calibration error that says how well it worked.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> logits = rng.normal(0.0, 3.0, 4000)
>>> y = (rng.random(4000) < 1 / (1 + np.exp(-logits / 3.0))).astype(float)  # the truth is 3x less sure
>>> t = fit_temperature(logits, y)
>>> 2.5 < t < 3.5, expected_calibration_error(sigmoid(logits / t), y) < 0.03
(True, True)
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 10


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, float)))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the log loss of sigmoid(logits / T) on labelled samples (NaN labels
    skipped). `logits` [n], or [passes, n] for MC-dropout passes: then the loss of their mean probability."""
    keep = ~np.isnan(y)
    z, y = np.atleast_2d(np.asarray(logits, float))[:, keep], np.asarray(y, float)[keep]
    if not len(y) or y.min() == y.max():
        return 1.0

    def log_loss(log_t: float) -> float:
        p = np.clip(sigmoid(z / np.exp(log_t)).mean(axis=0), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))

    return float(np.exp(minimize_scalar(log_loss, bounds=(-3.0, 3.0), method="bounded").x))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: over `bins` equal-width probability bins, the sample-weighted |mean predicted - observed rate|."""
    keep = ~np.isnan(y)
    p, y = np.asarray(p, float)[keep], np.asarray(y, float)[keep]
    if not len(y):
        return float("nan")
    which = np.minimum((p * bins).astype(int), bins - 1)
    gap = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            gap += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(gap / len(y))
