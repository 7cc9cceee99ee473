"""Canonical variate analysis (Russell, Chiang & Braatz 2000): the directions of the past [z_t, ..., z_t-l] that
best predict the future [z_t+1, ..., z_t+l+1] are the plant's states. Three statistics, each over its 99th
percentile on the reference: Hotelling's T² on the r states, T² on the remaining canonical variates (what the
past holds besides the states), and Q on the one-step prediction residual z_t - C x_t-1 (what the states did
not foresee). The score is the largest ratio; its contributions the leading statistic's, summed over each
signal's lags. l comes from the reference (`detectors.lagged.lag_order`, at least 1); r from Bartlett's
sequential test on the canonical correlations (1 %).

>>> from detectors.base import make_detector
>>> rng = np.random.default_rng(4)
>>> e = rng.normal(size=(1500, 3))
>>> X = np.zeros_like(e)
>>> for t in range(1, 1500):  # a slow state drives a and b; c is noise
...     X[t, 0] = 0.95 * X[t - 1, 0] + 0.3 * e[t, 0]
...     X[t, 1], X[t, 2] = X[t - 1, 0] + 0.1 * e[t, 1], e[t, 2]
>>> X[1300:1320, 1] += 1.0  # b departs from what the state foresees
>>> det = make_detector("cva", reference_ticks=1000)
>>> state, scores, contrib = det.score_learn_detail(det.init_state(["a", "b", "c"]), np.arange(1500), X)
>>> bool(scores[1300:1320].min() > scores[1050:1300].max()), int(contrib[1300:1320].sum(axis=0).argmax())
(True, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from detectors.base import register
from detectors.lagged import (
    LaggedReferenceDetector,
    lag_matrix,
    lag_order,
    per_signal,
    quadratic_contributions,
)


@dataclass
class CvaModel:
    lags: int  # the past holds z_t .. z_t-lags; a scored vector one row more (the previous past)
    J: np.ndarray  # [p, p] past -> canonical variates (rows in order of canonical correlation)
    states: int  # r
    C: np.ndarray  # [r, m] previous state -> current row
    limits: np.ndarray  # [3] the 99th percentiles of T² states, T² residual variates, Q


def inverse_sqrt(S: np.ndarray) -> np.ndarray:
    """S^-1/2 of a covariance, ridged by 1e-3 of its mean variance (lagged signals are nearly collinear)."""
    w, V = np.linalg.eigh(S + 1e-3 * np.trace(S) / len(S) * np.eye(len(S)))
    return (V / np.sqrt(np.maximum(w, 1e-12))) @ V.T


def state_order(rho: np.ndarray, rows: int, p: int, q: int, alpha: float = 0.01) -> int:
    """The number of canonical correlations Bartlett's chi² test finds non-zero (at least 1, at most p - 1)."""
    factor = rows - 1 - (p + q + 1) / 2
    if factor <= 0:  # too few rows for the test: the correlations above 0.5
        return int(np.clip((rho > 0.5).sum(), 1, p - 1))
    logs = np.log1p(-np.minimum(rho, 1 - 1e-9) ** 2)
    for k in range(len(rho)):
        if -factor * logs[k:].sum() < stats.chi2.ppf(1 - alpha, (p - k) * (q - k)):
            return int(np.clip(k, 1, p - 1))
    return p - 1


@register("cva")
class Cva(LaggedReferenceDetector):
    name = "cva"

    def __init__(self, reference_ticks: int = 1440, max_lag: int = 6, quantile: float = 0.99) -> None:
        super().__init__(reference_ticks, max_lag)
        self.quantile = quantile

    def window(self, model: CvaModel) -> int:
        return model.lags + 1

    def fit(self, Z: np.ndarray) -> CvaModel:
        lags = max(lag_order(Z, self.max_lag), 1)
        n, m = Z.shape
        h = lags + 1
        rows = np.arange(lags, n - h)
        past = np.hstack([Z[rows - j] for j in range(lags + 1)])
        future = np.hstack([Z[rows + j] for j in range(1, h + 1)])
        N = len(rows)
        Spp, Sff, Sfp = past.T @ past / (N - 1), future.T @ future / (N - 1), future.T @ past / (N - 1)
        Spp_is = inverse_sqrt(Spp)
        _, rho, vt = np.linalg.svd(inverse_sqrt(Sff) @ Sfp @ Spp_is)
        J = vt @ Spp_is
        r = state_order(rho, N, past.shape[1], future.shape[1])
        states = past @ J[:r].T
        C, *_ = np.linalg.lstsq(states[:-1], past[1:, :m], rcond=None)
        model = CvaModel(lags, J, r, C, np.ones(3))
        W = lag_matrix(Z, lags + 1)
        model.limits = np.quantile(self.statistics(model, W)[0], self.quantile, axis=0) + 1e-9
        return model

    @staticmethod
    def statistics(model: CvaModel, W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[n, 3] T² states, T² residual variates, Q; the past vectors; the prediction residuals."""
        m = model.C.shape[1]
        past = W[:, :m * (model.lags + 1)]
        variates = past @ model.J.T
        resid = W[:, :m] - (W[:, m:] @ model.J[:model.states].T) @ model.C
        stat = np.column_stack([(variates[:, :model.states] ** 2).sum(axis=1),
                                (variates[:, model.states:] ** 2).sum(axis=1), (resid**2).sum(axis=1)])
        return stat, past, resid

    def score_lagged(self, model: CvaModel, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        stat, past, resid = self.statistics(model, W)
        ratios = stat / model.limits
        m = model.C.shape[1]
        Js, Jr = model.J[:model.states], model.J[model.states:]
        parts = np.stack([per_signal(quadratic_contributions(past, Js.T @ Js), m) / model.limits[0],
                          per_signal(quadratic_contributions(past, Jr.T @ Jr), m) / model.limits[1],
                          resid**2 / model.limits[2]])
        lead = ratios.argmax(axis=1)
        return ratios.max(axis=1), parts[lead, np.arange(len(W))]
