"""Building the golden reference offline (`python -m detectors.golden_build` writes `golden_batch.npz`): normal
runs of the twin simulated from the `normal` scenario, summarised per culture-age bin, and the twin_residual
detector's per-signal drift limits measured on the same runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from detectors.base import DETECTOR_SIGNALS
from detectors.features import features
from detectors.golden import BIN_MIN, REFERENCE_PATH, GoldenReference
from detectors.twin_residual import TwinResidual
from sources.fleet import Fleet
from sources.scenarios import load_scenario


def build_reference(runs: int = 30, seed: int = 500, days: float = 14.0) -> GoldenReference:
    """Median and robust spread (1.4826 MAD, floored) per age bin over `runs` normal runs of the twin."""
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
    ts_us = ticks["ts"].cast(pa.int64()).to_numpy().reshape(runs, per_run)
    return GoldenReference(ref.median, ref.scale, BIN_MIN, _drift_limits(ref, X, ts_us))


def _drift_limits(ref: GoldenReference, X: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
    """Per signal, the largest twin_residual residual any of the normal runs `X` [runs, ticks, signals] reaches,
    floored at 1."""
    detector = TwinResidual(reference=replace(ref, drift_limit=np.ones(X.shape[2])))
    worst = np.zeros(X.shape[2])
    for run, ts in zip(X, ts_us, strict=True):
        _, _, contrib = detector.score_learn_detail(detector.init_state(DETECTOR_SIGNALS), ts, run)
        worst = np.maximum(worst, contrib.max(axis=0))
    return np.maximum(worst, 1.0)


def save_reference(ref: GoldenReference, path: Path = REFERENCE_PATH) -> None:
    np.savez_compressed(path, median=ref.median, scale=ref.scale, bin_min=ref.bin_min,
                        drift_limit=ref.drift_limit if ref.drift_limit is not None else np.zeros(0))


if __name__ == "__main__":
    built = build_reference()
    save_reference(built)
    print(f"golden batch: {built.median.shape[0]} bins x {built.median.shape[1]} signals -> {REFERENCE_PATH}")
    print("drift limits:", dict(zip(DETECTOR_SIGNALS, np.round(built.drift_limit, 2), strict=True)))
    assert len(DETECTOR_SIGNALS) == built.median.shape[1]
