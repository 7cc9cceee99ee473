"""Dynamic PCA (Ku, Storer & Georgakis 1995): PCA on lagged vectors [z_t, ..., z_t-l], so the model holds how
the signals move together over time, not only at one instant; the lag count l comes from the reference
(`detectors.lagged.lag_order`). Hotelling's T² on the retained components and Q (SPE) on the residual, each
over its 99th percentile on the reference; the score is the larger ratio, its contributions the leading
statistic's (complete decomposition), summed over each signal's lags.

>>> from detectors.base import make_detector
>>> rng = np.random.default_rng(3)
>>> e = rng.normal(size=(1200, 3))
>>> X = np.zeros_like(e)
>>> for t in range(1, 1200):  # signal b follows a with a lag of one row
...     X[t] = [0.8 * X[t - 1, 0] + e[t, 0], X[t - 1, 0] + 0.1 * e[t, 1], e[t, 2]]
>>> X[1000:1010, 1] += 6.0  # b's transmitter reads high: b no longer follows a
>>> det = make_detector("dpca", reference_ticks=800)
>>> state, scores, contrib = det.score_learn_detail(det.init_state(["a", "b", "c"]), np.arange(1200), X)
>>> bool(scores[1000:1010].min() > scores[850:1000].max()), int(contrib[1000:1010].sum(axis=0).argmax())
(True, 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detectors.base import register
from detectors.lagged import (
    LaggedReferenceDetector,
    lag_matrix,
    lag_order,
    per_signal,
    quadratic_contributions,
)
from detectors.pca import principal_components, t2_spe


@dataclass
class DpcaModel:
    lags: int
    loadings: np.ndarray  # [m (l + 1), k]
    eigvals: np.ndarray  # [k]
    t2_limit: float
    q_limit: float


@register("dpca")
class DynamicPca(LaggedReferenceDetector):
    name = "dpca"

    def __init__(self, reference_ticks: int = 1440, explained: float = 0.9, max_lag: int = 6,
                 quantile: float = 0.99) -> None:
        super().__init__(reference_ticks, max_lag)
        self.explained = explained
        self.quantile = quantile

    def fit(self, Z: np.ndarray) -> DpcaModel:
        lags = lag_order(Z, self.max_lag)
        W = lag_matrix(Z, lags)
        P, eigvals = principal_components(W, self.explained)
        t2, q, _, _ = t2_spe(W, P, eigvals)
        return DpcaModel(lags, P, eigvals, float(np.quantile(t2, self.quantile)) + 1e-9,
                         float(np.quantile(q, self.quantile)) + 1e-9)

    def score_lagged(self, model: DpcaModel, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        P = model.loadings
        t2, q, _, resid = t2_spe(W, P, model.eigvals)
        t2, q = t2 / model.t2_limit, q / model.q_limit
        c_t2 = quadratic_contributions(W, (P / model.eigvals) @ P.T) / model.t2_limit
        c_q = resid**2 / model.q_limit
        m = W.shape[1] // (model.lags + 1)
        contrib = np.where((t2 >= q)[:, None], per_signal(c_t2, m), per_signal(c_q, m))
        return np.maximum(t2, q), contrib
