"""A false-alarm budget: the share of normal rows a user accepts as alarms (`biopilot detect --far 0.01`).

A score alarms when at least k of the last n rows are above its threshold (the persistence rule). For each
rule, the threshold is the lowest one whose alarm rate on normal calibration rows is within the budget (the
rate falls as the threshold rises, so a bisection over the scores finds it). The rule is the user's, or the
one with the lowest threshold among those that also keep the budget on normal rows held back from the setting
(a longer rule lets a lower threshold through, so a small persistent shift is seen, for a few rows' delay);
if none does, the one that comes closest. Too few normal rows cannot support a small budget: a threshold set
with fewer than MIN_ALARM_ROWS alarm rows' worth of calibration rows (or checked on fewer than half that) is
reported as such.

What the budget will give on new normal rows is checked on the training rows themselves (`blocked_check`): each
of BLOCKS contiguous blocks of the out-of-fold scores is held back in turn, the thresholds are set on the other
blocks (under the rules already chosen) and the alarm rate is measured on the held block. The rate is the mean
over blocks, with a Student t interval from their spread: consecutive normal rows are strongly alike, so one
held-back stretch says little, and the blocks' spread shows how much the plant moved during the training run.
The check warns when the budget is below the interval, or when the blocks alarm more the later they come (a
one-sided Kendall test on the block rates, TREND_P) and the later half of them alarms over the budget: the
plant moved during the training run, and the rows after it will alarm more if it stays where it went.

Several detectors share one budget as a union (`union`): each alarms under its own threshold and rule, set at
a share of the budget, and a row alarms where any of them does. The share is the largest at which the union's
alarm rate on the calibration rows stays within the budget: the budget divided by the detector count
(Bonferroni) guarantees that much, and detectors that alarm together on normal rows leave room above it. A
detector added for the faults the others miss (a frozen reading) then takes its part of the budget and the
others keep theirs, where a threshold on the largest of the detectors' score ratios had to rise with every
detector added, at the others' cost (docs/DETECT.md).

A detector may also join the union beyond a margin (`beyond_margin`), outside the budget: it alarms only where its
score passes `margin` times the largest of its normal scores. This is for a statistic that varies so slowly that
the training rows hold only a few independent stretches of it (a detector on EWMA-smoothed signals), whose tail
at a budget the training rows cannot set (on the Tennessee Eastman process a new normal run passed such thresholds
many times over the budget), while a fault far beyond anything seen is still found past the margin
(docs/DETECT.md).

>>> rng = np.random.default_rng(0)
>>> normal = rng.normal(size=20_000)
>>> fit = calibrate(normal[:15_000], normal[15_000:], 0.01)
>>> fit.rule, round(fit.calibration_rate, 3), bool(fit.held_back_rate < 0.015), fit.short_of_rows
(Persistence(k=3, n=3), 0.01, True, False)
>>> both = {"a": normal, "b": rng.normal(size=20_000)}
>>> fused = union(both, both, 15_000, 0.01)
>>> bool(0.005 <= fused.share <= 0.01), bool(fused.fusion.calibration_rate <= 0.01)
(True, True)
>>> far_beyond = beyond_margin(normal[:15_000], normal[15_000:], 2.0)
>>> bool(far_beyond.threshold == 2 * normal[:15_000].max()), far_beyond.calibration_rate
(True, 0.0)
>>> check = blocked_check({"a": normal}, {"a": fit.rule}, 0.01)
>>> str(check), check.warns(0.01)
('1.0 % ± 0.1 % over 10 blocks', False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

MIN_ALARM_ROWS = 10
BLOCKS = 10  # held back in turn by the check: about one of the out-of-fold scores' folds each
CONFIDENCE = 0.95  # of the check's interval
TREND_P = 0.05  # the check's trend test (module doc)


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

    def held(self, scores: np.ndarray) -> np.ndarray:
        """The k-th largest of the last n scores (-inf with fewer than k rows): `apply(scores > t)` is `held > t`,
        so a rule becomes a statistic that one threshold alarms on, whatever the threshold."""
        padded = np.r_[np.full(self.n - 1, -np.inf), np.asarray(scores, dtype=np.float64)]
        windows = np.lib.stride_tricks.sliding_window_view(padded, self.n)
        return np.partition(windows, self.n - self.k, axis=1)[:, self.n - self.k]


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
    check: Check | None = None  # the alarm rate on normal blocks held back from the setting (`blocked_check`)

    def alarms(self, scores: np.ndarray) -> np.ndarray:
        return self.rule.apply(scores > self.threshold)


@dataclass(frozen=True)
class Check:
    """Alarm rates on normal blocks each held back from the thresholds' setting (`blocked_check`)."""

    rates: tuple[float, ...]

    @property
    def rate(self) -> float:
        return float(np.mean(self.rates))

    @property
    def half_width(self) -> float:
        """Of the CONFIDENCE Student t interval for the mean rate over the blocks."""
        if len(self.rates) < 2:
            return math.inf
        sem = float(stats.sem(self.rates))
        return float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(self.rates) - 1)) * sem

    @property
    def trend_p(self) -> float:
        """One-sided p-value of Kendall's tau between the blocks' order and their rates (rising rates: small)."""
        if np.ptp(self.rates) == 0:
            return 1.0
        return float(stats.kendalltau(np.arange(len(self.rates)), self.rates, alternative="greater").pvalue)

    def over(self, far: float) -> bool:
        """The budget is below the whole interval: new normal rows will alarm more than the budget allows."""
        return self.rate - self.half_width > far

    def moved(self, far: float) -> bool:
        """The later blocks alarm more, and over the budget: the plant moved during the training rows."""
        return self.trend_p < TREND_P and float(np.mean(self.rates[len(self.rates) // 2:])) > far

    def warns(self, far: float) -> bool:
        return self.over(far) or self.moved(far)

    def __str__(self) -> str:
        return f"{100 * self.rate:.1f} % ± {100 * self.half_width:.1f} % over {len(self.rates)} blocks"


def blocked_check(scores: dict[str, np.ndarray], rules: dict[str, Persistence], share: float,
                  blocks: int = BLOCKS) -> Check:
    """Each of `blocks` contiguous blocks of the scores held back in turn: each detector's threshold set at
    `share` under its rule on the other blocks, and the alarm rate of the detectors' union (one detector: its own
    rate) measured on the held block (module doc)."""
    rows = len(next(iter(scores.values())))
    edges = np.linspace(0, rows, min(blocks, rows) + 1).astype(int)  # no empty block on a few rows
    rates = []
    for start, end in zip(edges[:-1], edges[1:], strict=True):
        alarm = np.zeros(end - start, dtype=bool)
        for name, s in scores.items():
            threshold = threshold_for(np.r_[s[:start], s[end:]], share, rules[name])
            alarm |= rules[name].apply(s[start:end] > threshold)
        rates.append(float(alarm.mean()))
    return Check(tuple(rates))


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
    best.short_of_rows = short_of_rows(len(calibration), len(held_back), far)
    return best


def short_of_rows(calibration_rows: int, held_back_rows: int, far: float) -> bool:
    return calibration_rows < rows_needed(far) or held_back_rows < rows_needed(far) / 2


FUSED = Persistence(1, 1)  # a union's rules are its members': the largest held ratio alarms on its own


def beyond_margin(scores: np.ndarray, held_back: np.ndarray, margin: float) -> Calibrated:
    """A detector that alarms, outside the budget, only where its score passes `margin` times the largest of its
    normal `scores` (module doc); its rates: on those scores (0 for a margin above 1) and on `held_back`."""
    threshold = margin * float(scores.max())
    return Calibrated(threshold, FUSED, alarm_rate(scores, threshold, FUSED), alarm_rate(held_back, threshold, FUSED),
                      False)


@dataclass
class Union:
    """Several detectors under one budget: each alarms under its own threshold and rule, set at `share` of the
    budget, and the fusion alarms where any of them does (module doc)."""

    share: float
    members: dict[str, Calibrated]  # each detector's threshold and rule at the share, set on all the rows
    fusion: Calibrated  # threshold 1 on `ratios(...).max(axis=0)`; its rates are the union's

    def ratios(self, scores: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        return held_ratios(self.members, scores)


def held_ratios(members: dict[str, Calibrated], scores: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """Each detector's scores (in the members' order) held by its rule (`Persistence.held`) over its threshold
    [detectors, rows]: a row alarms where the largest is above 1."""
    rows = scores.values() if isinstance(scores, dict) else scores
    return np.stack([m.rule.held(s) / m.threshold for m, s in zip(members.values(), rows, strict=True)])


def union(checked: dict[str, np.ndarray], final: dict[str, np.ndarray], calibration_rows: int, far: float,
          rule: Persistence | None = None, steps: int = 10) -> Union:
    """The largest share (from far / detectors up, by `steps` bisections on a log scale) at which the union of
    the detectors' alarms stays within `far` on the `final` scores: each detector's rule is checked on `checked`
    (its first `calibration_rows` set the threshold, the rows after are held back), its threshold set again on
    `final` (module doc)."""

    def at(share: float) -> tuple[dict[str, Calibrated], dict[str, Calibrated]]:
        check = {n: calibrate(s[:calibration_rows], s[calibration_rows:], share, rule) for n, s in checked.items()}
        return check, {n: replace(c, threshold=threshold_for(final[n], share, c.rule)) for n, c in check.items()}

    def rate(members: dict[str, Calibrated], scores: dict[str, np.ndarray]) -> float:
        return float((held_ratios(members, scores).max(axis=0) > 1).mean())

    lo, hi = far / len(checked), far  # at far / detectors each keeps its share, so the union keeps the budget
    best = at(lo)
    for _ in range(steps if len(checked) > 1 else 0):
        mid = math.sqrt(lo * hi)
        members = at(mid)
        if rate(members[1], final) <= far:
            lo, best = mid, members
        else:
            hi = mid
    check, members = best
    held_back = {n: s[calibration_rows:] for n, s in checked.items()}
    fusion = Calibrated(1.0, FUSED, rate(members, final), rate(check, held_back),
                        short_of_rows(calibration_rows, len(next(iter(held_back.values()))), far))
    return Union(lo, members, fusion)

