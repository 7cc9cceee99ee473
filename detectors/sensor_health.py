"""Sensor health: a reading that stops moving (stuck transmitter) or stops arriving (dropout).

Score per tick = the longest current run, over the watched signals, of identical readings (`flatline`) or of
missing readings (`dropout`), in ticks. A noisy analogue sensor repeats its exact value only by chance, so a
long run of repeats is a frozen transmitter; one missing reading scores 1, a dropout grows with its length.
Totalisers and flows that sit at a limit legitimately stay flat, so they are not watched.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("flatline")
>>> X = np.random.default_rng(7).normal(40.0, 0.3, size=(300, 12)).round(1)
>>> X[200:260, 0] = X[199, 0]  # DO transmitter frozen for an hour
>>> state, scores = det.score_learn(det.init_state(["s"] * 12), np.arange(300), X)
>>> int(scores[259]), int(scores[100]) < 5
(61, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from detectors.base import DETECTOR_SIGNALS, register

WATCHED = ("do_pct", "ph", "temp_c", "our_mmol_l_h", "cer_mmol_l_h", "capacitance_pf_cm")
WATCHED_IDX = np.array([DETECTOR_SIGNALS.index(s) for s in WATCHED], dtype=np.int64)


@dataclass
class RunLengthState:
    last: np.ndarray
    run: np.ndarray


@njit(cache=True, nogil=True)
def _run_lengths(X: np.ndarray, cols: np.ndarray, last: np.ndarray, run: np.ndarray, missing: bool,
                 out: np.ndarray, contrib: np.ndarray) -> None:
    for i in range(X.shape[0]):
        best = 0.0
        for k in range(cols.shape[0]):
            x = X[i, cols[k]]
            if missing:
                run[k] = run[k] + 1 if np.isnan(x) else 0
            else:
                if np.isnan(x):
                    pass  # a gap neither extends nor breaks a flat line
                elif x == last[k]:
                    run[k] += 1
                else:
                    run[k] = 1
                    last[k] = x
            contrib[i, cols[k]] = run[k]
            best = max(best, float(run[k]))
        out[i] = best


class _RunLength:
    missing = False
    min_threshold = 5.0  # ticks: below this a run of repeats or gaps is not worth an alarm

    def init_state(self, signal_names: Sequence[str]) -> RunLengthState:
        return RunLengthState(np.full(len(WATCHED), np.nan), np.zeros(len(WATCHED), dtype=np.int64))

    def score_learn_detail(self, state: RunLengthState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[RunLengthState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        out = np.zeros(len(X))
        contrib = np.zeros_like(X)
        cols = WATCHED_IDX if X.shape[1] == len(DETECTOR_SIGNALS) else np.arange(min(X.shape[1], len(WATCHED)))
        _run_lengths(X, cols, state.last, state.run, self.missing, out, contrib)
        return state, out, contrib

    def score_learn(self, state: RunLengthState, ts: np.ndarray, X: np.ndarray) -> tuple[RunLengthState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores


@register("flatline")
class Flatline(_RunLength):
    name = "flatline"


@register("dropout")
class Dropout(_RunLength):
    """A sustained dropout is the `sensor_dropout` fault; a single missing reading scores only 1."""

    name = "dropout"
    missing = True
