"""Shared piece of the reference-window detectors (PCA, Isolation Forest): collect the first ticks of a run
as the normal reference, then fit once and score from there on. Before the fit the score is 0."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReferenceState:
    rows: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    model: object | None = None
    mean: np.ndarray | None = None
    sd: np.ndarray | None = None


def standardise(X: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """z-scores with missing readings at the reference mean (0): a gap is not an anomaly."""
    Z = (X - mean) / sd
    return np.where(np.isnan(Z), 0.0, Z)


def collect(state: ReferenceState, X: np.ndarray, needed: int) -> int:
    """Add rows to the reference until `needed`; returns how many rows of X were used."""
    take = min(max(needed - state.n, 0), len(X))
    if take:
        state.rows.append(X[:take].copy())
        state.n += take
    return take


def reference_matrix(state: ReferenceState) -> np.ndarray:
    R = np.concatenate(state.rows)
    state.rows = []
    state.mean = np.nanmean(np.where(np.isnan(R), np.nan, R), axis=0)
    state.mean = np.where(np.isnan(state.mean), 0.0, state.mean)
    sd = np.nanstd(R, axis=0)
    state.sd = np.where(np.isnan(sd) | (sd < 1e-6), 1.0, sd)
    return standardise(R, state.mean, state.sd)


class ReferenceWindowDetector:
    """Base of the detectors fitted once on the first `reference_ticks` of a run: subclasses give `fit` (the
    standardised reference -> a model) and `score` (model, standardised rows -> scores, per-signal
    contributions); one that keeps rows across calls overrides `fit_state` and `score_state` instead."""

    name = "reference"

    def __init__(self, reference_ticks: int) -> None:
        self.reference_ticks = reference_ticks

    def init_state(self, signal_names: object) -> ReferenceState:
        return ReferenceState()

    def fit(self, Z: np.ndarray) -> object:
        raise NotImplementedError

    def score(self, model: object, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fit_state(self, state: ReferenceState, R: np.ndarray) -> None:
        """Fit on the standardised reference R."""
        state.model = self.fit(R)

    def score_state(self, state: ReferenceState, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores and per-signal contributions of standardised rows after the fit."""
        return self.score(state.model, Z)

    def score_learn_detail(self, state: ReferenceState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[ReferenceState, np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        scores = np.zeros(len(X))
        contrib = np.zeros_like(X)
        used = 0
        if state.model is None:
            used = collect(state, X, self.reference_ticks)
            if state.n >= self.reference_ticks:
                self.fit_state(state, reference_matrix(state))
        if state.model is not None and used < len(X):
            scores[used:], contrib[used:] = self.score_state(state, standardise(X[used:], state.mean, state.sd))
        return state, scores, contrib

    def score_learn(self, state: ReferenceState, ts: np.ndarray, X: np.ndarray) -> tuple[ReferenceState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
