"""MSPC: PCA Hotelling T² and SPE (Q) with control limits from a normal reference (the first ticks of the run),
the industrial SIMCA-style baseline. Score = max(T²/T²_limit, SPE/SPE_limit): above 1 is out of control.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("pca", reference_ticks=500)
>>> rng = np.random.default_rng(3)
>>> latent = rng.normal(size=(1000, 1))
>>> X = np.hstack([latent, 2 * latent, -latent]) + 0.05 * rng.normal(size=(1000, 3))
>>> X[800, 1] += 3.0  # breaks the correlation structure: SPE
>>> state, scores = det.score_learn(det.init_state(["a", "b", "c"]), np.arange(1000), X)
>>> int(np.argmax(scores))
800
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from detectors.base import register
from detectors.reference import ReferenceWindowDetector


@dataclass
class PcaModel:
    loadings: np.ndarray  # [m, k]
    eigvals: np.ndarray  # [k]
    t2_limit: float
    spe_limit: float


def principal_components(Z: np.ndarray, explained: float) -> tuple[np.ndarray, np.ndarray]:
    """The loadings [m, k] and variances [k] (floored at 1e-9) of the fewest principal components of Z that
    explain `explained` of its variance (at least 1, at most m - 1)."""
    n, m = Z.shape
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    eig = s**2 / max(n - 1, 1)
    k = int(np.searchsorted(np.cumsum(eig) / max(eig.sum(), 1e-12), explained) + 1)
    k = max(1, min(k, m - 1 if m > 1 else 1))
    return vt[:k].T, np.maximum(eig[:k], 1e-9)


def t2_spe(Z: np.ndarray, loadings: np.ndarray, eigvals: np.ndarray,
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each row's Hotelling T² and SPE (Q), with the component scores [n, k] and residuals [n, m] that the
    contributions are made of."""
    T = Z @ loadings
    resid = Z - T @ loadings.T
    return (T**2 / eigvals).sum(axis=1), (resid**2).sum(axis=1), T, resid


@register("pca")
class Pca(ReferenceWindowDetector):
    name = "pca"

    def __init__(self, reference_ticks: int = 1440, explained: float = 0.9, alpha: float = 0.99) -> None:
        super().__init__(reference_ticks)
        self.explained = explained
        self.alpha = alpha

    def fit(self, Z: np.ndarray) -> PcaModel:
        n = len(Z)
        P, eigvals = principal_components(Z, self.explained)
        k = len(eigvals)
        t2_limit = k * (n - 1) * (n + 1) / (n * max(n - k, 1)) * stats.f.ppf(self.alpha, k, max(n - k, 1))
        spe_limit = float(np.quantile(t2_spe(Z, P, eigvals)[1], self.alpha)) * 1.5 + 1e-9
        return PcaModel(P, eigvals, float(t2_limit), spe_limit)

    def score(self, model: PcaModel, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t2, spe, T, resid = t2_spe(Z, model.loadings, model.eigvals)
        t2, spe = t2 / model.t2_limit, spe / model.spe_limit
        # contributions of the leading statistic: SPE's squared residuals, or T²'s complete decomposition
        # z * (P Λ^-1 P' z) (Westerhuis et al. 2000), so a shift along a retained component names its signal
        c_t2 = np.abs(Z * ((T / model.eigvals) @ model.loadings.T)) / model.t2_limit
        return np.maximum(t2, spe), np.where((t2 > spe)[:, None], c_t2, resid**2 / model.spe_limit)
