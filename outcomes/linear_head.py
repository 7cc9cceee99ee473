"""Logistic regression on the flattened inputs: the tabular baseline `train outcome` compares the hybrid with
(`outcomes.baselines`), and a head the outcome model serves in its place on a risk where it ranks the
validation patients better (`outcomes.train.choose_heads`, opt-in: honesty beats the architecture).

`flatten(x)` summarises each hourly series by five numbers (the last day's mean, the window's mean, the last
hour, the last day's min and max), then the static inputs and the genotypes one-hot. `LinearHead` keeps the
regression's weights on those unscaled columns (the standard scaler folded in), so its logit is one dot product
and its attributions are exact: each weight times its column's distance from the explanation's baseline
patient, put back on the hours a summary reads (`attributions`).

A served head is a bagged regression: `MEMBERS` fits on bootstrap resamples of the training patients (not
samples: a patient's samples are correlated), their mean the head's weights. The members' logits stand in for
the network's MC-dropout passes, so a risk served by regression keeps an ensemble's spread (`lo`, `hi`, the
answer's confidence) where one fit would have none.

>>> import numpy as np
>>> from outcomes.features import encode
>>> from outcomes.patient_arrays import PatientArrays
>>> row = {"cyp2c9": "*1/*1", "vkorc1_1639": "G/G", "cyp2d6": "NM", "ancestry": "white"}
>>> flatten(encode(PatientArrays.empty(), row, np.array([100.0]))).shape
(1, 127)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from outcomes.features import CATEGORICAL, Encoded

SUMMARIES = 5  # per hourly series: the last day's mean, the window's mean, the last hour, the last day's min, max
MEMBERS = 8  # bootstrap fits of a served head (the MC-dropout passes' count)
DAY_H = 24


def flatten(x: Encoded, static_columns: int | None = None) -> np.ndarray:
    """[n, 5 x series + static + one-hot genotypes] (`static_columns`: only the first of the static inputs)."""
    s = x.series
    day = s[:, -DAY_H:, :]
    parts = [day.mean(axis=1), s.mean(axis=1), s[:, -1, :], day.min(axis=1), day.max(axis=1),
             x.static[:, :static_columns]]
    parts += [np.eye(len(values), dtype=np.float32)[x.categorical[:, i]] for i, values in
              enumerate(CATEGORICAL.values())]
    return np.hstack(parts)


def logistic_regression() -> Pipeline:
    """The baseline's estimator: standardised columns, L2-penalised logistic regression (sklearn's defaults)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def _fit_unscaled(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Logistic regression's (weights, intercept) on the unscaled columns of `x`."""
    pipe = logistic_regression().fit(x, y.astype(int))
    scaler, lr = pipe[0], pipe[-1]
    weights = lr.coef_[0] / scaler.scale_
    return weights, float(lr.intercept_[0] - weights @ scaler.mean_)


@dataclass(frozen=True)
class LinearHead:
    """Logistic regression's weights on the unscaled `flatten` columns and its intercept; a bagged head's
    members (rows of `member_weights`, `member_intercepts`) average to them."""

    weights: np.ndarray
    intercept: float
    member_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    member_intercepts: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def fit(cls, x: Encoded, y: np.ndarray, groups: np.ndarray | None = None, members: int = 0,
            seed: int = 0) -> LinearHead | None:
        """Fitted on the labelled samples (NaN: no label); None when either class is missing. `members` > 0:
        bagged, each member on a bootstrap resample of the `groups` (patients; default: samples)."""
        keep = ~np.isnan(y)
        if not keep.any() or not 0 < y[keep].sum() < keep.sum():
            return None
        flat, y = flatten(x)[keep], y[keep]
        if not members:
            return cls(*_fit_unscaled(flat, y))
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)[keep]
        _, index = np.unique(groups, return_inverse=True)
        by_group = np.split(np.argsort(index, kind="stable"), np.cumsum(np.bincount(index))[:-1])
        rng = np.random.default_rng(seed)
        fits = []
        while len(fits) < members:
            rows = np.concatenate([by_group[g] for g in rng.integers(0, len(by_group), len(by_group))])
            if 0 < y[rows].sum() < len(rows):  # a resample holding one class only is drawn again
                fits.append(_fit_unscaled(flat[rows], y[rows]))
        w = np.stack([f[0] for f in fits])
        b = np.array([f[1] for f in fits])
        return cls(w.mean(axis=0), float(b.mean()), w, b)

    def logit(self, x: Encoded) -> np.ndarray:
        return flatten(x).astype(float) @ self.weights + self.intercept

    def member_logits(self, x: Encoded, passes: int) -> np.ndarray:
        """[passes, n]: the members' logits in turn (a head without members: its logit in every pass)."""
        flat = flatten(x).astype(float)
        if not len(self.member_intercepts):
            return np.broadcast_to(flat @ self.weights + self.intercept, (passes, len(flat)))
        k = np.arange(passes) % len(self.member_intercepts)
        return self.member_weights[k] @ flat.T + self.member_intercepts[k, None]

    def attributions(self, x: Encoded, base: Encoded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(series [n, W, S], static [n, F], per categorical [n, C]) shares of logit(x) - logit(base), exactly:
        a mean's weight spread over the hours it averages, the last hour's on the last hour, a min's or max's on
        the hour that holds it."""
        n, window, n_series = x.series.shape
        w = self.weights[:SUMMARIES * n_series].reshape(SUMMARIES, n_series)
        diff = (x.series - base.series).astype(float)
        attr_s = np.zeros(diff.shape)
        attr_s[:, -DAY_H:, :] += w[0] / DAY_H * diff[:, -DAY_H:, :]
        attr_s += w[1] / window * diff
        attr_s[:, -1, :] += w[2] * diff[:, -1, :]
        rows, cols = np.arange(n)[:, None], np.arange(n_series)[None, :]
        for k, pick in ((3, np.argmin), (4, np.argmax)):
            hour = window - DAY_H + pick(x.series[:, -DAY_H:, :], axis=1)  # [n, S]
            attr_s[rows, hour, cols] += w[k] * diff[rows, hour, cols]
        n_static = x.static.shape[1]
        static_w = self.weights[SUMMARIES * n_series:SUMMARIES * n_series + n_static]
        attr_st = static_w * (x.static - base.static)
        attr_e = np.zeros((n, len(CATEGORICAL)))
        at = SUMMARIES * n_series + n_static
        for i, values in enumerate(CATEGORICAL.values()):
            onehot_w = self.weights[at:at + len(values)]
            attr_e[:, i] = onehot_w[x.categorical[:, i]] - onehot_w[base.categorical[:, i]]
            at += len(values)
        return attr_s, attr_st, attr_e

    def to_blob(self) -> dict:
        return {"weights": self.weights.tolist(), "intercept": self.intercept,
                "member_weights": self.member_weights.tolist(), "member_intercepts": self.member_intercepts.tolist()}

    @classmethod
    def from_blob(cls, blob: dict) -> LinearHead:
        members = np.asarray(blob.get("member_weights", []), float)
        return cls(np.asarray(blob["weights"], float), float(blob["intercept"]),
                   members.reshape(-1, len(blob["weights"])), np.asarray(blob.get("member_intercepts", []), float))
