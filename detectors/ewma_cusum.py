"""EWMA-centred CUSUM chart: a two-sided cumulative sum of standardised deviations per signal (numba). Slow,
small shifts that a z-score misses add up; `drift_sd` is the allowance k, the score is the largest sum.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("ewma")
>>> X = np.random.default_rng(2).normal(size=(3000, 1))
>>> X[2000:, 0] += 1.0  # a one-sigma shift: invisible tick by tick
>>> state, scores = det.score_learn(det.init_state(["a"]), np.arange(3000), X)
>>> bool(scores[2300] > 5 * scores[1900])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from detectors.base import register


@dataclass
class EwmaCusumState:
    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray
    s_hi: np.ndarray
    s_lo: np.ndarray


@njit(cache=True, nogil=True)
def _cusum(X: np.ndarray, mean: np.ndarray, var: np.ndarray, count: np.ndarray, s_hi: np.ndarray,
           s_lo: np.ndarray, alpha: float, k: float, warmup: int, out: np.ndarray) -> None:
    n, m = X.shape
    for i in range(n):
        for j in range(m):
            x = X[i, j]
            if np.isnan(x):
                out[i, j] = max(s_hi[j], s_lo[j])
                continue
            if count[j] == 0:
                mean[j] = x
            sd = max(np.sqrt(var[j]), 1e-3 + 2e-3 * abs(mean[j]))
            z = (x - mean[j]) / sd
            if count[j] >= warmup:
                s_hi[j] = max(0.0, s_hi[j] + z - k)
                s_lo[j] = max(0.0, s_lo[j] - z - k)
            out[i, j] = max(s_hi[j], s_lo[j])
            # the centre follows slowly and only while in control, so a shift keeps accumulating
            if out[i, j] < 5.0:
                a = max(alpha, 1.0 / (count[j] + 1.0))  # running mean/variance until the memory is filled
                d = x - mean[j] if count[j] < warmup else min(max(x - mean[j], -3.0 * sd), 3.0 * sd)
                mean[j] += a * d
                var[j] = (1.0 - a) * (var[j] + a * d * d)
            count[j] += 1


# registered as "ewma", the name that calibration.json, the fusion's members and saved configs use
@register("ewma")
class EwmaCusum:
    name = "ewma"

    def __init__(self, halflife_ticks: float = 720.0, drift_sd: float = 0.5, warmup_ticks: int = 120) -> None:
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife_ticks)
        self.k = drift_sd
        self.warmup = warmup_ticks

    def init_state(self, signal_names: Sequence[str]) -> EwmaCusumState:
        m = len(signal_names)
        return EwmaCusumState(np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64), np.zeros(m), np.zeros(m))

    def score_learn_detail(self, state: EwmaCusumState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[EwmaCusumState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.zeros_like(X)
        _cusum(X, state.mean, state.var, state.count, state.s_hi, state.s_lo, self.alpha, self.k, self.warmup, out)
        return state, (out.max(axis=1) if X.shape[1] else np.zeros(len(X))), out

    def score_learn(self, state: EwmaCusumState, ts: np.ndarray, X: np.ndarray) -> tuple[EwmaCusumState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
