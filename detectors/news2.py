"""NEWS2 as a detector: the early warning score of each vitals reading (`sources.patient.news2`), averaged over
the last `window_ticks` readings so that one noisy reading does not call for a review, a patient who stays at 5
or more does.

The score is the mean aggregate NEWS2 over the window; a missing vital scores no points (a pulse oximeter off the
finger is the sensor-health detector's business, not a sign of hypoxia). The contributions are each parameter's
mean points, on the vital's column (DBP, not scored, gets none).

>>> import numpy as np
>>> from core.events import VITAL_SIGNALS
>>> from detectors.base import make_detector
>>> det = make_detector("news2", window_ticks=3)
>>> X = np.tile([72.0, 128.0, 76.0, 97.0, 16.0, 36.8], (6, 1))
>>> X[3:, 0], X[3:, 4], X[3:, 5] = 122.0, 26.0, 39.4  # septic: tachycardia, tachypnoea, fever
>>> state, scores = det.score_learn(det.init_state(VITAL_SIGNALS), np.arange(6), X)
>>> scores.round(2).tolist()
[0.0, 0.0, 0.0, 2.33, 4.67, 7.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detectors.base import register
from sources.patient.news2 import NEWS2_VITALS, parameter_points


@dataclass
class News2State:
    columns: np.ndarray  # per scored vital, its column in X (-1: not there)
    recent: np.ndarray  # the points of the last window - 1 readings, (window - 1, len(NEWS2_VITALS))


@register("news2")
class News2:
    name = "news2"
    plant = "patient"  # reads vitals by name (the conformance suite gives it vitals)

    def __init__(self, window_ticks: int = 6) -> None:
        if window_ticks < 1:
            raise ValueError(f"window_ticks {window_ticks!r} must be >= 1")
        self.window = int(window_ticks)

    def init_state(self, signal_names: Sequence[str]) -> News2State:
        names = list(signal_names)
        columns = np.array([names.index(v) if v in names else -1 for v in NEWS2_VITALS], dtype=np.int64)
        return News2State(columns, np.zeros((self.window - 1, len(NEWS2_VITALS))))

    def score_learn_detail(self, state: News2State, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[News2State, np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        n = len(X)
        points = np.zeros((n, len(NEWS2_VITALS)))
        for k, (name, col) in enumerate(zip(NEWS2_VITALS, state.columns, strict=True)):
            if col >= 0:
                points[:, k] = np.nan_to_num(parameter_points(name, X[:, col]))  # missing: no points
        history = np.concatenate([state.recent, points])
        # each window summed on its own, so that the scores do not depend on how the readings were batched
        means = sliding_window_view(history, self.window, axis=0).mean(axis=2)  # (n, len(NEWS2_VITALS))
        state.recent = history[len(history) - (self.window - 1):] if self.window > 1 else state.recent
        contrib = np.zeros_like(X)
        for k, col in enumerate(state.columns):
            if col >= 0:
                contrib[:, col] = means[:, k]
        return state, means.sum(axis=1), contrib

    def score_learn(self, state: News2State, ts: np.ndarray, X: np.ndarray) -> tuple[News2State, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
