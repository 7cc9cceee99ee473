"""INR adverse events as ground truth: episodes read off the TRUE INR trajectory, whatever drove it there.

- `over_anticoagulation`: each episode of true INR >= 4 (start: the first tick at or above 4; end: the first tick
  back below 4 - `EPISODE_MARGIN_INR`, or the run's end).
- `subtherapeutic`: each episode of true INR < 2 (ending back at 2 + `EPISODE_MARGIN_INR`) lasting >= 72 h, counted
  only once the initiation period is
  over (`initiation_end_h`): while the INR is still climbing to range a low INR is expected, not an event. The
  initiation period lasts at least 7 days of warfarin; past day 7 it lasts until the true INR first reaches 2.25 (in
  range clear of the limit's daily ripple, `EPISODE_MARGIN_INR`; the monitor asks the same of a reading),
  at most to day 14 (a fixed 5 mg start takes ~10 days to reach range in a typical patient: not an event; a
  patient still below 2 on day 14 is under-dosed). An episode running at the end of initiation starts there.

The margin is hysteresis: the true INR ripples with each daily dose and fluctuates slowly (`inr_variability`), so
it can graze a limit for days, 1.9 at night and 2.1 by day; that is one stretch at the limit, not several short
episodes (`hysteresis`).

The scan is incremental: `scan_episodes` takes one chunk of ticks and the episodes left open by the previous
chunk, so a trajectory cut into chunks gives the same episodes as the whole of it.

>>> t = np.arange(6) * 24.0
>>> inr = np.array([[2.5, 4.2, 4.8, 3.5, 4.1, 4.3]])
>>> closed, still = scan_episodes(inr >= OVER_INR, inr, t, OpenEpisodes.none(1), np.maximum)
>>> [(int(k), float(a), float(b), float(x)) for k, a, b, x in closed], still.start_h.tolist(), still.extreme.tolist()
([(0, 24.0, 72.0, 4.8)], [96.0], [4.3])
>>> first, mid = scan_episodes(inr[:, :2] >= OVER_INR, inr[:, :2], t[:2], OpenEpisodes.none(1), np.maximum)
>>> second, _ = scan_episodes(inr[:, 2:] >= OVER_INR, inr[:, 2:], t[2:], mid, np.maximum)
>>> [(int(k), float(a), float(b), float(x)) for k, a, b, x in first + second]
[(0, 24.0, 72.0, 4.8)]
>>> first, mid = scan_episodes(inr[:, :3] >= OVER_INR, inr[:, :3], t[:3], OpenEpisodes.none(1), np.maximum)
>>> [(int(k), float(a), float(b), float(x)) for k, a, b, x in scan_episodes(inr[:, 3:] >= OVER_INR, inr[:, 3:],
...                                                                        t[3:], mid, np.maximum)[0]]
[(0, 24.0, 72.0, 4.8)]
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

OVER_INR = 4.0  # over_anticoagulation: true INR at or above this
SUB_INR = 2.0  # subtherapeutic: true INR below this ...
SUB_MIN_H = 72.0  # ... for at least this long
# an episode ends this far back inside the range: more than the true INR's ripple over a day of once-daily doses
# (peak to trough ~0.2 at INR 2 in the model) plus the slow fluctuation's drift within that day
EPISODE_MARGIN_INR = 0.25
INITIATION_MIN_H, INITIATION_MAX_H = 7 * 24.0, 14 * 24.0  # after the first warfarin dose (`initiation_end_h`)
CAUSE_LAG_H = 7 * 24.0  # an injected cause is still acting on the INR this long after its window ends
# the injected causes that can drive each INR event (direction matters: missed doses do not raise the INR)
INR_CAUSES: dict[str, tuple[str, ...]] = {
    "over_anticoagulation": ("over_anticoagulation", "drug_interaction"),
    "subtherapeutic": ("subtherapeutic", "nonadherence"),
}


@dataclass
class OpenEpisodes:
    """Per patient: the start (hours) of the episode still open, NaN if none, and its extreme INR so far."""

    start_h: np.ndarray
    extreme: np.ndarray

    @classmethod
    def none(cls, n: int) -> OpenEpisodes:
        return cls(np.full(n, np.nan), np.full(n, np.nan))


def scan_episodes(cond: np.ndarray, inr: np.ndarray, t_h: np.ndarray, open_: OpenEpisodes, extreme=np.maximum,
                  ) -> tuple[list[tuple[int, float, float, float]], OpenEpisodes]:
    """Episodes where `cond` (n, nt) holds, over one chunk at times `t_h` (nt,). Returns the episodes that closed
    in it, (patient, start_h, end_h, extreme INR), in patient then time order, and those still open. `extreme`:
    np.maximum (peak) or np.minimum (nadir)."""
    cond = np.asarray(cond, bool)
    start_h, ext = open_.start_h.copy(), open_.extreme.copy()
    size = cond.shape[0] * ((cond.shape[1] + 1) // 2 + 1)  # at most one closing every other tick
    rows, starts, ends, peaks = np.empty(size, np.int64), np.empty(size), np.empty(size), np.empty(size)
    found = _scan(cond, np.ascontiguousarray(inr, float), np.asarray(t_h, float), start_h, ext,
                  extreme is np.maximum, rows, starts, ends, peaks)
    closed = list(zip(rows[:found].tolist(), starts[:found].tolist(), ends[:found].tolist(), peaks[:found].tolist(),
                      strict=True))
    return closed, OpenEpisodes(start_h, ext)


@numba.njit(inline="always")
def _extreme(a: float, b: float, peak: bool) -> float:
    """np.maximum / np.minimum of two floats (NaN if either is)."""
    if a != a or b != b:
        return np.nan
    return max(a, b) if peak else min(a, b)


@numba.njit(cache=True)
def _scan(cond: np.ndarray, inr: np.ndarray, t_h: np.ndarray, start_h: np.ndarray, ext: np.ndarray, peak: bool,
          rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, peaks: np.ndarray) -> int:
    """`scan_episodes` tick by tick: `start_h`, `ext` updated in place; the closed episodes written to `rows`,
    `starts`, `ends`, `peaks`; returns how many."""
    found = 0
    for k in range(cond.shape[0]):
        prev = start_h[k] == start_h[k]  # open from the last chunk
        seen, part = 0, np.nan  # the extreme of the episode's ticks in this chunk
        for j in range(cond.shape[1]):
            c = cond[k, j]
            if c and not prev:
                start_h[k], ext[k], seen = t_h[j], np.nan, 0
            elif prev and not c:
                # an episode carried over from the last chunk may close on this chunk's first tick: nothing to add
                value = part if seen else np.nan
                rows[found], starts[found], ends[found] = k, start_h[k], t_h[j]
                peaks[found] = value if ext[k] != ext[k] else ext[k] if value != value else _extreme(ext[k], value,
                                                                                                    peak)
                found += 1
                start_h[k], ext[k], seen = np.nan, np.nan, 0
            if c:
                part = inr[k, j] if seen == 0 else _extreme(part, inr[k, j], peak)
                seen += 1
            prev = c
        if prev and seen:  # still open at the chunk's end: carry the extreme on
            ext[k] = part if ext[k] != ext[k] else _extreme(ext[k], part, peak)
    return found


def hysteresis(enter: np.ndarray, leave: np.ndarray, was_on: np.ndarray) -> np.ndarray:
    """(n, nt) bool: on from a tick where `enter` holds until one where `leave` holds (both (n, nt), never both
    at once), starting from `was_on` (n,) (the state at the end of the previous chunk).

    >>> inr = np.array([[2.1, 1.98, 2.03, 1.97, 2.05, 2.12, 1.9]])
    >>> hysteresis(inr < 2.0, inr >= 2.1, np.array([False])).astype(int).tolist()
    [[0, 1, 1, 1, 1, 0, 1]]
    """
    enter, leave = np.asarray(enter, bool), np.asarray(leave, bool)
    on = np.empty(enter.shape, bool)
    _hysteresis(enter, leave, np.asarray(was_on, bool), on)
    return on


@numba.njit(cache=True)
def _hysteresis(enter: np.ndarray, leave: np.ndarray, was_on: np.ndarray, on: np.ndarray) -> None:
    """Tick by tick: a loop, where numpy needed an accumulate, a gather and two selects over (n, nt)."""
    for k in range(enter.shape[0]):
        state = was_on[k]
        for j in range(enter.shape[1]):
            if enter[k, j]:
                state = True
            elif leave[k, j]:
                state = False
            on[k, j] = state


def initiation_end_h(first_dose_h: float, reached_h: np.ndarray) -> np.ndarray:
    """Per patient, hours since the run began when the initiation period ends: the first dose + 7 days, or later
    the time the true INR first reached 2 (`reached_h`, NaN: not yet), at most the first dose + 14 days.

    >>> initiation_end_h(18.0, np.array([90.0, 250.0, np.nan])).tolist()
    [186.0, 250.0, 354.0]
    """
    reached = np.where(np.isnan(reached_h), np.inf, reached_h)
    return np.maximum(first_dose_h + INITIATION_MIN_H, np.minimum(reached, first_dose_h + INITIATION_MAX_H))


def first_reached_h(reached_h: np.ndarray, cond: np.ndarray, t_h: np.ndarray) -> np.ndarray:
    """`reached_h` updated with the first tick of this chunk where `cond` (n, nt) holds, for those not there yet.

    >>> first_reached_h(np.array([5.0, np.nan, np.nan]), np.array([[1, 1], [0, 1], [0, 0]], bool),
    ...                 np.array([10.0, 11.0])).tolist()
    [5.0, 11.0, nan]
    """
    any_ = cond.any(axis=1)
    first = np.where(any_, np.asarray(t_h)[np.argmax(cond, axis=1)], np.nan)
    return np.where(np.isnan(reached_h), first, reached_h)


def cause_of(event: str, start_h: float, end_h: float, windows: list[tuple[str, float, float]]) -> str | None:
    """The injected cause (from `windows`: (name, onset_h, end_h) of the patient's planned events; end inf for a
    lasting one) acting on an INR episode: the first of `INR_CAUSES[event]`, in that order, whose window plus
    `CAUSE_LAG_H` overlaps the episode. None: the INR got there by itself (dose, genotype, co-medication).

    >>> cause_of("subtherapeutic", 400.0, 500.0, [("nonadherence", 300.0, 350.0)])
    'nonadherence'
    >>> cause_of("over_anticoagulation", 400.0, 500.0, [("nonadherence", 300.0, 350.0)]) is None
    True
    """
    for name in INR_CAUSES[event]:
        for which, onset, end in windows:
            if which == name and onset < end_h and start_h < end + CAUSE_LAG_H:
                return name
    return None
