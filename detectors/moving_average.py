"""Moving-average residual: how far a reading is from the mean of the last `window_ticks` readings, in units of
the recent spread of those residuals (numba).

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("moving_average", window_ticks=30)
>>> X = np.random.default_rng(1).normal(size=(300, 2))
>>> X[200:, 0] += 8.0
>>> state, scores = det.score_learn(det.init_state(["a", "b"]), np.arange(300), X)
>>> bool(scores[200:205].min() > 3 * np.median(scores[100:200]))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from detectors.base import register


@dataclass
class MovingAverageState:
    ring: np.ndarray  # [window, m] last readings (NaN = empty)
    pos: int
    resid_var: np.ndarray  # EWMA of squared residuals
    count: np.ndarray


@njit(cache=True, nogil=True)
def _ma_scores(X: np.ndarray, ring: np.ndarray, pos: int, resid_var: np.ndarray, count: np.ndarray,
               alpha: float, warmup: int, z: np.ndarray) -> int:
    n, m = X.shape
    w = ring.shape[0]
    for i in range(n):
        for j in range(m):
            total = 0.0
            k = 0
            for r in range(w):
                v = ring[r, j]
                if not np.isnan(v):
                    total += v
                    k += 1
            x = X[i, j]
            if np.isnan(x) or k == 0:
                z[i, j] = 0.0
            else:
                resid = x - total / k
                sd = max(np.sqrt(resid_var[j]), 1e-3 + 1e-3 * abs(total / k))
                z[i, j] = resid / sd if count[j] >= warmup else 0.0
                clipped = min(abs(resid), 3.0 * sd) if count[j] >= warmup else abs(resid)
                a = max(alpha, 1.0 / (count[j] + 1.0))  # running mean of squares until the memory is filled
                resid_var[j] = (1.0 - a) * resid_var[j] + a * clipped * clipped
                count[j] += 1
            ring[pos, j] = x
        pos = (pos + 1) % w
    return pos


@register("moving_average")
class MovingAverage:
    """Residual from a rolling mean; the score is the largest |residual| / residual sd over the signals."""

    name = "moving_average"

    def __init__(self, window_ticks: int = 30, halflife_ticks: float = 240.0, warmup_ticks: int = 60) -> None:
        self.window = window_ticks
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife_ticks)
        self.warmup = warmup_ticks

    def init_state(self, signal_names: Sequence[str]) -> MovingAverageState:
        m = len(signal_names)
        return MovingAverageState(np.full((self.window, m), np.nan), 0, np.zeros(m), np.zeros(m, dtype=np.int64))

    def score_learn_detail(self, state: MovingAverageState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[MovingAverageState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        z = np.zeros_like(X)
        state.pos = _ma_scores(X, state.ring, state.pos, state.resid_var, state.count, self.alpha, self.warmup, z)
        return state, (np.abs(z).max(axis=1) if X.shape[1] else np.zeros(len(X))), z

    def score_learn(self, state: MovingAverageState, ts: np.ndarray, X: np.ndarray,
                    ) -> tuple[MovingAverageState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
