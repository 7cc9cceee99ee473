"""Golden batch: how far each reading is from normal operation *at the same culture age*.

A fed-batch is not stationary — feeds, the temperature shift, growth and decline move every signal — so a
fault has to be judged against what a normal run shows at the same time since inoculation. The reference is
the median and a robust spread per signal and per 10-minute age bin over normal runs of the twin (built by
`python -m detectors.golden_build`, shipped as `golden_batch.npz`); the score is the largest smoothed robust z
over the signals. The run's start is the first tick the detector sees, so it must see a run from its beginning.

>>> import numpy as np
>>> from detectors.base import make_detector
>>> det = make_detector("golden")
>>> state = det.init_state(["do_pct"] * 12)
>>> X = np.tile(det.reference.median[:200], (1, 1))  # a run exactly on the golden trajectory
>>> X[150:, 0] -= 25.0  # then DO falls 25 points below it
>>> ts = np.arange(200) * 600_000_000  # one tick per 10 minutes, in microseconds
>>> state, scores = det.score_learn(state, ts, X)
>>> bool(scores[160] > 10 * scores[100])
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from detectors.base import register
from detectors.features import culture_minutes, golden_residual

REFERENCE_PATH = Path(__file__).parent / "golden_batch.npz"
BIN_MIN = 10.0


@dataclass(frozen=True)
class GoldenReference:
    """Read-only reference data shared by every reactor's detectors. A copy is the same object and a pickle of
    one loaded from a file names the file: the flow's per-epoch snapshot of each reactor's monitor then does not
    copy the reference's constants once per detector (they would be the bulk of the snapshot)."""

    median: np.ndarray  # [bins, signals]
    scale: np.ndarray  # [bins, signals]
    bin_min: float = BIN_MIN
    drift_limit: np.ndarray | None = None  # [signals]: the twin_residual detector's per-signal limits
    source: Path | None = field(default=None, compare=False)  # the file it was loaded from

    def __deepcopy__(self, memo: dict) -> GoldenReference:
        return self

    def __reduce__(self) -> tuple:
        if self.source is not None:
            return load_reference, (self.source,)
        return GoldenReference, (self.median, self.scale, self.bin_min, self.drift_limit)


def load_reference(path: Path = REFERENCE_PATH) -> GoldenReference:
    """Loaded once per file and process: every reactor's detectors share it."""
    return _load_reference(Path(path).resolve())


def forget_loaded_references() -> None:
    """After a reference file was replaced (a learned reference over a twin-built one): read files anew."""
    _load_reference.cache_clear()


@lru_cache(maxsize=4)
def _load_reference(path: Path) -> GoldenReference:
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m detectors.golden_build` to build it")
    data = np.load(path)  # an NpzFile reads an array anew at each access: read each once
    median, scale = data["median"], data["scale"]
    limit = data.get("drift_limit")
    limit = limit if limit is not None and limit.size else None
    for a in (median, scale, limit):
        if a is not None:
            a.flags.writeable = False  # shared by every reactor: nobody may change it
    return GoldenReference(median, scale, float(data["bin_min"]), limit, path)


@dataclass
class GoldenState:
    start_us: int | None
    smooth: np.ndarray  # EWMA of the residual z per signal
    last_us: int | None = None  # the latest tick seen


@register("golden")
class Golden:
    """The golden-batch z per signal, smoothed over `halflife_ticks` ticks. `twin_residual` is the same residual,
    clipped, integrated by event time and held against per-signal limits: it overrides `clip`, `_steps` and
    `_limit`."""

    name = "golden"
    clip = np.inf

    def __init__(self, halflife_ticks: float = 10.0, reference: GoldenReference | None = None) -> None:
        self.halflife = halflife_ticks
        self.reference = reference or load_reference()

    def init_state(self, signal_names: Sequence[str]) -> GoldenState:
        return GoldenState(None, np.zeros(len(signal_names)))

    def _steps(self, state: GoldenState, minutes: np.ndarray) -> np.ndarray:
        """Each tick's step in the half-life's unit: here one tick."""
        return np.ones(len(minutes))

    def _limit(self, n_signals: int) -> np.ndarray:
        """What each signal's smoothed residual is divided by."""
        return np.ones(n_signals)

    def score_learn_detail(self, state: GoldenState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[GoldenState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        ts = np.asarray(ts, dtype=np.int64)
        if state.start_us is None and len(ts):
            state.start_us = int(ts[0])
        minutes = culture_minutes(state.start_us, ts)
        out, contrib = np.zeros(len(X)), np.zeros_like(X)
        ref = self.reference
        golden_residual(X, minutes, self._steps(state, minutes), self.halflife, ref.bin_min, ref.median, ref.scale,
                        self.clip, self._limit(X.shape[1]), state.smooth, out, contrib)
        if len(ts):
            state.last_us = int(ts[-1])
        return state, out, contrib

    def score_learn(self, state: GoldenState, ts: np.ndarray, X: np.ndarray) -> tuple[GoldenState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
