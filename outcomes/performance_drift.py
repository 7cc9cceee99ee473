"""Outcome drift: is the model still right, now that its predictions' outcomes are known?

A prediction resolves when its horizon has passed (7 days for `inr_ge4_7d`); `PerformanceDrift` keeps the
newest `window` resolved (probability, outcome) pairs of one head and judges them every `check_every`:
- discrimination: the window's AUROC below the reference (the champion's own on its test set, with its
  `reference_se`, or the first full window's) by more than `auroc_drop` and more than `z` standard errors of the
  difference (Hanley & McNeil 1982: a window of 500 with 100 events has an AUROC's SE near 0.03);
- calibration: the mean probability off the observed rate by more than `min_gap` and `z` binomial standard
  errors (calibration-in-the-large; the window's ECE is reported too, but 10 bins of a few dozen samples each
  are too noisy to alarm on).
A window with fewer than `min_events` outcomes of either kind is not judged (`judged` False after it).
`calibration=False` judges discrimination only: for an outcome observed more coarsely than the label the model
learnt (the INR measured on draw days, not the true INR hour by hour), the observed rate sits below the
predicted one by design, and the reference AUROC is then the first full window's of the same observations.

>>> import random
>>> rng = random.Random(1)
>>> monitor = PerformanceDrift(window=400)  # the reference: the first full window's AUROC
>>> def resolved(informative):  # a calibrated probability; after the shift the outcome ignores it
...     p = rng.betavariate(1.0, 3.0)
...     return p, int(rng.random() < (p if informative else 0.25))
>>> flags = []
>>> for k in range(2000):
...     monitor.update(*resolved(k < 1000))
...     flags.append(monitor.drift_detected)
>>> any(flags[:1000]), 1000 <= flags.index(True) < 1400, monitor.auroc < 0.6
(False, True, True)
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from sklearn.metrics import roc_auc_score

from outcomes.calibration import expected_calibration_error


def labelled_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC of `p` over the labelled samples of `y` (NaN: no label); NaN when a class is missing."""
    keep = ~np.isnan(y)
    return float(roc_auc_score(y[keep], p[keep])) if 0 < np.nansum(y) < keep.sum() else float("nan")


def auroc_standard_error(auroc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982), Radiology 143:29, eq. 2; NaN without both classes (no AUROC to be unsure of).

    >>> round(auroc_standard_error(0.77, 100, 300), 3), auroc_standard_error(float("nan"), 0, 30)
    (0.03, nan)
    """
    if positives <= 0 or negatives <= 0:
        return float("nan")
    q1, q2 = auroc / (2.0 - auroc), 2.0 * auroc**2 / (1.0 + auroc)
    var = (auroc * (1.0 - auroc) + (positives - 1) * (q1 - auroc**2) + (negatives - 1) * (q2 - auroc**2)) / (
        positives * negatives)
    return math.sqrt(max(var, 0.0))


class PerformanceDrift:
    """One head's discrimination and calibration over a sliding window of resolved predictions."""

    def __init__(self, window: int = 500, *, reference_auroc: float | None = None, reference_se: float = 0.0,
                 auroc_drop: float = 0.05, min_gap: float = 0.05, z: float = 3.0, min_events: int = 20,
                 check_every: int = 25, calibration: bool = True) -> None:
        self.window, self.auroc_drop, self.min_gap, self.z = window, auroc_drop, min_gap, z
        self.calibration = calibration
        self.reference_auroc, self.reference_se = reference_auroc, reference_se
        self.min_events, self.check_every = min_events, check_every
        self._probability: deque[float] = deque(maxlen=window)
        self._outcome: deque[int] = deque(maxlen=window)
        self.auroc: float | None = None
        self.ece: float | None = None
        self.mean_probability: float | None = None
        self.observed_rate: float | None = None
        self.drift_detected = False
        self.judged = False  # whether the last update was a check that reached a verdict (drift or none)
        self.n_seen = 0

    def update(self, probability: float, outcome: int) -> None:
        self.n_seen += 1
        self.judged = False
        self._probability.append(float(probability))
        self._outcome.append(int(outcome))
        if self.n_seen % self.check_every or len(self._outcome) < self.window:
            return  # judged on a full window only, every check_every resolutions; the verdict stands between
        p, y = np.array(self._probability), np.array(self._outcome)
        positives = int(y.sum())
        negatives = len(y) - positives
        if min(positives, negatives) < self.min_events:
            self.auroc, self.ece, self.mean_probability, self.observed_rate = None, None, None, None
            self.drift_detected = False
            return
        self.auroc, self.ece = float(roc_auc_score(y, p)), expected_calibration_error(p, y)
        self.mean_probability, self.observed_rate = float(p.mean()), positives / len(y)
        se = auroc_standard_error(self.auroc, positives, negatives)
        if self.reference_auroc is None:  # the first full window: as noisy as the ones compared with it
            self.reference_auroc, self.reference_se = self.auroc, se
        rate = self.observed_rate
        worse = self.reference_auroc - self.auroc > max(self.auroc_drop,
                                                        self.z * math.hypot(se, self.reference_se))
        miscalibrated = abs(self.mean_probability - rate) > max(self.min_gap, self.z * math.sqrt(rate * (1.0 - rate) / len(y)))
        self.drift_detected = worse or (miscalibrated and self.calibration)
        self.judged = True
