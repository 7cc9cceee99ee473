"""Isolation Forest (scikit-learn) fitted once on a normal reference window (the first ticks of the run): the
classical batch baseline. Score = the forest's anomaly score relative to the reference's 99.5th percentile.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("iforest", reference_ticks=400)
>>> X = np.random.default_rng(4).normal(size=(600, 3))
>>> X[500] = [6.0, -6.0, 6.0]
>>> state, scores = det.score_learn(det.init_state(["a", "b", "c"]), np.arange(600), X)
>>> int(np.argmax(scores))
500
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.ensemble import IsolationForest

from detectors.base import register
from detectors.reference import ReferenceState, collect, reference_matrix, standardise


@register("iforest")
class IForest:
    name = "iforest"

    def __init__(self, reference_ticks: int = 1440, n_estimators: int = 100, seed: int = 0) -> None:
        self.reference_ticks = reference_ticks
        self.n_estimators = n_estimators
        self.seed = seed

    def init_state(self, signal_names: Sequence[str]) -> ReferenceState:
        return ReferenceState()

    def score_learn(self, state: ReferenceState, ts: np.ndarray, X: np.ndarray) -> tuple[ReferenceState, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        scores = np.zeros(len(X))
        used = 0
        if state.model is None:
            used = collect(state, X, self.reference_ticks)
            if state.n >= self.reference_ticks:
                Z = reference_matrix(state)
                forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(Z)
                state.model = (forest, float(np.quantile(-forest.score_samples(Z), 0.995)))
        if state.model is not None and used < len(X):
            forest, limit = state.model  # type: ignore[misc]
            scores[used:] = -forest.score_samples(standardise(X[used:], state.mean, state.sd)) / limit
        return state, scores
