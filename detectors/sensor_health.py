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


# ---- the patient monitor's sensor health: any vital, judged by how often its own readings repeat ---------------
FLAT_DECADES = 9.0  # a run of repeats as unlikely as 1e-9 for this reading's own repeat rate is a stuck sensor
DROPOUT_READINGS = 6  # missing this many readings in a row is a disconnected sensor (30 min at 5-min readings)
REPEAT_MEMORY = 288  # readings the repeat rate is learnt over (a day at 5-min readings)
REPEAT_BOUNDS = (0.02, 0.9)  # a repeat rate is kept within these: never certain, never impossible
LEARN_BELOW_RUN = 4  # the repeat rate learns only outside long runs (a stuck sensor must not teach it)


@dataclass
class SensorHealthState:
    last: np.ndarray  # last reading per signal
    run: np.ndarray  # readings equal to the last one in a row (1: no repeat)
    missing: np.ndarray  # readings missing in a row
    repeat_rate: np.ndarray  # the learnt probability that a reading repeats the one before
    learnt: np.ndarray  # transitions learnt


@njit(cache=True, nogil=True)
def _sensor_health(X: np.ndarray, last: np.ndarray, run: np.ndarray, missing: np.ndarray, rate: np.ndarray,
                   learnt: np.ndarray, alpha: float, lo: float, hi: float, decades: float, dropout: float,
                   learn_below: int, out: np.ndarray, contrib: np.ndarray) -> None:
    for i in range(X.shape[0]):
        best = 0.0
        for j in range(X.shape[1]):
            x = X[i, j]
            if np.isnan(x):
                missing[j] += 1  # a gap neither extends nor breaks a flat line
            else:
                missing[j] = 0
                if not np.isnan(last[j]):
                    same = x == last[j]
                    if run[j] < learn_below:
                        a = max(alpha, 1.0 / (learnt[j] + 2.0))  # Laplace's prior of 1/2 at the start
                        rate[j] += a * ((1.0 if same else 0.0) - rate[j])
                        learnt[j] += 1
                    run[j] = run[j] + 1 if same else 1
                else:
                    run[j] = 1
                last[j] = x
            p = min(max(rate[j], lo), hi)
            flat = (run[j] - 1) * -np.log10(p) / decades
            score = max(flat, missing[j] / dropout)
            contrib[i, j] = score
            best = max(best, score)
        out[i] = best


@register("sensor_health")
class SensorHealth:
    """Stuck or disconnected monitor sensors on any vital, scored so that 1.0 is the alarm: a run of identical
    readings as unlikely as 1e-`FLAT_DECADES` given how often that reading repeats by itself (a pulse in whole
    beats repeats now and then, a temperature in tenths of a degree often; so a stuck pulse shows in under an
    hour, a stuck thermometer in a few), or `DROPOUT_READINGS` missing readings in a row.

    >>> import numpy as np
    >>> from detectors.base import make_detector
    >>> det = make_detector("sensor_health")
    >>> X = np.random.default_rng(3).normal([72.0, 97.0], [6.0, 0.8], size=(400, 2)).round()
    >>> X[300:340, 0] = X[299, 0]  # the pulse reading sticks
    >>> X[350:360, 1] = np.nan  # the oximeter falls off
    >>> state, scores = det.score_learn(det.init_state(["hr_bpm", "spo2_pct"]), np.arange(400), X)
    >>> bool(scores[:300].max() < 0.5), bool(scores[339] > 1.0), bool(scores[359] > 1.0)
    (True, True, True)
    """

    name = "sensor_health"
    plant = "patient"  # the conformance suite gives it vitals

    def init_state(self, signal_names: Sequence[str]) -> SensorHealthState:
        m = len(signal_names)
        return SensorHealthState(np.full(m, np.nan), np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64),
                                 np.full(m, 0.5), np.zeros(m, dtype=np.int64))

    def score_learn_detail(self, state: SensorHealthState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[SensorHealthState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        out, contrib = np.zeros(len(X)), np.zeros_like(X)
        _sensor_health(X, state.last, state.run, state.missing, state.repeat_rate, state.learnt,
                       1.0 / REPEAT_MEMORY, REPEAT_BOUNDS[0], REPEAT_BOUNDS[1], FLAT_DECADES,
                       float(DROPOUT_READINGS), LEARN_BELOW_RUN, out, contrib)
        return state, out, contrib

    def score_learn(self, state: SensorHealthState, ts: np.ndarray, X: np.ndarray,
                    ) -> tuple[SensorHealthState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
