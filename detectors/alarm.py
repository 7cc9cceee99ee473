"""From a score stream to alerts, with hysteresis: one excursion is one alert, not thousands.

An alert opens when the score stays above `on` for `persist` consecutive ticks and closes when it stays below
`off` for `clear` consecutive ticks. Row-sequential, so the result does not depend on how ticks are batched.
"""

from __future__ import annotations

from dataclasses import dataclass

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
