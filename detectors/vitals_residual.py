"""Vitals residual: the patient against their own baseline, learnt online — a personal circadian profile per
vital (one level per hour of the day: pulse, pressure and breathing dip asleep, temperature peaks in the
afternoon) and a robust spread; the score is the largest robust z of the smoothed residuals.

A once-daily drug given at the same hour (metoprolol's trough and peak on pulse and pressure) repeats each day
at the same hours, so the hourly profile would learn its effect as the patient's own, but a change of dose would
show until it had relearnt it (days): the patient monitor hands in the readings with metoprolol's predicted
effect taken out (`detectors.patient_monitor`), so a prescribed change is explained by the drug's own model.

Per vital and reading: residual r = x - profile[hour] (the overall level until that hour has been seen
`MIN_HOUR_READINGS` times); smoothed by an EWMA of `halflife_ticks`; z = smoothed r / spread, the spread being
1.25 x the running mean absolute residual (the SD of a normal residual), floored at `SD_FLOOR`. Learning is
robust: each update moves the level, the profile and the spread by a residual clipped at `clip_sd` spreads,
and while the smoothed residual is beyond `gate_sd` spreads learning slows `slowdown`-fold, so an excursion of
hours barely teaches the baseline that it is normal (a lasting change is learnt, slowly). Nothing is scored during the
first `warmup_ticks` readings of a vital (the baseline is not known yet). Event time sets the hour of the day
(`ts` in microseconds since the epoch, UTC).

>>> import numpy as np
>>> from core.events import VITAL_SIGNALS
>>> from detectors.base import make_detector
>>> rng = np.random.default_rng(0)
>>> n = 4 * 288  # four days of 5-minute readings
>>> ts = np.arange(n) * 300_000_000
>>> X = np.array([72.0, 128.0, 76.0, 97.0, 16.0, 36.8]) + rng.normal(0.0, 1.0, (n, 6))
>>> X[3 * 288 + 100:, 0] -= 30.0  # bradycardia on day 4
>>> det = make_detector("vitals_residual")
>>> state, scores = det.score_learn(det.init_state(VITAL_SIGNALS), ts, X)
>>> bool(scores[300:3 * 288 + 100].max() < 4.0 < 10.0 < scores[3 * 288 + 130])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from detectors.base import register

HOURS = 24
MIN_HOUR_READINGS = 6  # readings at an hour of the day before its own level replaces the overall one
# the least spread a vital's residual is given: the monitor's resolution and noise (docs/MODEL-PATIENT.md)
SD_FLOOR: dict[str, float] = {"hr_bpm": 2.0, "sbp_mmhg": 3.0, "dbp_mmhg": 2.5, "spo2_pct": 0.8, "rr_min": 1.0,
                              "temp_c": 0.1}
US_PER_H = 3_600_000_000


@dataclass
class ResidualState:
    floor: np.ndarray  # (m,)
    level: np.ndarray  # (m,) overall level
    profile: np.ndarray  # (HOURS, m) level per hour of the day
    seen: np.ndarray  # (HOURS, m) readings learnt per hour
    spread: np.ndarray  # (m,) running mean absolute residual
    smooth: np.ndarray  # (m,) smoothed residual
    count: np.ndarray  # (m,) readings learnt


@njit(cache=True, nogil=True)
def _residuals(X: np.ndarray, hour: np.ndarray, floor: np.ndarray, level: np.ndarray, profile: np.ndarray,
               seen: np.ndarray, spread: np.ndarray, smooth: np.ndarray, count: np.ndarray, a_level: float,
               a_hour: float, a_spread: float, a_smooth: float, clip: float, gate: float, slowdown: float,
               warmup: int,
               min_seen: int, z: np.ndarray, score: np.ndarray) -> None:
    n, m = X.shape
    for i in range(n):
        h = hour[i]
        top = 0.0
        for j in range(m):
            x = X[i, j]
            z[i, j] = 0.0
            if np.isnan(x):
                continue  # a missing reading teaches nothing and scores nothing
            if count[j] == 0:
                level[j] = x
                spread[j] = 0.0
            if seen[h, j] == 0:
                profile[h, j] = level[j]
            base = profile[h, j] if seen[h, j] >= min_seen else level[j]
            r = x - base
            sd = max(1.25 * spread[j], floor[j])
            if count[j] >= warmup:
                smooth[j] += a_smooth * (r - smooth[j])
                z[i, j] = smooth[j] / sd
                top = max(top, abs(z[i, j]))
            # learn robustly (clipped residuals); plain running means until the memory is filled; while the
            # smoothed residual is out beyond `gate` spreads the patient is not themselves: learn very slowly
            lim = clip * sd
            slow = slowdown if count[j] >= warmup and abs(smooth[j]) > gate * sd else 1.0
            a = max(a_level, 1.0 / (count[j] + 1.0)) * slow
            level[j] += a * min(max(x - level[j], -lim), lim)
            ah = max(a_hour, 1.0 / (seen[h, j] + 1.0)) * slow
            profile[h, j] += ah * min(max(x - profile[h, j], -lim), lim)
            aspr = max(a_spread, 1.0 / (count[j] + 1.0)) * slow
            spread[j] += aspr * (min(abs(r), lim) - spread[j])
            seen[h, j] += 1
            count[j] += 1
        score[i] = top


@register("vitals_residual")
class VitalsResidual:
    name = "vitals_residual"
    plant = "patient"  # reads vitals by name (the conformance suite gives it vitals)

    def __init__(self, memory_days: float = 3.0, halflife_ticks: float = 12.0, warmup_ticks: int = 288,
                 clip_sd: float = 2.5, gate_sd: float = 3.5, slowdown: float = 0.05, ticks_per_day: int = 288) -> None:
        per_hour = ticks_per_day / HOURS
        self.a_level = 1.0 / (memory_days * ticks_per_day)
        self.a_hour = 1.0 / (memory_days * per_hour)
        self.a_spread = 1.0 / (memory_days * ticks_per_day)
        self.a_smooth = 1.0 - 0.5 ** (1.0 / halflife_ticks)
        self.clip = clip_sd
        self.gate = gate_sd
        self.slowdown = slowdown
        self.warmup = warmup_ticks

    def init_state(self, signal_names: Sequence[str]) -> ResidualState:
        m = len(signal_names)
        floor = np.array([SD_FLOOR.get(name, 1e-3) for name in signal_names])
        return ResidualState(floor, np.zeros(m), np.zeros((HOURS, m)), np.zeros((HOURS, m), dtype=np.int64),
                             np.zeros(m), np.zeros(m), np.zeros(m, dtype=np.int64))

    def score_learn_detail(self, state: ResidualState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[ResidualState, np.ndarray, np.ndarray]:
        """Also returns each vital's z (the contributions)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        hour = ((np.asarray(ts, dtype=np.int64) // US_PER_H) % HOURS).astype(np.int64)
        z, scores = np.empty_like(X), np.empty(len(X))
        _residuals(X, hour, state.floor, state.level, state.profile, state.seen, state.spread, state.smooth,
                   state.count, self.a_level, self.a_hour, self.a_spread, self.a_smooth, self.clip, self.gate,
                   self.slowdown, self.warmup, MIN_HOUR_READINGS, z, scores)
        return state, scores, z

    def score_learn(self, state: ResidualState, ts: np.ndarray, X: np.ndarray) -> tuple[ResidualState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
