"""A recipe's reference band as people read it (the dashboard's batch-evolution chart): per signal and culture-age
bin, the golden trajectory and the limits the live detectors alarm at, from the recipe's golden reference
(`detectors.recipe.reference_for`).

- the golden trajectory: the normal runs' median;
- the alarm limits: median ± the golden detector's alarm z × the robust spread on that side of the median (a
  reading held beyond them for a few ticks alarms);
- the sustained limits: median ± the twin residual's alarm ratio × the signal's drift limit × the spread on that
  side (a deviation held beyond them for about a day alarms).

Both levels are the live fusion's calibrated member thresholds (`detectors/calibration.json`). Only the signals
the detectors compare as the page draws them have a band: the detectors see the feed and base totals as per-tick
increments, and the volume not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.events import TICK_SIGNALS
from detectors.base import DETECTOR_SIGNALS
from detectors.fusion import calibrated_members
from detectors.recipe import reference_for, reference_source
from sources.recipe import Recipe

BANDED = tuple(s for s in DETECTOR_SIGNALS if s in TICK_SIGNALS)  # compared with the reference as drawn
NOT_COMPARED = {
    "base_ml": "the detectors see its per-tick increment (a dose), not the cumulative total the page draws",
    "feed_ml": "the detectors see its per-tick increment (a feed), not the cumulative total the page draws",
    "volume_l": "not a detector input",
}
BAND_ROWS = ("median", "lower", "upper", "sustained_lower", "sustained_upper")
MAX_KEPT = 32  # recipes whose bands are kept in memory (about 1 MB each)


@dataclass(frozen=True)
class ReferenceBand:
    recipe_hash: str
    source: str  # where the reference comes from: "default" | "twin" | "learned" (`reference_source`)
    bin_min: float  # culture-age bin width
    golden_z: float  # the golden detector's alarm level in robust z (0: not a live fusion member, no limit)
    drift_ratio: float  # the twin residual's alarm level, a multiple of each signal's drift limit
    bands: dict[str, np.ndarray]  # banded signal -> [len(BAND_ROWS), bins]


def alarm_levels() -> tuple[float, float]:
    """The golden detector's alarm z and the twin residual's alarm ratio, as the live fusion calibrates them;
    0 for one that is not a member (it raises no live alarm, so it sets no limit)."""
    members = calibrated_members()
    return float(members.get("golden", 0.0)), float(members.get("twin_residual", 0.0))


_KEPT: dict[tuple[str, float, float], ReferenceBand] = {}


def reference_band(recipe: Recipe) -> ReferenceBand:
    """`recipe`'s band; a recipe whose reference is not cached yet is simulated now (seconds)."""
    golden_z, drift_ratio = alarm_levels()
    key = (recipe.hash, golden_z, drift_ratio)
    if key in _KEPT:
        return _KEPT[key]
    ref = reference_for(recipe)
    # per culture-age bin (a recipe's limits are per age; the default's one per signal)
    drift = np.broadcast_to(np.atleast_2d(ref.drift_limit if ref.drift_limit is not None
                                          else np.zeros(len(DETECTOR_SIGNALS))), ref.median.shape)
    bands = {}
    for name in BANDED:
        j = DETECTOR_SIGNALS.index(name)
        median, below, above = ref.median[:, j], ref.scale[:, j], ref.upper[:, j]
        # a recipe's quiet probes alarm at a golden level of their own (`GoldenReference.z_limit`)
        wide = golden_z * (1.0 if ref.z_limit is None else float(ref.z_limit[j]))
        narrow = drift_ratio * drift[:, j]
        bands[name] = np.stack([median, median - wide * below, median + wide * above, median - narrow * below,
                                median + narrow * above])
    if len(_KEPT) >= MAX_KEPT:
        _KEPT.clear()
    _KEPT[key] = ReferenceBand(recipe.hash, reference_source(recipe), ref.bin_min, golden_z, drift_ratio, bands)
    return _KEPT[key]
