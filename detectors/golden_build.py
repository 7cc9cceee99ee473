"""Building a golden reference: normal runs of the twin, summarised per culture-age bin, and the twin_residual
detector's per-signal drift limits measured on the same runs. Offline, `python -m detectors.golden_build`
writes the default recipe's (`normal` scenario) `golden_batch.npz`; online, `detectors.recipe.reference_for`
builds any other recipe's, with the operator's mid-run changes (`changes`) replayed at their culture age."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.events import TICK_SIGNALS
from detectors.base import DETECTOR_SIGNALS
from detectors.features import features
from detectors.fusion import calibrated_members
from detectors.golden import BIN_MIN, REFERENCE_PATH, Golden, GoldenReference
from detectors.twin_residual import TwinResidual
from sources.fleet import Fleet
from sources.measurement import RESOLUTION
from sources.recipe import Change, simulate_with_changes
from sources.scenarios import Scenario, load_scenario

# The signals the DO cascade sets (its stages: agitation, then air, then O2) and the off-gas rates computed from
# its flows: a stage that some normal runs reach, and when, is a choice per run, so the largest residual of 30
# runs does not bound a new run's (docs/QUALITY.md, the recipe sweep). Their limits extrapolate the runs'
# maxima to a normal run crossing any of them once in a hundred (`tail_limit`); the probes' and pumps' residuals
# vary smoothly from run to run, and their limit stays the worst run's, so a drifting probe is found as early.
CASCADE_SIGNALS = ("do_pct", "agitation_rpm", "air_sccm", "o2_sccm", "our_mmol_l_h", "cer_mmol_l_h")
CASCADE = [DETECTOR_SIGNALS.index(name) for name in CASCADE_SIGNALS]
RUN_FALSE_ALARM = 0.01
# A probe's or pump's drift limit in a recipe's reference holds at the ages near where the runs reached it: one
# reference run whose pH skips the dip at day 4 (7 times the others' largest residual) says nothing of a pH probe
# drifting at day 9 (docs/QUALITY.md, the recipe sweep). Two days either side covers the normal runs' spread in
# when a stage comes (a pH dip 20 h early read against one half-life either side alarmed)
LIMIT_REACH_MIN = 48 * 60.0
# ... and away from them, the largest residual of the other runs: a run that went this many robust spreads past
# the runs' median is the outlier (the largest of 30 usual runs sits about 3 past it)
OUTLIER_MADS = 4.0
# The fusion's golden level (z 66) was set by the loudest signal on the default recipe's runs; a recipe's quiet
# signals (temperature: z 3 at most over 30 normal runs, its spread 0.03 C) alarm at this many times their own
# largest z, never below `GOLDEN_Z_MIN` (a signal the spread floors keep near z 0)
GOLDEN_MARGIN = 3.0
GOLDEN_Z_MIN = 10.0
# ... the probes (DO too: the cascade holds it at its setpoint) and the pH loop's CO2 only: a DO cascade actuator's
# stage or a bolus's edge that no reference run shows at that age is normal and reads z 20-30 (`ENVELOPE_Z`),
# which the one level was set above
OWN_GOLDEN_Z = ("do_pct", "ph", "temp_c", "co2_sccm", "capacitance_pf_cm")
ONE_GOLDEN_Z = [j for j, name in enumerate(DETECTOR_SIGNALS) if name not in OWN_GOLDEN_Z]
# the golden z the farthest reference run reaches on a cascade signal, at most: half the fusion's calibrated
# golden level (66), so that a new run going as far as a few of the normal runs did raises nothing
ENVELOPE_Z = 30.0
ENVELOPE_BINS = 3  # and as far as they went within half an hour either side: when a stage comes varies by run
# a culture that starts slower than every reference run reaches each stage of the DO cascade hours later (5 h
# behind at day 1, where all of them sit at the agitation maximum, reads z -60): the stages' actuators are judged
# against the closest of the bins within this many minutes either side. Not DO itself, nor the respiration
# rates: a fault shows there (a DO limitation, a contamination), and the actuators' timing is what varies by run
STAGED = [DETECTOR_SIGNALS.index(name) for name in ("agitation_rpm", "air_sccm", "o2_sccm")]
TIMING_TOLERANCE_MIN = 360.0
# The DO cascade's first stage, agitation, leaves its maximum (a recipe setting) only once air is back at its
# minimum and O2 off (one controller output drives the three in turn: `sources.reactor`), so once the culture's
# oxygen demand has fallen to what agitation alone supplies: its decline. Where the runs hold agitation at its
# maximum (their median: demand beyond it) their spread there is the reading's noise, which says nothing of how
# early a normal culture's decline may start; its spread below there is the one they show where agitation is
# free, between its limits (how far apart their demands are). A DO limitation holds it at the maximum and reads
# the same. A smaller fall of demand (a missed feed) backs off air first, judged by air's own spread: air keeps it
CEILINGS = {"agitation_rpm": "agitation_max_rpm"}
PINNED_FRACTION = 0.02  # of the limit: the runs' readings there are at it (their noise is a fraction of this)


def build_reference(runs: int = 30, seed: int = 500, scenario: Scenario | None = None,
                    changes: Sequence[Change] = (), floor: np.ndarray | None = None,
                    floor_level: np.ndarray | None = None) -> GoldenReference:
    """The reference of `runs` normal runs of the twin under `scenario` (default: `normal`) with `changes`
    applied (`summarise_runs`)."""
    scenario = scenario or load_scenario("normal")
    fleet = Fleet(scenario, runs, seed=seed)
    return summarise_runs(simulate_with_changes(fleet, changes), floor, floor_level, ceilings(scenario, changes))


def ceilings(scenario: Scenario, changes: Sequence[Change] = ()) -> list[tuple[float, int, float]]:
    """The DO cascade stages' upper limits (`CEILINGS`) under `scenario` with `changes`: (hours since
    inoculation, signal index, limit from then on)."""
    return ([(0.0, DETECTOR_SIGNALS.index(name), float(getattr(scenario.process, control)))
             for name, control in CEILINGS.items()]
            + [(hours, DETECTOR_SIGNALS.index(name), value) for hours, control, value in changes
               for name, limit in CEILINGS.items() if control == limit])


def summarise_runs(ticks: pa.Table, floor: np.ndarray | None = None, floor_level: np.ndarray | None = None,
                   ceilings: Sequence[tuple[float, int, float]] = ()) -> GoldenReference:
    """Median and robust spread (1.4826 MAD) per culture-age bin over the normal runs in `ticks` (any number,
    of any length; culture age from each tick's `seq` at the run's own tick), and the drift limits on the same
    runs. The spread is floored per signal at half its median over the bins, and at `floor` [signals] where
    given; a signal with a `floor_level` (not NaN) has its floor scaled by how much its level here (its largest
    median) exceeds that one: a floor relative to the level (a pump's increments grow with the vessel). With a
    floor, a DO cascade stage's spread below where the runs hold it at its upper limit (`ceilings`: (hours since
    inoculation, signal index, limit) from then on) is at least its spread where it is free (`CEILINGS`)."""
    X_runs, ts_runs, bin_runs = [], [], []
    ticks = ticks.sort_by([("run_id", "ascending"), ("seq", "ascending")])
    run_codes = pc.dictionary_encode(ticks["run_id"]).combine_chunks().indices.to_numpy()
    bounds = [0, *(np.flatnonzero(np.diff(run_codes)) + 1), ticks.num_rows]
    for first, end in zip(bounds[:-1], bounds[1:], strict=True):
        part = ticks.slice(first, end - first)
        # the first increment of a run has no total before it: NaN, not taken against another run
        X_runs.append(features(part, np.array([np.nan, np.nan])))
        ts, seq = part["ts"].cast(pa.int64()).to_numpy(), part["seq"].to_numpy()
        tick_us = (ts[-1] - ts[0]) / (seq[-1] - seq[0]) if seq[-1] != seq[0] else 6e7
        ts_runs.append(ts)
        bin_runs.append(((seq * tick_us / 6e7) // BIN_MIN).astype(int))
    X, bins = np.concatenate(X_runs), np.concatenate(bin_runs)
    n_bins = int(bins.max()) + 1
    # every bin's rows side by side [bins, rows, signals], NaN-padded: one vectorised median for all bins
    order = np.argsort(bins, kind="stable")
    counts = np.bincount(bins, minlength=n_bins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    blocks = np.full((n_bins, int(counts.max()), X.shape[1]), np.nan)
    blocks[bins[order], np.arange(len(order)) - starts[bins[order]]] = X[order]
    median = _nanmedian_rows(blocks)
    if floor_level is not None:
        # a pump's increments are whole totaliser steps: where the runs pump steadily (a continuous feed), the
        # median sits up to half a step off their rate, a bias that twin_residual integrates for as long as the
        # pump runs (z -0.26 on seed 7's smallest continuous vessels: a fifth of its alarm level, and a 1.3 L
        # vessel's overfeed went unseen). Their mean is the rate. Where the pump stands on most ticks (a base
        # pump that doses now and then) or the mean is more than a step off the median (a bolus's edge, where
        # the runs disagree), the median stays
        mean = _nanmean_rows(blocks)
        steady = ~np.isnan(floor_level) & (median > 0) & (np.abs(mean - median) <= reading_steps())
        median = np.where(steady, mean, median)
    deviation = blocks - median[:, None, :]
    scale = _nanmedian_rows(np.abs(deviation)) * 1.4826
    scale_up = tolerance = None
    # a bin where all runs agree must not give infinite z; nor a signal that stays put in most bins (the O2 flow
    # of a recipe that rarely needs O2) have no spread at all: `floor`, the default recipe's
    least = np.nanmedian(scale, axis=0) * 0.5 + 1e-3
    if floor is not None and floor_level is not None:
        level = np.nanmax(np.abs(median), axis=0)
        floor = floor * np.where(np.isnan(floor_level), 1.0, np.maximum(1.0, level / floor_level))
        # a stage that some of the normal runs reach and the others not (the DO cascade's air in 10 of 30 runs,
        # a pH dip in 5) leaves the MAD at the majority's: the spread also covers the central 80 % of the runs
        scale = np.maximum(scale, (_nanquantile_rows(blocks, 0.9) - _nanquantile_rows(blocks, 0.1)) / 2.5631)
        # ... and a stage that only one or two runs reach (a culture that runs short of glucose before a late
        # feed start: the cascade backs off, respiration halves) reads no more than `ENVELOPE_Z` in the runs
        scale[:, CASCADE] = np.maximum(scale[:, CASCADE], _envelope(np.abs(deviation))[:, CASCADE] / ENVELOPE_Z)
        # a controller that pins one side of a signal's band (the CO2 sparge caps pH) leaves the runs spread to
        # the other side only: a side whose own spread is tighter has it, so a reading past the pinned side is
        # judged by how far the runs went there, not by how far they went the other way. The side they spread
        # to keeps the spread above, which the fusion's alarm levels were set with: its own (twice the above's
        # where one side holds still) would blunt the alarms there (a DO limitation below a DO the controller
        # holds at its setpoint: measured in docs/QUALITY.md)
        above, below = (_side_spread(np.where(deviation * sign >= 0, deviation * sign, np.nan)) for sign in (1, -1))
        scale_up = np.maximum(np.nan_to_num(np.minimum(scale, above)), np.maximum(least, floor))
        scale = _free_spread_at_limit(np.minimum(scale, below), median, ceilings)
        tolerance = np.where(np.isin(np.arange(X.shape[1]), STAGED), TIMING_TOLERANCE_MIN, 0.0)
    scale = np.maximum(np.nan_to_num(scale), least if floor is None else np.maximum(least, floor))
    ref = GoldenReference(np.nan_to_num(median), scale, scale_up=scale_up, timing_tolerance=tolerance)
    ref = replace(ref, drift_limit=_drift_limits(ref, X_runs, ts_runs, None if floor is None else bin_runs))
    return ref if floor is None else replace(ref, z_limit=_golden_z_limits(ref, X_runs, ts_runs))


def reading_steps() -> np.ndarray:
    """Per detector signal, one step of its reading (a totaliser's increments are whole steps of it)."""
    return np.array([RESOLUTION[TICK_SIGNALS.index(name.removesuffix("_per_tick"))] for name in DETECTOR_SIGNALS])


def _free_spread_at_limit(below: np.ndarray, median: np.ndarray,
                          ceilings: Sequence[tuple[float, int, float]]) -> np.ndarray:
    """The spread `below` [bins, signals], raised in the bins where a stage's `median` is at its upper limit
    (`ceilings`, as in `summarise_runs`; within `PINNED_FRACTION` of it: most runs there) to the median of its
    spread over the bins where its median is between that and its lowest median plus as much (none: unchanged)."""
    limit = np.full(below.shape, np.nan)
    for hours, j, value in sorted(ceilings):
        limit[int(hours * 60 // BIN_MIN):, j] = value
    near = PINNED_FRACTION * limit
    with np.errstate(invalid="ignore"):  # NaN: no limit
        pinned = median >= limit - near
        free = (median < limit - near) & (median > np.nanmin(median, axis=0) + near)
    out = below.copy()
    for j in np.flatnonzero(free.any(axis=0) & pinned.any(axis=0)):
        out[pinned[:, j], j] = np.maximum(below[pinned[:, j], j], np.median(below[free[:, j], j]))
    return out


def _side_spread(far: np.ndarray) -> np.ndarray:
    """The robust spread [bins, signals] of the distances `far` [bins, rows, signals] of the rows on one side of
    each bin's median (NaN: a row on the other side), as the symmetric one: that side's MAD, at least out to the
    tenth of the runs farthest on this side (q90 or q10), and for the cascade's signals the envelope."""
    spread = np.maximum(_nanmedian_rows(far) * 1.4826, _nanquantile_rows(far, 0.8) / 1.2816)
    spread[:, CASCADE] = np.maximum(spread[:, CASCADE], _envelope(far)[:, CASCADE] / ENVELOPE_Z)
    return spread


def _envelope(far: np.ndarray) -> np.ndarray:
    """Per bin and signal, the largest of `far` [bins, rows, signals] (a distance from the bin's median, NaN
    where none) within `ENVELOPE_BINS` bins either side (0 where none)."""
    nearest = np.nan_to_num(np.nanmax(far, axis=1, initial=0.0))
    padded = np.pad(nearest, ((ENVELOPE_BINS, ENVELOPE_BINS), (0, 0)))
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * ENVELOPE_BINS + 1, axis=0).max(axis=-1)


def _nanquantile_rows(blocks: np.ndarray, q: float) -> np.ndarray:
    """The `q` quantile (nearest rank) over axis 1 of [bins, rows, signals] ignoring NaN (NaN where none)."""
    ordered = np.sort(blocks, axis=1)  # NaN sorts last
    n = (~np.isnan(blocks)).sum(axis=1, keepdims=True)
    return np.take_along_axis(ordered, np.round(q * np.maximum(n - 1, 0)).astype(int), axis=1)[:, 0, :]


def _nanmean_rows(blocks: np.ndarray) -> np.ndarray:
    """The mean over axis 1 of [bins, rows, signals] ignoring NaN (NaN where a column has none)."""
    n = (~np.isnan(blocks)).sum(axis=1)
    return np.where(n > 0, np.nansum(blocks, axis=1) / np.maximum(n, 1), np.nan)


def _nanmedian_rows(blocks: np.ndarray) -> np.ndarray:
    """The median over axis 1 of [bins, rows, signals] ignoring NaN (NaN where a column has none): numpy's
    nanmedian does this one column at a time."""
    ordered = np.sort(blocks, axis=1)  # NaN sorts last
    n = (~np.isnan(blocks)).sum(axis=1, keepdims=True)
    lo = np.take_along_axis(ordered, np.maximum(n - 1, 0) // 2, axis=1)
    hi = np.take_along_axis(ordered, n // 2 - (n == 0), axis=1)
    return np.where(n > 0, (lo + hi) / 2, np.nan)[:, 0, :]


def _drift_limits(ref: GoldenReference, X_runs: list[np.ndarray], ts_runs: list[np.ndarray],
                  bin_runs: list[np.ndarray] | None = None) -> np.ndarray:
    """Per signal, the largest twin_residual residual any of the normal runs (features [ticks, signals] and
    event times each) reaches, floored at 1; for `CASCADE_SIGNALS`, the residual a new normal run passes with
    probability `RUN_FALSE_ALARM` over all of them (`tail_limit`). With the runs' age bins (`bin_runs`: a
    recipe's reference), the other signals' limits are per culture-age bin [bins, signals]: the largest residual
    any run reaches within `LIMIT_REACH_MIN` of that age (`_age_limits`), and at least the largest of the runs
    that are not outliers (`_usual_largest`): an outlier run's residual holds only near its age."""
    residuals = _run_contributions(TwinResidual(reference=replace(ref, drift_limit=np.ones(ref.median.shape[1]))),
                                   X_runs, ts_runs)
    maxima = np.array([r.max(axis=0) for r in residuals])
    limit = maxima.max(axis=0)
    limit[CASCADE] = tail_limit(maxima[:, CASCADE], RUN_FALSE_ALARM / len(CASCADE))
    if bin_runs is None:
        return np.maximum(limit, 1.0)
    by_age = np.maximum(_age_limits(residuals, bin_runs, ref.median.shape[0], int(LIMIT_REACH_MIN // ref.bin_min)),
                        _usual_largest(maxima))
    by_age[:, CASCADE] = limit[CASCADE]
    return np.maximum(by_age, 1.0)


def _usual_largest(maxima: np.ndarray) -> np.ndarray:
    """Per column of `maxima` [runs, signals], the largest value of the runs that are not outliers (within
    `OUTLIER_MADS` robust spreads of the runs' median)."""
    typical = np.median(maxima, axis=0)
    spread = 1.4826 * np.median(np.abs(maxima - typical), axis=0)
    return np.where(maxima <= typical + OUTLIER_MADS * spread, maxima, 0.0).max(axis=0)


def _age_limits(residuals: list[np.ndarray], bin_runs: list[np.ndarray], n_bins: int, reach: int) -> np.ndarray:
    """[n_bins, signals]: the largest of the runs' `residuals` ([ticks, signals] each, in age bins `bin_runs`)
    within `reach` bins of each bin."""
    largest = np.zeros((n_bins, residuals[0].shape[1]))
    for r, bins in zip(residuals, bin_runs, strict=True):
        np.maximum.at(largest, np.clip(bins, 0, n_bins - 1), r)
    reach = min(reach, n_bins)  # farther reaches every bin already
    padded = np.pad(largest, ((reach, reach), (0, 0)))
    return np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1, axis=0).max(axis=-1)


def _golden_z_limits(ref: GoldenReference, X_runs: list[np.ndarray], ts_runs: list[np.ndarray]) -> np.ndarray:
    """Per signal, what the golden detector divides its z by: a signal alarms at `GOLDEN_MARGIN` times the largest
    z the normal runs reach on it, between `GOLDEN_Z_MIN` and the fusion's golden level (as a share of that level)."""
    level = float(calibrated_members().get("golden", 0.0))
    if level <= 0:
        return np.ones(ref.median.shape[1])
    largest = np.max([r.max(axis=0) for r in _run_contributions(Golden(reference=ref), X_runs, ts_runs)], axis=0)
    limit = np.clip(GOLDEN_MARGIN * largest, GOLDEN_Z_MIN, level)
    limit[ONE_GOLDEN_Z] = level
    return limit / level


def _run_contributions(detector: Golden, X_runs: list[np.ndarray], ts_runs: list[np.ndarray]) -> list[np.ndarray]:
    """Each run's |per-signal contribution| [ticks, signals] under `detector` (golden or twin_residual), scored
    from the run's start."""
    return [np.abs(detector.score_learn_detail(detector.init_state(DETECTOR_SIGNALS), ts, run)[2])
            for run, ts in zip(X_runs, ts_runs, strict=True)]


def tail_limit(maxima: np.ndarray, exceed: float) -> np.ndarray:
    """Per column of `maxima` [runs, signals] (each run's largest value), the value a new run's maximum exceeds
    with probability `exceed`: a Gumbel fit (moments) to the runs' maxima, extrapolated; never below the
    largest seen. The largest of n runs alone is exceeded by a new run with probability 1/(n+1) per signal
    (1 in 31 for 30 runs, so some of a dozen signals on most runs): the tail, not the worst run, sets it."""
    if len(maxima) < 2:  # no spread to fit on one run (a reference learned from one batch): its own largest
        return maxima.max(axis=0)
    beta = maxima.std(axis=0, ddof=1) * np.sqrt(6) / np.pi
    mode = maxima.mean(axis=0) - np.euler_gamma * beta
    return np.maximum(mode - beta * np.log(-np.log1p(-exceed)), maxima.max(axis=0))


def save_reference(ref: GoldenReference, path: Path = REFERENCE_PATH) -> None:
    np.savez_compressed(path, median=ref.median, scale=ref.scale, bin_min=ref.bin_min,
                        **{name: np.zeros(0) if a is None else a
                           for name, a in (("drift_limit", ref.drift_limit), ("scale_up", ref.scale_up),
                                           ("timing_tolerance", ref.timing_tolerance), ("z_limit", ref.z_limit))})


if __name__ == "__main__":
    built = build_reference()
    save_reference(built)
    print(f"golden batch: {built.median.shape[0]} bins x {built.median.shape[1]} signals -> {REFERENCE_PATH}")
    print("drift limits:", dict(zip(DETECTOR_SIGNALS, np.round(built.drift_limit, 2), strict=True)))
    assert len(DETECTOR_SIGNALS) == built.median.shape[1]
