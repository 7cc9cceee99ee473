"""From a score stream to alerts, with hysteresis: one excursion is one alert, not thousands.

An alert opens when the score stays above `on` for `persist` consecutive ticks and closes when it stays below
`off` for `clear` consecutive ticks. Row-sequential, so the result does not depend on how ticks are batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit


@dataclass
class AlarmState:
    active: bool = False
    above: int = 0
    below: int = 0


@njit(cache=True, nogil=True)
def _hysteresis(scores: np.ndarray, on: float, off: float, persist: int, clear: int, active: bool, above: int,
                below: int, is_alarm: np.ndarray, fired: np.ndarray) -> tuple[bool, int, int]:
    for i in range(scores.shape[0]):
        s = scores[i]
        fired[i] = False
        if not active:
            above = above + 1 if s > on else 0
            if above >= persist:
                active = True
                fired[i] = True
                below = 0
        else:
            below = below + 1 if s < off else 0
            if below >= clear:
                active = False
                above = 0
        is_alarm[i] = active
    return active, above, below


@dataclass
class Hysteresis:
    on: float
    off: float
    persist: int = 3
    clear: int = 30

    def apply(self, state: AlarmState, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns (is_alarm per tick, fired: True on the tick that opened an alert)."""
        is_alarm = np.zeros(len(scores), dtype=np.bool_)
        fired = np.zeros(len(scores), dtype=np.bool_)
        state.active, state.above, state.below = _hysteresis(
            np.ascontiguousarray(scores, dtype=np.float64), self.on, self.off, self.persist, self.clear,
            state.active, state.above, state.below, is_alarm, fired)
        return is_alarm, fired


@dataclass
class MemberAlarms:
    """One hysteresis alarm per fusion member, over its score ratio (1.0 = its calibrated threshold).

    A member's alarm opening fires an alert even while another member's alarm is still on: a slow detector
    holding its alarm for a day must not hide a new, different excursion that a fast one sees.
    """

    on: float = 1.0
    off: float = 0.6
    persist: int = 5
    clear: int = 60
    states: list[AlarmState] = field(default_factory=list)

    def apply(self, ratios: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ratios [members, n] -> (any alarm on [n], fired [members, n], cleared [members, n])."""
        k, n = ratios.shape
        while len(self.states) < k:
            self.states.append(AlarmState())
        hyst = Hysteresis(self.on, self.off, self.persist, self.clear)
        on = np.zeros((k, n), dtype=np.bool_)
        fired = np.zeros((k, n), dtype=np.bool_)
        cleared = np.zeros((k, n), dtype=np.bool_)
        for j in range(k):
            was = self.states[j].active
            on[j], fired[j] = hyst.apply(self.states[j], ratios[j])
            before = np.concatenate([[was], on[j, :-1]])
            cleared[j] = before & ~on[j]
        return on.any(axis=0), fired, cleared
