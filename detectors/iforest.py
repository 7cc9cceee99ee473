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

import numpy as np
from sklearn.ensemble import IsolationForest

from detectors.base import register
from detectors.reference import ReferenceWindowDetector


@register("iforest")
class IForest(ReferenceWindowDetector):
    name = "iforest"

    def __init__(self, reference_ticks: int = 1440, n_estimators: int = 100, seed: int = 0) -> None:
        super().__init__(reference_ticks)
        self.n_estimators = n_estimators
        self.seed = seed

    def fit(self, Z: np.ndarray) -> tuple[IsolationForest, float]:
        forest = IsolationForest(n_estimators=self.n_estimators, random_state=self.seed).fit(Z)
        return forest, float(np.quantile(-forest.score_samples(Z), 0.995))

    def score(self, model: tuple[IsolationForest, float], Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        forest, limit = model
        return -forest.score_samples(Z) / limit, np.abs(Z)
