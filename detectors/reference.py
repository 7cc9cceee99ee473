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
