"""Twin residual: slow, persistent departures of each signal from what the twin's normal runs show at the same
culture age — the detector for drifts that the fast detectors cannot separate from normal variability.

For each signal the residual is the golden-batch robust z (`detectors.golden`: median and spread of normal twin
runs per 10-minute age bin), clipped at `clip` so one spike counts little, integrated by an EWMA with a long
half-life (12 h by default). Each signal's integrated residual is divided by its own limit — the largest value
it reaches on the normal runs the reference was built from (`drift_limit` in `golden_batch.npz`) — so 1.0
means "as far as any normal run ever went, and for as long"; the score is the largest of these ratios. A pH
probe drifting 0.05 per day reaches ~3x its limit within a day or two while the process, and so every other
signal, stays normal (which is how the troubleshooting agent tells a drifting probe from a process fault).
The run's start is the first tick the detector sees, so it must see a run from its beginning.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("twin_residual")
>>> ref = det.reference
>>> n = 3 * 144  # three days at one tick per 10 minutes
>>> X = ref.median[:n].copy()
>>> X[144:, 1] += np.linspace(0, 0.15, n - 144)  # the pH reading drifts 0.075 per day from day 1
>>> ts = np.arange(n) * 600_000_000
>>> state, scores = det.score_learn(det.init_state(["s"] * 12), ts, X)
>>> bool(scores[:144].max() < 0.5 < 1.0 < scores[-1])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from detectors.base import register
from detectors.golden import GoldenReference, load_reference

HALFLIFE_MIN = 12 * 60.0
CLIP = 10.0


@dataclass
class TwinResidualState:
    start_us: int | None
    last_us: int | None
    integrated: np.ndarray  # EWMA of the clipped golden z, per signal


@njit(cache=True, nogil=True)
def _integrate(X: np.ndarray, minutes: np.ndarray, bin_min: float, median: np.ndarray, scale: np.ndarray,
               limit: np.ndarray, halflife_min: float, clip: float, last_min: float, acc: np.ndarray,
               out: np.ndarray, contrib: np.ndarray) -> None:
    n, m = X.shape
    last_bin = median.shape[0] - 1
    for i in range(n):
        dt = minutes[i] - last_min if last_min >= 0 else 1.0
        last_min = minutes[i]
        a = 1.0 - 0.5 ** (max(dt, 0.0) / halflife_min)  # by event time: a faster tick rate changes nothing
        b = min(max(int(minutes[i] // bin_min), 0), last_bin)
        best = 0.0
        for j in range(m):
            x = X[i, j]
            z = 0.0 if np.isnan(x) else min(max((x - median[b, j]) / scale[b, j], -clip), clip)
            acc[j] += a * (z - acc[j])
            r = abs(acc[j]) / limit[j]
            contrib[i, j] = r
            if r > best:
                best = r
        out[i] = best


@register("twin_residual")
class TwinResidual:
    name = "twin_residual"

    def __init__(self, halflife_min: float = HALFLIFE_MIN, reference: GoldenReference | None = None) -> None:
        self.halflife_min = halflife_min
        self.reference = reference or load_reference()
        if self.reference.drift_limit is None:
            raise ValueError("the golden reference has no drift limits: rebuild it with `python -m detectors.golden`")

    def init_state(self, signal_names: Sequence[str]) -> TwinResidualState:
        return TwinResidualState(None, None, np.zeros(len(signal_names)))

    def score_learn_detail(self, state: TwinResidualState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[TwinResidualState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        ts = np.asarray(ts, dtype=np.int64)
        if state.start_us is None and len(ts):
            state.start_us = int(ts[0])
        minutes = (ts - (state.start_us or 0)) / 6e7
        last = -1.0 if state.last_us is None else (state.last_us - (state.start_us or 0)) / 6e7
        out, contrib = np.zeros(len(X)), np.zeros_like(X)
        ref = self.reference
        _integrate(X, minutes, ref.bin_min, ref.median, ref.scale, ref.drift_limit, self.halflife_min, CLIP, last,
                   state.integrated, out, contrib)
        if len(ts):
            state.last_us = int(ts[-1])
        return state, out, contrib

    def score_learn(self, state: TwinResidualState, ts: np.ndarray,
                    X: np.ndarray) -> tuple[TwinResidualState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
