"""Fusion: one calibrated alarm from several detectors.

Each member's score is divided by its threshold (calibrated on normal runs for a target false-alarm rate), so
1.0 means "at the member's alarm level" for all of them; the fused score is the largest of these ratios and
the per-signal contributions are those of the member that drove it. The flow keeps one alarm per member
(`detectors.alarm.MemberAlarms`): an alert fires when a member's own alarm opens, even while another member's
alarm is still on, so a slow member holding its alarm for a day cannot hide a new excursion.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("fusion", members={"zscore": 10.0, "ewma": 40.0})
>>> X = np.random.default_rng(6).normal(size=(600, 2))
>>> X[500:510, 0] += 30.0
>>> state, scores = det.score_learn(det.init_state(["a", "b"]), np.arange(600), X)
>>> bool(scores[500] > 1.0 > scores[100:490].max())
True
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detectors.base import make_detector, register

CALIBRATION = Path(__file__).parent / "calibration.json"
DEFAULT_MEMBERS = {"zscore": 12.0, "ewma": 60.0, "moving_average": 12.0}


def calibrated_members() -> dict[str, float]:
    """Thresholds written by `biopilot bench detectors` (falls back to hand-set defaults)."""
    if CALIBRATION.exists():
        data = json.loads(CALIBRATION.read_text())
        return {name: float(v) for name, v in data.get("fusion_members", {}).items()} or dict(DEFAULT_MEMBERS)
    return dict(DEFAULT_MEMBERS)


@dataclass
class FusionState:
    members: dict[str, object]


@register("fusion")
class Fusion:
    name = "fusion"

    def __init__(self, members: Mapping[str, float] | None = None, **member_params: dict) -> None:
        self.thresholds = dict(members or calibrated_members())
        self.detectors = {n: make_detector(n, **member_params.get(n, {})) for n in self.thresholds}

    def init_state(self, signal_names: Sequence[str]) -> FusionState:
        return FusionState({n: d.init_state(signal_names) for n, d in self.detectors.items()})

    def score_learn_members(self, state: FusionState, ts: np.ndarray, X: np.ndarray, held: Collection[str] = (),
                            ) -> tuple[FusionState, np.ndarray, np.ndarray]:
        """Each member's score over its threshold [members, n] and its per-signal contributions
        [members, n, signals], signed where the member signs them; members in `self.thresholds` order. A `held`
        member is not scored (0, its state unchanged): it has nothing valid to compare with yet."""
        ratios, contribs = [], []
        for name, det in self.detectors.items():
            if name in held:
                s, c = np.zeros(len(X)), np.zeros_like(np.asarray(X, dtype=np.float64))
            elif hasattr(det, "score_learn_detail"):
                state.members[name], s, c = det.score_learn_detail(state.members[name], ts, X)
            else:
                state.members[name], s = det.score_learn(state.members[name], ts, X)
                c = np.zeros_like(np.asarray(X, dtype=np.float64))
            ratios.append(s / self.thresholds[name])
            contribs.append(c)
        return state, np.stack(ratios), np.stack(contribs)

    def score_learn_detail(self, state: FusionState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[FusionState, np.ndarray, np.ndarray]:
        state, R, C = self.score_learn_members(state, ts, X)
        lead = R.argmax(axis=0)
        return state, R.max(axis=0), np.abs(C[lead, np.arange(len(lead))])

    def score_learn(self, state: FusionState, ts: np.ndarray, X: np.ndarray) -> tuple[FusionState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
