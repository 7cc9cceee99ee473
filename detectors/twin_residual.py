"""Twin residual: slow, persistent departures of each signal from what the twin's normal runs show at the same
culture age — the detector for drifts that the fast detectors cannot separate from normal variability.

For each signal the residual is the golden-batch robust z (`detectors.golden`: median and spread of normal twin
runs per 10-minute age bin), clipped at `CLIP` so one spike counts little, integrated by an EWMA with a long
half-life (`HALFLIFE_MIN`) by event time, so a faster tick rate changes nothing. Each signal's integrated
residual is divided by its own limit — the largest value it reaches on the normal runs the reference was built
from (`drift_limit` in `golden_batch.npz`) — so 1.0 means "as far as any normal run ever went, and for as long"
(for the DO cascade's signals in a recipe's reference, as far as one normal run in a hundred goes:
`detectors.golden_build.tail_limit`; for its other signals, as far as any run went within two days of the same
culture age, and at least as far as the runs that are not outliers went: `golden_build._drift_limits`); the
score is the largest of these ratios. A drifting pH probe goes well past its limit within days while the
process, and so every other signal, stays normal (which is how the troubleshooting agent tells a drifting probe
from a process fault). The run's start is the first tick the detector sees, so it must see a run from its
beginning.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("twin_residual")
>>> ref = det.reference
>>> n = 3 * 144  # three days at one tick per 10 minutes
>>> X = ref.median[:n].copy()
>>> X[144:, 1] += np.linspace(0, 0.15, n - 144)  # the pH reading drifts 0.075 per day from day 1
>>> ts = np.arange(n) * 600_000_000
>>> state, scores = det.score_learn(det.init_state(["s"] * 12), ts, X)
>>> bool(scores[:144].max() < 0.5 < 1.0 < scores[-1])
True
"""

from __future__ import annotations

import numpy as np

from detectors.base import register
from detectors.features import culture_minutes, minute_steps
from detectors.golden import Golden, GoldenReference, GoldenState

HALFLIFE_MIN = 12 * 60.0
CLIP = 10.0


@register("twin_residual")
class TwinResidual(Golden):
    name = "twin_residual"
    clip = CLIP

    def __init__(self, halflife_min: float = HALFLIFE_MIN, reference: GoldenReference | None = None) -> None:
        super().__init__(halflife_min, reference)
        if self.reference.drift_limit is None:
            raise ValueError("the golden reference has no drift limits: rebuild it with "
                             "`python -m detectors.golden_build`")

    def _steps(self, state: GoldenState, minutes: np.ndarray) -> np.ndarray:
        """Each tick's step in minutes of event time."""
        last_min = -1.0 if state.last_us is None else float(culture_minutes(state.start_us, state.last_us))
        return minute_steps(minutes, last_min)

    def _limit(self, n_signals: int) -> np.ndarray:
        return np.atleast_2d(self.reference.drift_limit)  # checked on construction
