"""Conformal prediction for the outcome model with crepes (Boström 2022): Mondrian by genotype group, so the
90 % coverage holds within each group, not only on average, calibrated on one sample per patient (the
exchangeable unit: `one_per_unit`). A group the calibration set did not hold (and, for intervals, one with
fewer than MIN_INTERVAL_SCORES patients) falls back on the pooled calibration.

Classification: nonconformity 1 - p(true class) of the calibrated probability; the prediction set at 90 % is
the classes whose (smoothed) conformal p-value exceeds 0.1. Regression: normalised residuals |y - y_hat| / sigma
(sigma: the MC-dropout spread), so an uncertain prediction gets a wider interval.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> groups = np.where(rng.random(4000) < 0.5, "a", "b")
>>> y_hat = rng.normal(size=4000)
>>> y = y_hat + rng.normal(size=4000) * np.where(groups == "a", 1.0, 3.0)  # group b three times as noisy
>>> cal = RegressionConformal.fit(y[:2000], y_hat[:2000], np.ones(2000), groups[:2000])
>>> lo, hi = cal.interval(y_hat[2000:], np.ones(2000), groups[2000:])
>>> inside = (y[2000:] >= lo) & (y[2000:] <= hi)
>>> [round(float(inside[groups[2000:] == g].mean()), 2) for g in ("a", "b")]
[0.89, 0.9]
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from crepes import ConformalClassifier, ConformalRegressor

from outcomes.contract import COVERAGE_TARGET

SIGMA_FLOOR = 1e-3
POOLED = "all"
# crepes gives a finite 90 % interval from 10 scores on: a regression group with fewer calibration patients
# uses the pooled scores (a classification group keeps its own: too few scores give the full set {0, 1}, which
# covers; pooling instead put a high-risk group under a low-risk quantile)
MIN_INTERVAL_SCORES = 10


def one_per_unit(units: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of one sample drawn per unit (the patient). Conformal's guarantee needs the calibration scores
    exchangeable with a new patient's: a patient's ~12 samples are correlated, so a group of a few patients
    calibrated on all their samples calibrates on those patients, not on the group (re-splits of 300 patients,
    all samples: CYP2D6 PM and UM covered 0.61 and 0.71 on average; one per patient: 0.92 and 0.89). Drawing
    one per patient is the subsampling of Dunn, Wasserman & Ramdas 2022 (two-layer hierarchical models)."""
    units = np.asarray(units, dtype=object)
    order = np.random.default_rng(seed).permutation(len(units))
    _, first = np.unique(units[order].astype(str), return_index=True)
    return np.sort(order[first])


def _known(bins: np.ndarray, fitted: set[str]) -> np.ndarray:
    return np.array([b if b in fitted else POOLED for b in np.asarray(bins, dtype=object)], dtype=object)


def _calibration(scores: np.ndarray, bins: np.ndarray, units: np.ndarray | None, min_scores: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The scores (one per unit when `units` is given) in their group and pooled; a group with fewer than
    `min_scores` only pooled."""
    if units is not None:
        pick = one_per_unit(units)
        scores, bins = scores[pick], bins[pick]
    counts = {g: int((bins == g).sum()) for g in set(bins)}
    own = np.array([counts[g] >= min_scores for g in bins], bool)
    return np.r_[scores[own], scores], np.r_[bins[own], np.full(len(scores), POOLED, dtype=object)]


@dataclass(frozen=True)
class RegressionConformal:
    """Normalised residuals per group (and pooled as the group `all`)."""

    scores: np.ndarray
    bins: np.ndarray

    @classmethod
    def fit(cls, y: np.ndarray, y_hat: np.ndarray, sigma: np.ndarray, bins: np.ndarray,
            units: np.ndarray | None = None) -> RegressionConformal:
        """`units`: who each sample belongs to (the patient): one score per unit (`one_per_unit`)."""
        keep = ~np.isnan(y)
        s = np.abs(y[keep] - y_hat[keep]) / np.maximum(sigma[keep], SIGMA_FLOOR)
        return cls(*_calibration(s, np.asarray(bins, dtype=object)[keep], None if units is None else units[keep],
                                 MIN_INTERVAL_SCORES))

    @cached_property
    def _fitted(self) -> ConformalRegressor:
        cr = ConformalRegressor()
        # crepes takes residuals and sigmas apart; normalised scores with sigma 1 are the same calibration
        return cr.fit(self.scores, sigmas=np.ones(len(self.scores)), bins=self.bins)

    def interval(self, y_hat: np.ndarray, sigma: np.ndarray, bins: np.ndarray,
                 confidence: float = COVERAGE_TARGET) -> tuple[np.ndarray, np.ndarray]:
        b = _known(bins, set(self.bins))
        # a group with too few calibration scores gets an infinite interval: honest, and warned of per call by
        # crepes (here: once in `evaluate`'s widths, not on every served prediction)
        with warnings.catch_warnings(action="ignore", category=UserWarning):
            out = self._fitted.predict_int(np.asarray(y_hat, float), sigmas=np.maximum(sigma, SIGMA_FLOOR),
                                           bins=b, confidence=confidence)
        return out[:, 0], out[:, 1]


@dataclass(frozen=True)
class ClassConformal:
    """Nonconformity 1 - p(true class) per group (and pooled)."""

    scores: np.ndarray
    bins: np.ndarray

    @classmethod
    def fit(cls, y: np.ndarray, p1: np.ndarray, bins: np.ndarray, units: np.ndarray | None = None
            ) -> ClassConformal:
        """`units`: who each sample belongs to (the patient): one score per unit (`one_per_unit`)."""
        keep = ~np.isnan(y)
        s = np.where(y[keep] == 1, 1.0 - p1[keep], p1[keep])
        return cls(*_calibration(s, np.asarray(bins, dtype=object)[keep], None if units is None else units[keep], 1))

    @cached_property
    def _fitted(self) -> ConformalClassifier:
        return ConformalClassifier().fit(self.scores, bins=self.bins)

    def sets(self, p1: np.ndarray, bins: np.ndarray, confidence: float = COVERAGE_TARGET,
             seed: int = 0) -> np.ndarray:
        """[n, 2] bool: class 0 / class 1 in the prediction set."""
        alphas = np.column_stack([p1, 1.0 - p1])  # nonconformity of class 0, of class 1
        return self._fitted.predict_set(alphas, bins=_known(bins, set(self.bins)), confidence=confidence,
                              seed=seed).astype(bool)
