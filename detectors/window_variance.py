"""Moving-window variance per signal: what T² and Q miss when a signal's spread changes but its level does not.
A frozen or stuck reading (the variance collapses) and a random-variation fault, a sticking valve's limit
cycle or an oscillation (it inflates) move a signal's variance long before, or without, moving its mean. Over
the last `window` rows of each standardised signal two log variances are taken: of its first differences (the
fast variation: what freezes first) and of its level about the window's mean (the slow variation); each is
compared, two-sided, with its mean and sd over the reference's windows (Montgomery's S² chart on a log scale,
one per signal and variation). The score is the largest |z| over the signals and both variances, over its
99th percentile on the reference; a signal's contribution is its own largest |z|. A missing reading carries
the last one over (a gap is not variation; `sensor_health` is the detector for gaps).

>>> from detectors.base import make_detector
>>> rng = np.random.default_rng(2)
>>> X = rng.normal(size=(1200, 3))
>>> X[1000:, 1] = X[999, 1]  # b's transmitter freezes
>>> det = make_detector("variance", reference_ticks=800)
>>> state, scores, contrib = det.score_learn_detail(det.init_state(["a", "b", "c"]), np.arange(1200), X)
>>> bool(scores[1020:].min() > scores[820:1000].max()), int(contrib[1020:].sum(axis=0).argmax())
(True, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.base import register
from detectors.lagged import LaggedReferenceDetector, LaggedState, lag_matrix

FLOOR = 1e-6  # added to a variance (standardised units) before its log: a frozen reading scores finite


@dataclass
class VarianceModel:
    lags: int  # the window holds the current row and `lags` before it
    centre: np.ndarray  # [2m] the log variances' mean on the reference (fast then slow, per signal)
    spread: np.ndarray  # [2m] their sd
    limit: float


@dataclass
class VarianceState(LaggedState):
    last: np.ndarray | None = None  # the last reading of each signal, carried over a missing one


def log_variances(W: np.ndarray, m: int) -> np.ndarray:
    """Lagged vectors [n, m (lags + 1)] -> [n, 2m]: log variance of each signal's differences, then of its level."""
    rows = W.reshape(len(W), -1, m)
    fast = np.mean(np.diff(rows, axis=1) ** 2, axis=1)
    return np.log(np.hstack([fast, rows.var(axis=1)]) + FLOOR)


def per_signal_z(model: VarianceModel, W: np.ndarray) -> np.ndarray:
    """[n, m]: each signal's larger |z| of its two log variances against the reference's."""
    m = W.shape[1] // (model.lags + 1)
    z = np.abs(log_variances(W, m) - model.centre) / model.spread
    return np.maximum(z[:, :m], z[:, m:])


def carried_over(X: np.ndarray, last: np.ndarray | None) -> np.ndarray:
    """X with each missing reading replaced by the signal's last one (the one before X: `last`)."""
    out = np.vstack([last[None, :] if last is not None else np.full((1, X.shape[1]), np.nan), X])
    for i in range(1, len(out)):
        gap = np.isnan(out[i])
        out[i, gap] = out[i - 1, gap]
    return out[1:]


@register("variance")
class WindowVariance(LaggedReferenceDetector):
    name = "variance"

    def __init__(self, reference_ticks: int = 1440, window: int = 20, quantile: float = 0.99) -> None:
        super().__init__(reference_ticks, window - 1)
        self.quantile = quantile

    def init_state(self, signal_names: object) -> VarianceState:
        return VarianceState()

    def fit(self, Z: np.ndarray) -> VarianceModel:
        W = lag_matrix(Z, self.max_lag)
        F = log_variances(W, Z.shape[1])
        model = VarianceModel(self.max_lag, F.mean(axis=0), np.maximum(F.std(axis=0), 1e-3), 1.0)
        model.limit = float(np.quantile(per_signal_z(model, W).max(axis=1), self.quantile)) + 1e-9
        return model

    def score_lagged(self, model: VarianceModel, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = per_signal_z(model, W) / model.limit
        return z.max(axis=1), z

    def score_learn_detail(self, state: VarianceState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[VarianceState, np.ndarray, np.ndarray]:
        X = carried_over(np.asarray(X, dtype=np.float64), state.last)
        if len(X):
            state.last = X[-1].copy()
        _, scores, contrib = super().score_learn_detail(state, ts, X)
        return state, scores, contrib
