"""Event-time reordering of one reactor's ticks, with a watermark that comes from event time only.

The watermark is the largest event time seen minus the allowed lateness. A tick whose time is at or below the
watermark in force when it arrives is *late* (side output, never dropped silently); a tick seen before (same
run and seq, e.g. redelivered after a crash) is a *duplicate*; every other tick is held until the watermark
passes it and then released in event-time order. Lateness is judged row by row, so what is late, and the
order of what is released, do not depend on how the ticks were batched or how fast they came.

A producer that knows no more ticks are coming (end of a run, end of a replay) advances the watermark
explicitly with `advance_to` (an event time, not a clock reading).

Both only ever move forward, so one far-future time (a clock gone wrong, a crafted message) would make every
later tick late for good. `beyond_horizon` finds such times, for the caller to refuse before they get here.

The common case (one run, in order, nothing seen before) takes a fast path with no sort and no set
operations; out-of-order and repeated ticks take the general path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.events import distinct

NEVER = np.iinfo(np.int64).min // 2


@dataclass
class Released:
    ordered: pa.Table | None
    late: pa.Table | None
    duplicates: int
    watermark_us: int


@dataclass
class SeqGaps:
    """One run's seqs never seen below its highest released one, as sorted half-open ranges `[start, end)`. A
    message lost upstream (a broker that discarded it, a producer that skipped it) is one range: as a set of
    ints, the seqs of one lost full-rate message were held one by one for the life of the flow.

    >>> gaps = SeqGaps()
    >>> gaps.add(np.array([3, 4, 5, 9]))
    >>> gaps.contains(np.array([2, 3, 5, 6, 9])).tolist(), len(gaps)
    ([False, True, True, False, True], 4)
    >>> gaps.remove(np.array([4, 9])); gaps.starts.tolist(), gaps.ends.tolist()
    ([3, 5], [4, 6])
    """

    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def of(cls, seqs: set[int]) -> SeqGaps:
        gaps = cls()
        gaps.add(np.array(sorted(seqs), dtype=np.int64))
        return gaps

    def add(self, missing: np.ndarray) -> None:
        """Record sorted distinct seqs, all above those recorded so far."""
        if not missing.size:
            return
        breaks = np.flatnonzero(np.diff(missing) != 1) + 1
        self.starts = np.concatenate([self.starts, missing[np.r_[0, breaks]]])
        self.ends = np.concatenate([self.ends, missing[np.r_[breaks - 1, missing.size - 1]] + 1])

    def contains(self, seq: np.ndarray) -> np.ndarray:
        i = np.searchsorted(self.starts, seq, side="right") - 1
        return (i >= 0) & (seq < self.ends[np.maximum(i, 0)]) if self.starts.size else np.zeros(seq.shape, bool)

    def remove(self, seq: np.ndarray) -> None:
        """Close the gaps these seqs fill: each splits its range in two (empty pieces dropped). The pieces stay
        disjoint and in order, so sorting their starts and ends separately pairs them up again."""
        inside = np.unique(seq[self.contains(seq)])
        if not inside.size:
            return
        starts, ends = np.sort(np.concatenate([self.starts, inside + 1])), np.sort(np.concatenate([self.ends, inside]))
        keep = starts < ends
        self.starts, self.ends = starts[keep], ends[keep]

    def __len__(self) -> int:
        return int((self.ends - self.starts).sum())


@dataclass
class ReorderBuffer:
    lateness_us: int
    max_ts_us: int = NEVER
    floor_us: int = NEVER  # explicit watermark from `advance_to`
    pending: pa.Table | None = None  # sorted by (ts, seq)
    pending_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    last_seq: dict[str, int] = field(default_factory=dict)  # per run: highest seq released
    gaps: dict[str, SeqGaps] = field(default_factory=dict)  # per run: seqs below it never seen (yet)
    # per run: at least the highest pending seq (exact as appended; a partial release leaves it high, which only
    # sends a batch down the general path). Filtering the pending rows for it was a large part of a live
    # message's reordering. None (a snapshot from before it existed): worked out from the pending rows.
    pending_seq_max: dict[str, int] | None = None

    def __setstate__(self, state: dict) -> None:
        # a snapshot from before `SeqGaps` holds each run's gaps as a set of seqs
        state["gaps"] = {run: gaps if isinstance(gaps, SeqGaps) else SeqGaps.of(gaps)
                         for run, gaps in state.get("gaps", {}).items()}
        self.__dict__.update(state)

    @property
    def watermark_us(self) -> int:
        return max(self.max_ts_us - self.lateness_us, self.floor_us)

    @property
    def latest_us(self) -> int | None:
        """The latest event time this buffer has taken in (a tick or an explicit watermark); None before any."""
        latest = max(self.max_ts_us, self.floor_us)
        return None if latest == NEVER else latest

    def push(self, ticks: pa.Table) -> Released:
        n = ticks.num_rows
        if n == 0:
            return Released(None, None, 0, self.watermark_us)
        ts = ticks["ts"].cast(pa.int64()).to_numpy()
        seq = ticks["seq"].to_numpy()
        run_ids = distinct(ticks["run_id"])
        in_order = bool(np.all(np.diff(ts) > 0)) if n > 1 else True
        fresh = len(run_ids) == 1 and seq.min() > max(self.last_seq.get(run_ids[0], -1), self._pending_max_seq(
            run_ids[0]))
        if in_order and fresh and ts[0] > self.watermark_us:
            # fast path: nothing late (ts rise above the watermark), nothing seen before
            self.max_ts_us = max(self.max_ts_us, int(ts[-1]))
            self._append_pending(ticks, ts, sorted_after=self.pending_ts.size == 0 or ts[0] > self.pending_ts[-1],
                                 seq_max={run_ids[0]: int(seq.max())})
            return Released(self._release(), None, 0, self.watermark_us)
        return self._push_general(ticks, ts, seq)

    def _push_general(self, ticks: pa.Table, ts: np.ndarray, seq: np.ndarray) -> Released:
        runs = ticks["run_id"].to_numpy(zero_copy_only=False)
        # watermark in force before each row: running max of everything seen before it
        prior = np.maximum.accumulate(np.concatenate(([self.max_ts_us], ts)))[:-1] - self.lateness_us
        prior = np.maximum(prior, self.floor_us)
        duplicate = _repeats(runs, seq)
        for run in set(runs.tolist()):
            mask = runs == run
            if run in self.last_seq:
                below = mask & (seq <= self.last_seq[run])
                gaps = self.gaps.get(run)
                # below the high-water mark: a gap being filled (late) or a tick released before (duplicate)
                duplicate[below] |= ~gaps.contains(seq[below]) if gaps else True
            if self.pending is not None:
                p_runs = self.pending["run_id"].to_numpy(zero_copy_only=False)
                duplicate[mask] |= np.isin(seq[mask], self.pending["seq"].to_numpy()[p_runs == run])
        late = ~duplicate & (ts <= prior)
        keep = ~duplicate & ~late
        self.max_ts_us = max(self.max_ts_us, int(ts.max()))
        late_table = ticks.filter(pa.array(late)) if late.any() else None
        for run in set(self.gaps) & set(runs[late].tolist()):  # a late tick fills its gap; a second copy is a duplicate
            self.gaps[run].remove(seq[late & (runs == run)])
            if not len(self.gaps[run]):
                del self.gaps[run]
        if keep.any():
            on_time = ticks if keep.all() else ticks.filter(pa.array(keep))
            self._append_pending(on_time, ts[keep], sorted_after=False)
        return Released(self._release(), late_table, int(duplicate.sum()), self.watermark_us)

    def advance_to(self, ts_us: int) -> Released:
        """Producer's word that no tick at or before `ts_us` is still coming."""
        self.floor_us = max(self.floor_us, ts_us)
        return Released(self._release(), None, 0, self.watermark_us)

    # ---- internals ----------------------------------------------------------------------------------------
    def _pending_max_seq(self, run: str) -> int:
        return self._pending_seq_index().get(run, -1)

    def _pending_seq_index(self) -> dict[str, int]:
        if self.pending is None:
            return {}
        if self.pending_seq_max is None:
            self.pending_seq_max = _seq_max_by_run(self.pending)
        return self.pending_seq_max

    def _append_pending(self, ticks: pa.Table, ts: np.ndarray, sorted_after: bool,
                        seq_max: dict[str, int] | None = None) -> None:
        """Add rows to the pending ones; `seq_max`: their highest seq per run, if the caller knows it."""
        known = self._pending_seq_index()  # before the new rows join
        new = _seq_max_by_run(ticks) if seq_max is None else seq_max
        self.pending_seq_max = {**known, **{r: max(known.get(r, -1), s) for r, s in new.items()}}
        if self.pending is None:
            table, all_ts = ticks, ts
        else:
            table = pa.concat_tables([self.pending, ticks])
            all_ts = np.concatenate([self.pending_ts, ts])
        if not sorted_after or not np.all(np.diff(ts) > 0):
            order = np.lexsort((table["seq"].to_numpy(), all_ts))
            table, all_ts = table.take(pa.array(order)), all_ts[order]
        self.pending, self.pending_ts = table, all_ts

    def _release(self) -> pa.Table | None:
        if self.pending is None:
            return None
        k = int(np.searchsorted(self.pending_ts, self.watermark_us, side="right"))
        if k == 0:
            self._compact_pending()
            return None
        out = self.pending.slice(0, k)
        if k == self.pending.num_rows:
            self.pending, self.pending_ts, self.pending_seq_max = None, np.zeros(0, dtype=np.int64), {}
        else:
            self.pending, self.pending_ts = self.pending.slice(k), self.pending_ts[k:]
            self._compact_pending()
        self._note_released(out)
        return out

    def _compact_pending(self) -> None:
        """Copy the pending rows out of the messages they were sliced from once those hold > 64 kB more: a slice
        keeps its whole message alive. At full rate every reactor kept its last message or two, whole, for the
        few rows of its lateness window, and an epoch's snapshot pickled them whole (docs/PERFORMANCE.md). A
        live message's rows (a few kB) are kept as they are: copying them would cost more than it saves."""
        if self.pending.get_total_buffer_size() - self.pending.nbytes > 1 << 16:
            self.pending = self.pending.take(pa.array(np.arange(self.pending.num_rows)))

    def _note_released(self, out: pa.Table) -> None:
        runs = distinct(out["run_id"])
        for run in runs:
            seqs = (out if len(runs) == 1 else out.filter(pc.equal(out["run_id"], run)))["seq"].to_numpy()
            high = self.last_seq.get(run)
            top = int(seqs.max())
            if high is not None and top <= high:
                continue
            start = int(seqs.min()) if high is None else high + 1
            contiguous = seqs.size == top - start + 1 and seqs[0] == start and np.all(np.diff(seqs) == 1)
            if not contiguous:
                missing = np.setdiff1d(np.arange(start, top + 1), seqs)
                if missing.size:
                    self.gaps.setdefault(run, SeqGaps()).add(missing)
            self.last_seq[run] = top


