"""River HalfSpaceTrees on min-max scaled features, learnt and scored one tick at a time (River has no batch
API for it). Cost grows with 2^height, so the defaults (10 trees, height 8, window 250) keep the height small;
its throughput is in docs/QUALITY.md.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("hst", seed=1)
>>> X = np.random.default_rng(5).normal(size=(1500, 2))
>>> X[1400] = [9.0, 9.0]
>>> state, scores = det.score_learn(det.init_state(["a", "b"]), np.arange(1500), X)
>>> bool(scores[1400] > np.quantile(scores[500:1400], 0.99))
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from river.anomaly import HalfSpaceTrees
from river.preprocessing import MinMaxScaler

from detectors.base import register


@dataclass
class HstState:
    names: list[str]
    scaler: MinMaxScaler
    model: HalfSpaceTrees


@register("hst")
class Hst:
    name = "hst"

    def __init__(self, n_trees: int = 10, height: int = 8, window_size: int = 250, seed: int = 0) -> None:
        self.n_trees, self.height, self.window_size, self.seed = n_trees, height, window_size, seed

    def init_state(self, signal_names: Sequence[str]) -> HstState:
        return HstState(list(signal_names), MinMaxScaler(),
                        HalfSpaceTrees(n_trees=self.n_trees, height=self.height, window_size=self.window_size,
                                       seed=self.seed))

    def score_learn(self, state: HstState, ts: np.ndarray, X: np.ndarray) -> tuple[HstState, np.ndarray]:
        scores = np.empty(len(X))
        names = state.names
        for i, row in enumerate(np.asarray(X, dtype=np.float64)):
            x = {n: float(v) for n, v in zip(names, row, strict=True) if v == v}  # NaN: the feature is absent
            state.scaler.learn_one(x)
            scaled = {k: min(max(v, 0.0), 1.0) for k, v in state.scaler.transform_one(x).items()}
            scores[i] = state.model.score_one(scaled)
            state.model.learn_one(scaled)
        return state, scores
