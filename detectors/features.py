"""What the detectors see, computed one way for the flow, the offline builds and the agents: the feature matrix
of a batch of ticks, and the golden-batch residual kernel shared by the `golden` and `twin_residual` detectors.

A leaf: it imports no other detector module but `detectors.base`, so every detector, the reactor monitor and
the offline builds can import it at the top.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numba import njit

from detectors.base import DETECTOR_SIGNALS

FEED = DETECTOR_SIGNALS.index("feed_ml_per_tick")
CAPACITANCE = DETECTOR_SIGNALS.index("capacitance_pf_cm")
MINUTE_US = 6e7


def features(ticks: pa.Table, last_totals: np.ndarray) -> np.ndarray:
    """Detector inputs [n, 12]: the level signals and per-tick increments of the base and feed totalisers.
    `last_totals` (base, feed) carries the totals across batches and is updated in place."""
    n = ticks.num_rows
    X = np.empty((n, len(DETECTOR_SIGNALS)))
    if n == 0:
        return X
    for j, name in enumerate(DETECTOR_SIGNALS):
        if name.endswith("_per_tick"):
            total = ticks[name.removesuffix("_per_tick")].to_numpy(zero_copy_only=False)
            k = 0 if name.startswith("base") else 1
            X[0, j] = total[0] - last_totals[k]
            np.subtract(total[1:], total[:-1], out=X[1:, j])
            last_totals[k] = total[-1]
        else:
            at = 0
            for chunk in ticks[name].chunks:  # chunk by chunk: concatenating first would copy them twice
                X[at:at + len(chunk), j] = chunk.to_numpy(zero_copy_only=False)
                at += len(chunk)
    return X


def culture_minutes(start_us: int | None, ts: np.ndarray | int) -> np.ndarray | float:
    """Minutes since the run's start (its first tick) for event times `ts` in microseconds."""
    return (ts - (start_us or 0)) / MINUTE_US


def minute_steps(minutes: np.ndarray, last_min: float) -> np.ndarray:
    """Each tick's step in minutes from the tick before it, the first from `last_min`; one minute after a
    negative time (none before the run's first tick)."""
    before = np.empty_like(minutes)
    before[:1] = last_min
    before[1:] = minutes[:-1]
    return np.where(before >= 0, minutes - before, 1.0)


@njit(cache=True, nogil=True)
def reading_z(x: float, lo: float, hi: float, below: float, above: float) -> float:
    """The robust z of a reading `x` against a band of golden medians [`lo`, `hi`] (one median, or the medians
    within a timing tolerance: `GoldenReference.band`): 0 inside it, else how far past it in the spread of the bin
    whose median bounds it on that side (`below`, `above`)."""
    if x > hi:
        return (x - hi) / above
    if x < lo:
        return (x - lo) / below
    return 0.0


@njit(cache=True, nogil=True)
def golden_z(X: np.ndarray, bins: np.ndarray, lo: np.ndarray, hi: np.ndarray, below: np.ndarray, above: np.ndarray,
             out: np.ndarray) -> None:
    """`reading_z` of every reading of `X` [n, signals] in its row's age bin `bins` [n] (NaN where missing)."""
    for i in range(X.shape[0]):
        b = bins[i]
        for j in range(X.shape[1]):
            x = X[i, j]
            out[i, j] = np.nan if np.isnan(x) else reading_z(x, lo[b, j], hi[b, j], below[b, j], above[b, j])


@njit(cache=True, nogil=True)
def golden_residual(X: np.ndarray, minutes: np.ndarray, dt: np.ndarray, halflife: float, bin_min: float,
                    lo: np.ndarray, hi: np.ndarray, below: np.ndarray, above: np.ndarray, clip: float,
                    limit: np.ndarray, acc: np.ndarray, out: np.ndarray, contrib: np.ndarray) -> None:
    """Each signal's robust z against the golden batch's band at the same culture age (`minutes`, binned by
    `bin_min`: `reading_z` against `GoldenReference.band`), clipped at +-`clip`, smoothed by an EWMA in `acc`
    whose weight per tick follows from the tick's step `dt` and the `halflife` (in the same unit as `dt`).
    `contrib[i, j]` is acc / limit per signal (signed: which side of the band; `limit` [bins, signals], a single
    row for every bin), `out[i]` the largest magnitude. A missing reading counts as on the golden trajectory."""
    n, m = X.shape
    last_bin = lo.shape[0] - 1
    last_limit = limit.shape[0] - 1
    for i in range(n):
        a = 1.0 - 0.5 ** (max(dt[i], 0.0) / halflife)
        b = min(max(int(minutes[i] // bin_min), 0), last_bin)
        best = 0.0
        for j in range(m):
            x = X[i, j]
            z = 0.0 if np.isnan(x) else reading_z(x, lo[b, j], hi[b, j], below[b, j], above[b, j])
            z = min(max(z, -clip), clip)
            acc[j] += a * (z - acc[j])
            contrib[i, j] = acc[j] / limit[min(b, last_limit), j]
            r = abs(contrib[i, j])
            if r > best:
                best = r
        out[i] = best