def beyond_horizon(ts_us: np.ndarray, reference_us: int, horizon_us: int) -> np.ndarray | None:
    """Which of one message's event times are too far ahead to believe: those not reached from `reference_us`
    (the unit's latest event time) by steps of at most `horizon_us` through the message's own times, in time
    order. So a message spanning days in small steps (a replay's or a benchmark's thousands of ticks) passes,
    while a jump past the horizon, and every time beyond it, does not. Only the future is bounded: a time in
    the past moves nothing forward (a tick there is merely late). None: every time passes (the usual case,
    decided by one max).

    >>> hour = 3_600_000_000
    >>> beyond_horizon(np.array([1, 2, 3]) * hour, 0, 48 * hour) is None
    True
    >>> beyond_horizon(np.array([10, 40, 70, 100]) * hour, 0, 48 * hour) is None
    True
    >>> beyond_horizon(np.array([10, 10_000, 40, 10_001]) * hour, 0, 48 * hour).tolist()
    [False, True, False, True]
    """
    if not ts_us.size or int(ts_us.max()) <= reference_us + horizon_us:
        return None
    ordered = np.sort(ts_us)
    jumps = np.diff(ordered, prepend=reference_us) > horizon_us
    jumps[1:] = ordered[1:] - np.maximum(ordered[:-1], reference_us) > horizon_us
    if not jumps.any():
        return None
    return ts_us >= ordered[int(np.argmax(jumps))]


def _seq_max_by_run(ticks: pa.Table) -> dict[str, int]:
    agg = ticks.group_by("run_id").aggregate([("seq", "max")])
    return dict(zip(agg["run_id"].to_pylist(), agg["seq_max"].to_pylist(), strict=True))


def _repeats(runs: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """True for the second and later occurrence of a (run, seq) within one batch."""
    out = np.zeros(len(seq), dtype=bool)
    if len(seq) < 2:
        return out
    keys = seq if (runs == runs[0]).all() else np.char.add(runs.astype(str), np.char.add("#", seq.astype(str)))
    _, first = np.unique(keys, return_index=True)
    out[:] = True
    out[first] = False
    return out
