"""A false-alarm budget: the share of normal rows a user accepts as alarms (`biopilot detect --far 0.01`).

A score alarms when at least k of the last n rows are above its threshold (the persistence rule). For each
rule, the threshold is the lowest one whose alarm rate on normal calibration rows is within the budget (the
rate falls as the threshold rises, so a bisection over the scores finds it). The rule is the user's, or the
one with the lowest threshold among those that also keep the budget on normal rows held back from the setting
(a longer rule lets a lower threshold through, so a small persistent shift is seen, for a few rows' delay);
if none does, the one that comes closest. Too few normal rows cannot support a small budget: a threshold set
with fewer than MIN_ALARM_ROWS alarm rows' worth of calibration rows (or checked on fewer than half that) is
reported as such.

>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=20_000)
>>> fit = calibrate(normal[:15_000], normal[15_000:], 0.01)
>>> fit.rule, round(fit.calibration_rate, 3), bool(fit.held_back_rate < 0.015), fit.short_of_rows
(Persistence(k=3, n=3), 0.01, True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_ALARM_ROWS = 10


@dataclass(frozen=True)
class Persistence:
    k: int
    n: int

    @classmethod
    def parse(cls, text: str) -> Persistence:
        """'k/n' (k of n consecutive rows) or 'k' (k in a row)."""
        k_text, _, n_text = text.partition("/")
        k, n = int(k_text), int(n_text or k_text)
        if not 1 <= k <= n:
            raise ValueError(f"persistence {text!r}: need 1 <= k <= n")
        return cls(k, n)

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    def apply(self, above: np.ndarray) -> np.ndarray:
        """True where at least k of the last n rows (fewer at the start) are above threshold."""
        counts = np.cumsum(np.asarray(above, dtype=np.int64))
        counts[self.n:] = counts[self.n:] - counts[:-self.n]
        return counts >= self.k


RULES = (Persistence(1, 1), Persistence(2, 2), Persistence(2, 3), Persistence(3, 3), Persistence(3, 5),
         Persistence(4, 6), Persistence(5, 8))


def alarm_rate(scores: np.ndarray, threshold: float, rule: Persistence) -> float:
    return float(rule.apply(scores > threshold).mean()) if len(scores) else 0.0


def threshold_for(scores: np.ndarray, far: float, rule: Persistence) -> float:
    """The lowest of the scores' own levels that, as a threshold, alarms on at most `far` of them."""
    levels = np.unique(scores)
    lo, hi = 0, len(levels) - 1  # the top level alarms on nothing: always within the budget
    while lo < hi:
        mid = (lo + hi) // 2
        if alarm_rate(scores, levels[mid], rule) <= far:
            hi = mid
        else:
            lo = mid + 1
    return float(levels[lo])


@dataclass
class Calibrated:
    threshold: float
    rule: Persistence
    calibration_rate: float  # alarm rate on the rows the threshold was set on
    held_back_rate: float  # on the normal rows held back from the setting
    short_of_rows: bool  # too few normal rows for this budget (module doc)

    def alarms(self, scores: np.ndarray) -> np.ndarray:
        return self.rule.apply(scores > self.threshold)


def rows_needed(far: float) -> int:
    """Calibration rows that hold MIN_ALARM_ROWS alarm rows at this budget."""
    return math.ceil(MIN_ALARM_ROWS / far)


def calibrate(calibration: np.ndarray, held_back: np.ndarray, far: float,
              rule: Persistence | None = None) -> Calibrated:
    """Threshold and persistence rule for a false-alarm budget `far` (module doc)."""
    if not 0 < far < 1:
        raise ValueError(f"false-alarm budget {far} must be between 0 and 1")
    fits = []
    for r in (rule,) if rule else RULES:
        threshold = threshold_for(calibration, far, r)
        fits.append(Calibrated(threshold, r, alarm_rate(calibration, threshold, r),
                               alarm_rate(held_back, threshold, r), False))
    within = [f for f in fits if f.held_back_rate <= far]
    best = min(within, key=lambda f: f.threshold) if within else min(fits, key=lambda f: f.held_back_rate)
    best.short_of_rows = len(calibration) < rows_needed(far) or len(held_back) < rows_needed(far) / 2
    return best
