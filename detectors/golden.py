"""Golden batch: how far each reading is from normal operation *at the same culture age*.

A fed-batch is not stationary — feeds, the temperature shift, growth and decline move every signal — so a
fault has to be judged against what a normal run shows at the same time since inoculation. The reference is
the median and a robust spread per signal and per 10-minute age bin over normal runs of the twin
(`build_reference`, shipped as `golden_batch.npz`); the score is the largest smoothed robust z over the signals.
The run's start is the first tick the detector sees, so it must see a run from its beginning.

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
import pyarrow as pa
from numba import njit

from detectors.base import DETECTOR_SIGNALS, register

REFERENCE_PATH = Path(__file__).parent / "golden_batch.npz"
BIN_MIN = 10.0


@dataclass(frozen=True)
class GoldenReference:
    """Read-only reference data shared by every reactor's detectors. A copy is the same object and a pickle of
    one loaded from a file names the file: the flow's per-epoch snapshot of each reactor's monitor then no
    longer copies ~0.4 MB of constants per detector (it was the bulk of the snapshot)."""

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


def build_reference(runs: int = 30, seed: int = 500, days: float = 14.0) -> GoldenReference:
    """Median and robust spread (1.4826 MAD, floored) per age bin over `runs` normal runs of the twin."""
    from detectors.monitor import features
    from sources.fleet import Fleet
    from sources.scenarios import load_scenario

    fleet = Fleet(load_scenario("normal").with_overrides(days=days), runs, seed=seed)
    ticks = pa.Table.from_batches([fleet.step(fleet.total_ticks).ticks])
    per_run = fleet.total_ticks
    X = features(ticks, np.array([np.nan, np.nan])).reshape(runs, per_run, -1)
    increments = [j for j, name in enumerate(DETECTOR_SIGNALS) if name.endswith("_per_tick")]
    X[:, 0, increments] = np.nan  # the first increment of a run is taken against the previous run
    minutes = np.arange(per_run) * fleet.dt_s / 60.0
    bins = (minutes // BIN_MIN).astype(int)
    n_bins = int(bins.max()) + 1
    median = np.zeros((n_bins, X.shape[2]))
    scale = np.zeros_like(median)
    for b in range(n_bins):
        block = X[:, bins == b, :].reshape(-1, X.shape[2])
        med = np.nanmedian(block, axis=0)
        mad = np.nanmedian(np.abs(block - med), axis=0) * 1.4826
        median[b], scale[b] = med, mad
    floor = np.nanmedian(scale, axis=0) * 0.5 + 1e-3  # a bin where all runs agree must not give infinite z
    scale = np.maximum(scale, floor)
    ref = GoldenReference(np.nan_to_num(median), scale)
    return GoldenReference(ref.median, ref.scale, BIN_MIN, _drift_limits(ref, X, minutes))


def _drift_limits(ref: GoldenReference, X: np.ndarray, minutes: np.ndarray) -> np.ndarray:
    """Per signal, the largest slow (twin_residual) residual any of the normal runs reaches, floored at 1."""
    from detectors.twin_residual import CLIP, HALFLIFE_MIN, _integrate

    worst = np.zeros(X.shape[2])
    ones = np.ones(X.shape[2])
    for run in X:
        acc, out, contrib = np.zeros(X.shape[2]), np.zeros(len(run)), np.zeros_like(run)
        _integrate(np.ascontiguousarray(run), minutes, ref.bin_min, ref.median, ref.scale, ones, HALFLIFE_MIN, CLIP,
                   -1.0, acc, out, contrib)
        worst = np.maximum(worst, contrib.max(axis=0))
    return np.maximum(worst, 1.0)


def save_reference(ref: GoldenReference, path: Path = REFERENCE_PATH) -> None:
    np.savez_compressed(path, median=ref.median, scale=ref.scale, bin_min=ref.bin_min,
                        drift_limit=ref.drift_limit if ref.drift_limit is not None else np.zeros(0))


def load_reference(path: Path = REFERENCE_PATH) -> GoldenReference:
    """Loaded once per file and process: every reactor's detectors share it."""
    return _load_reference(Path(path).resolve())


@lru_cache(maxsize=4)
def _load_reference(path: Path) -> GoldenReference:
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m detectors.golden` to build it")
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


@njit(cache=True, nogil=True)
def _golden_z(X: np.ndarray, bins: np.ndarray, median: np.ndarray, scale: np.ndarray, smooth: np.ndarray,
              alpha: float, out: np.ndarray, contrib: np.ndarray) -> None:
    n, m = X.shape
    last = median.shape[0] - 1
    for i in range(n):
        b = min(max(bins[i], 0), last)
        best = 0.0
        for j in range(m):
            x = X[i, j]
            z = 0.0 if np.isnan(x) else (x - median[b, j]) / scale[b, j]
            smooth[j] += alpha * (z - smooth[j])
            a = abs(smooth[j])
            contrib[i, j] = a
            if a > best:
                best = a
        out[i] = best


@register("golden")
class Golden:
    name = "golden"

    def __init__(self, halflife_ticks: float = 10.0, reference: GoldenReference | None = None) -> None:
        self.alpha = 1.0 - 0.5 ** (1.0 / halflife_ticks)
        self.reference = reference or load_reference()

    def init_state(self, signal_names: Sequence[str]) -> GoldenState:
        return GoldenState(None, np.zeros(len(signal_names)))

    def score_learn_detail(self, state: GoldenState, ts: np.ndarray, X: np.ndarray,
                           ) -> tuple[GoldenState, np.ndarray, np.ndarray]:
        X = np.ascontiguousarray(X, dtype=np.float64)
        ts = np.asarray(ts, dtype=np.int64)
        if state.start_us is None and len(ts):
            state.start_us = int(ts[0])
        bins = ((ts - (state.start_us or 0)) / 6e7 // self.reference.bin_min).astype(np.int64)
        out = np.zeros(len(X))
        contrib = np.zeros_like(X)
        _golden_z(X, bins, self.reference.median, self.reference.scale, state.smooth, self.alpha, out, contrib)
        return state, out, contrib

    def score_learn(self, state: GoldenState, ts: np.ndarray, X: np.ndarray) -> tuple[GoldenState, np.ndarray]:
        state, scores, _ = self.score_learn_detail(state, ts, X)
        return state, scores


if __name__ == "__main__":
    ref = build_reference()
    save_reference(ref)
    print(f"golden batch: {ref.median.shape[0]} bins x {ref.median.shape[1]} signals -> {REFERENCE_PATH}")
    print("drift limits:", dict(zip(DETECTOR_SIGNALS, np.round(ref.drift_limit, 2), strict=True)))
    assert len(DETECTOR_SIGNALS) == ref.median.shape[1]
