"""Shared piece of the dynamic detectors (dynamic PCA, CVA, the lagged autoencoder): they see each row with the
rows before it, as one lagged vector [z_t, z_t-1, ..., z_t-l] of standardised signals, and pick the lag count l
from the normal reference itself.

The lag count is the order of a vector autoregression on the reference's leading principal components that
minimises BIC (Schwarz): the shortest memory that explains how the plant's main directions move, as Ku, Storer
& Georgakis (1995) pick the lags that add new linear relations. Fitting a VAR on the components rather than on
every signal keeps the parameter count fit for a few hundred rows of a few dozen signals.

>>> rng = np.random.default_rng(0)
>>> e = rng.normal(size=(2000, 3))
>>> Z = np.zeros_like(e)
>>> for t in range(2, 2000):  # second order dynamics
...     Z[t] = 1.2 * Z[t - 1] - 0.5 * Z[t - 2] + e[t]
>>> lag_order(Z, max_lag=6)
2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.reference import ReferenceState, ReferenceWindowDetector


def lag_matrix(Z: np.ndarray, lags: int) -> np.ndarray:
    """Rows t >= lags of Z as lagged vectors [z_t, z_t-1, ..., z_t-lags]: [n - lags, m (lags + 1)]."""
    n = len(Z)
    return np.hstack([Z[lags - j:n - j] for j in range(lags + 1)])


def leading_components(Z: np.ndarray, explained: float, most: int) -> np.ndarray:
    """The loadings [m, k] of the principal components explaining `explained` of the variance (at most `most`)."""
    _, s, vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
    share = np.cumsum(s**2) / max(float((s**2).sum()), 1e-12)
    k = int(min(np.searchsorted(share, explained) + 1, most, len(s)))
    return vt[:k].T


def lag_order(Z: np.ndarray, max_lag: int) -> int:
    """The VAR order (0..max_lag) with the lowest BIC on Z's leading components (module doc)."""
    T = Z @ leading_components(Z, 0.99, 10)
    n, k = T.shape
    max_lag = max(0, min(max_lag, (n - 1) // (3 * k + 3) - 1))  # keep 3 rows per parameter at least
    rows = n - max_lag  # the same rows for every order, so their BICs compare
    best, best_bic = 0, np.inf
    for lags in range(max_lag + 1):
        target = T[max_lag:]
        design = np.hstack([np.ones((rows, 1))] + [T[max_lag - j:n - j] for j in range(1, lags + 1)])
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        resid = target - design @ coef
        _, logdet = np.linalg.slogdet(resid.T @ resid / rows + 1e-9 * np.eye(k))
        bic = logdet + lags * k * k * np.log(rows) / rows
        if bic < best_bic:
            best, best_bic = lags, bic
    return best


def quadratic_contributions(W: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Each coordinate's share of w' A w (rows of W): w * (A w), which sums to the form (Westerhuis et al. 2000's
    complete decomposition); absolute values, as a share that drives an alarm."""
    return np.abs(W * (W @ A))


def per_signal(contrib: np.ndarray, m: int) -> np.ndarray:
    """Contributions over a lagged vector [n, m (l + 1)] -> per signal [n, m], summed over the lags."""
    return contrib.reshape(len(contrib), -1, m).sum(axis=1)


@dataclass
class LaggedState(ReferenceState):
    history: np.ndarray | None = None  # the last standardised rows, the lags of the next ones


class LaggedReferenceDetector(ReferenceWindowDetector):
    """Fitted once on the first `reference_ticks` rows, like the PCA; subclasses give `fit` (standardised
    reference -> a model with a `lags` attribute) and `score_lagged` (model, lagged vectors -> scores,
    per-signal contributions). `max_lag` bounds the lag count (and the rows kept in the state)."""

    def __init__(self, reference_ticks: int, max_lag: int) -> None:
        super().__init__(reference_ticks)
        if reference_ticks <= 3 * (max_lag + 1):
            raise ValueError(f"reference_ticks {reference_ticks} too few for max_lag {max_lag}")
        self.max_lag = max_lag

    def init_state(self, signal_names: object) -> LaggedState:
        return LaggedState()

    def window(self, model: object) -> int:
        """Past rows a lagged vector of `model` holds besides the current one."""
        return int(model.lags)  # type: ignore[attr-defined]

    def score_lagged(self, model: object, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fit_state(self, state: LaggedState, R: np.ndarray) -> None:
        super().fit_state(state, R)
        state.history = R[-(self.max_lag + 2):]  # the lags of the first rows scored

    def score_state(self, state: LaggedState, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        full = np.vstack([state.history, Z])
        W = lag_matrix(full, self.window(state.model))[-len(Z):]
        state.history = full[-(self.max_lag + 2):]
        return self.score_lagged(state.model, W)
