"""Streaming z-score: exponentially weighted mean and variance per signal (numba).

The score of a tick is the largest |x - mean| / sd over its signals, using the mean and variance learnt from
the ticks before it; a missing reading contributes nothing and teaches nothing.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("zscore", halflife_ticks=30, warmup_ticks=10)
>>> state = det.init_state(["a", "b"])
>>> X = np.random.default_rng(0).normal(size=(200, 2))
>>> X[150, 1] = 25.0
>>> state, scores = det.score_learn(state, np.arange(200), X)
>>> int(np.argmax(scores))
150
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from detectors.base import register


@dataclass
class ZScoreState:
    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray


@njit(cache=True, nogil=True)
def _ewma_z(X: np.ndarray, mean: np.ndarray, var: np.ndarray, count: np.ndarray, alpha: float, warmup: int,
            min_rel_sd: float, clip: float, z: np.ndarray, score: np.ndarray) -> None:
    n, m = X.shape
    for i in range(n):
        top = 0.0
        for j in range(m):
            x = X[i, j]
            if np.isnan(x):
                z[i, j] = 0.0
                continue
            if count[j] == 0:
                mean[j] = x
                var[j] = 0.0
            sd = max(np.sqrt(var[j]), min_rel_sd * abs(mean[j]), 1e-3)
            z[i, j] = (x - mean[j]) / sd if count[j] >= warmup else 0.0
            top = max(top, abs(z[i, j]))
            # learn robustly: an outlier moves the estimates by at most `clip` sd, so a fault keeps scoring;
            # a plain running mean/variance until the EWMA's memory is filled (no cold-start bias)
            a = max(alpha, 1.0 / (count[j] + 1.0))
            d = x - mean[j] if count[j] < warmup else min(max(x - mean[j], -clip * sd), clip * sd)
            mean[j] += a * d
            var[j] = (1.0 - a) * (var[j] + a * d * d)
            count[j] += 1
        score[i] = top


@register("zscore")
class ZScore:
    """EWMA z-score. `halflife_ticks` sets the memory; `min_rel_sd` floors the sd (relative to |mean|, plus an
    absolute 1e-3) so a perfectly flat signal does not turn its first wiggle into an infinite score; updates
    are clipped at `clip_sd` so an anomaly does not teach the detector that it is normal."""

    name = "zscore"

    def __init__(self, halflife_ticks: float = 120.0, warmup_ticks: int = 60, min_rel_sd: float = 0.002,
                 clip_sd: float = 3.0) -> None:
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife_ticks)
        self.clip = clip_sd
        self.warmup = warmup_ticks
        self.min_rel_sd = min_rel_sd

    def init_state(self, signal_names: Sequence[str]) -> ZScoreState:
        m = len(signal_names)
        return ZScoreState(np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64))

    def score_learn_detail(self, state: ZScoreState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[ZScoreState, np.ndarray, np.ndarray]:
        """Also returns the per-signal z (the contributions)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        z, scores = np.empty_like(X), np.empty(len(X))
        _ewma_z(X, state.mean, state.var, state.count, self.alpha, self.warmup, self.min_rel_sd, self.clip, z,
                scores)
        return state, scores, z

    def score_learn(self, state: ZScoreState, ts: np.ndarray, X: np.ndarray) -> tuple[ZScoreState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
