"""Golden batch: how far each reading is from normal operation *at the same culture age*.

A fed-batch is not stationary — feeds, the temperature shift, growth and decline move every signal — so a
fault has to be judged against what a normal run shows at the same time since inoculation. The reference is
the median and a robust spread per signal and per 10-minute age bin over normal runs of the twin (built by
`python -m detectors.golden_build`, shipped as `golden_batch.npz`); the score is the largest smoothed robust z
over the signals. A recipe's reference (`detectors.recipe`) also has a spread above the median of its own
(`scale_up`: where a controller pins one side of a signal's band, the CO2 sparge capping pH, the runs spread to
the other side only, and a reading past the pinned side is further out than the other side's spread says) and a
timing tolerance (`timing_tolerance`: the DO cascade's stages come earlier or later by run, so their actuators
are judged against the closest bin within it). The run's start is the first tick the detector sees, so it must
see a run from its beginning.

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
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from detectors.base import register
from detectors.features import culture_minutes, golden_residual, golden_z

REFERENCE_PATH = Path(__file__).parent / "golden_batch.npz"
BIN_MIN = 10.0


@dataclass(frozen=True)
class GoldenReference:
    """Read-only reference data shared by every reactor's detectors. A copy is the same object and a pickle of
    one loaded from a file names the file: the flow's per-epoch snapshot of each reactor's monitor then does not
    copy the reference's constants once per detector (they would be the bulk of the snapshot)."""

    median: np.ndarray  # [bins, signals]
    scale: np.ndarray  # [bins, signals]: the spread below the median (and above it, without `scale_up`)
    bin_min: float = BIN_MIN
    # [signals], or [bins, signals] (a recipe's: per culture age): the twin_residual detector's per-signal limits
    drift_limit: np.ndarray | None = None
    scale_up: np.ndarray | None = None  # [bins, signals]: the spread above the median
    # [signals], minutes: a reading is judged against the medians within it either side (`band`)
    timing_tolerance: np.ndarray | None = None
    # [signals], a recipe's: what the golden detector divides each signal's z by (<= 1: a signal that stays quiet
    # in the normal runs alarms at a smaller z than the fusion's one golden level)
    z_limit: np.ndarray | None = None
    source: Path | None = field(default=None, compare=False)  # the file it was loaded from

    @property
    def upper(self) -> np.ndarray:
        """The spread above the median [bins, signals]."""
        return self.scale if self.scale_up is None else self.scale_up

    @cached_property
    def band(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per bin and signal [bins, signals] each: the lowest and highest median within the timing tolerance
        either side (the bin's own median without one), and the spread below the lowest's and above the
        highest's bin. A reading inside reads z 0: a culture that far ahead or behind is where a reference run
        was; past it, its z is against the closest median."""
        if self.timing_tolerance is None:
            return self.median, self.median, self.scale, self.upper
        lo, hi, below, above = (a.copy() for a in (self.median, self.median, self.scale, self.upper))
        bins = np.arange(len(self.median))
        for j, reach_min in enumerate(self.timing_tolerance):
            k = int(reach_min // self.bin_min)
            if k == 0:
                continue
            window = np.lib.stride_tricks.sliding_window_view(np.pad(self.median[:, j], k, mode="edge"), 2 * k + 1)
            at_lo = np.clip(bins - k + window.argmin(axis=1), 0, len(bins) - 1)
            at_hi = np.clip(bins - k + window.argmax(axis=1), 0, len(bins) - 1)
            lo[:, j], below[:, j] = self.median[at_lo, j], self.scale[at_lo, j]
            hi[:, j], above[:, j] = self.median[at_hi, j], self.upper[at_hi, j]
        return lo, hi, below, above

    def z(self, X: np.ndarray, bins: np.ndarray) -> np.ndarray:
        """The robust z of readings `X` [n, signals] in age bins `bins` [n] against the band (`band`,
        `features.reading_z`; NaN where a reading is missing)."""
        out = np.empty(X.shape)
        golden_z(np.ascontiguousarray(X, dtype=np.float64), np.asarray(bins, dtype=np.int64), *self.band, out)
        return out

    def __deepcopy__(self, memo: dict) -> GoldenReference:
        return self

    def __reduce__(self) -> tuple:
        if self.source is not None:
            return load_reference, (self.source,)
        return GoldenReference, (self.median, self.scale, self.bin_min, self.drift_limit, self.scale_up,
                                 self.timing_tolerance, self.z_limit)


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
    optional = [data.get(name) for name in ("drift_limit", "scale_up", "timing_tolerance", "z_limit")]
    limit, scale_up, tolerance, z_limit = (a if a is not None and a.size else None for a in optional)
    for a in (median, scale, limit, scale_up, tolerance, z_limit):
        if a is not None:
            a.flags.writeable = False  # shared by every reactor: nobody may change it
    return GoldenReference(median, scale, float(data["bin_min"]), limit, scale_up, tolerance, z_limit, path)


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
        """What each signal's smoothed residual is divided by [bins, signals] (one row: at every age)."""
        z_limit = self.reference.z_limit
        return np.ones((1, n_signals)) if z_limit is None else z_limit[None, :]

    def score_learn_detail(self, state: GoldenState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[GoldenState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        ts = np.asarray(ts, dtype=np.int64)
        if state.start_us is None and len(ts):
            state.start_us = int(ts[0])
        minutes = culture_minutes(state.start_us, ts)
        out, contrib = np.zeros(len(X)), np.zeros_like(X)
        ref = self.reference
        golden_residual(X, minutes, self._steps(state, minutes), self.halflife, ref.bin_min, *ref.band, self.clip,
                        self._limit(X.shape[1]), state.smooth, out, contrib)
        if len(ts):
            state.last_us = int(ts[-1])
        return state, out, contrib

    def score_learn(self, state: GoldenState, ts: np.ndarray, X: np.ndarray) -> tuple[GoldenState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores
