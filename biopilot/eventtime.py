"""Event-time reordering of one reactor's ticks, with a watermark that comes from event time only.

The watermark is the largest event time seen minus the allowed lateness. A tick whose time is at or below the
watermark in force when it arrives is *late* (side output, never dropped silently); a tick seen before (same
run and seq, e.g. redelivered after a crash) is a *duplicate*; every other tick is held until the watermark
passes it and then released in event-time order. Lateness is judged row by row, so what is late, and the
order of what is released, do not depend on how the ticks were batched or how fast they came.

A producer that knows no more ticks are coming (end of a run, end of a replay) advances the watermark
explicitly with `advance_to` (an event time, not a clock reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NEVER = np.iinfo(np.int64).min // 2


@dataclass
class Released:
    ordered: pa.Table | None
    late: pa.Table | None
    duplicates: int
    watermark_us: int


@dataclass
class ReorderBuffer:
    lateness_us: int
    max_ts_us: int = NEVER
    floor_us: int = NEVER  # explicit watermark from `advance_to`
    pending: pa.Table | None = None
    last_seq: dict[str, int] = field(default_factory=dict)  # per run: highest seq released
    gaps: dict[str, set[int]] = field(default_factory=dict)  # per run: seqs below it never seen (yet)

    @property
    def watermark_us(self) -> int:
        return max(self.max_ts_us - self.lateness_us, self.floor_us)

    def push(self, ticks: pa.Table) -> Released:
        ts = ticks["ts"].cast(pa.int64()).to_numpy()
        seq = ticks["seq"].to_numpy()
        runs = ticks["run_id"].to_numpy(zero_copy_only=False)
        # watermark in force before each row: running max of everything seen before it
        prior = np.maximum.accumulate(np.concatenate(([self.max_ts_us], ts)))[:-1] - self.lateness_us
        prior = np.maximum(prior, self.floor_us)
        duplicate = np.zeros(len(seq), dtype=bool)
        for run in pc.unique(ticks["run_id"]).to_pylist():
            if run in self.last_seq:
                mask = runs == run
                below = mask & (seq <= self.last_seq[run])
                gaps = self.gaps.get(run, set())
                # below the high-water mark: a gap being filled (late) or a tick released before (duplicate)
                duplicate[below] = [int(x) not in gaps for x in seq[below]] if gaps else True
        duplicate |= _repeats(runs, seq)
        if self.pending is not None and self.pending.num_rows:
            duplicate |= _in(runs, seq, self.pending)
        late = ~duplicate & (ts <= prior)
        keep = ~duplicate & ~late
        if len(ts):
            self.max_ts_us = max(self.max_ts_us, int(ts.max()))
        late_table = ticks.filter(pa.array(late)) if late.any() else None
        if late_table is not None:
            self.note_late(late_table)
        on_time = ticks if keep.all() else ticks.filter(pa.array(keep))
        if self.pending is not None and self.pending.num_rows:
            on_time = pa.concat_tables([self.pending, on_time])
        return Released(self._release(on_time), late_table, int(duplicate.sum()), self.watermark_us)

    def advance_to(self, ts_us: int) -> Released:
        """Producer's word that no tick at or before `ts_us` is still coming."""
        self.floor_us = max(self.floor_us, ts_us)
        pending = self.pending if self.pending is not None else None
        return Released(self._release(pending) if pending is not None else None, None, 0, self.watermark_us)

    def _release(self, table: pa.Table | None) -> pa.Table | None:
        if table is None or table.num_rows == 0:
            self.pending = None
            return None
        wm = self.watermark_us
        ts = table["ts"].cast(pa.int64()).to_numpy()
        ready = ts <= wm
        if not ready.any():
            self.pending = table
            return None
        self.pending = None if ready.all() else table.filter(pa.array(~ready))
        out = (table if ready.all() else table.filter(pa.array(ready))).sort_by([("ts", "ascending"),
                                                                                ("seq", "ascending")])
        runs = out["run_id"]
        for run in pc.unique(runs).to_pylist():
            seqs = out.filter(pc.equal(runs, run))["seq"].to_numpy()
            high = self.last_seq.get(run)
            start = int(seqs.min()) if high is None else high + 1
            top = int(seqs.max())
            if high is None or top > high:
                missing = np.setdiff1d(np.arange(start, top + 1), seqs, assume_unique=False)
                if missing.size:
                    self.gaps.setdefault(run, set()).update(missing.tolist())
                self.last_seq[run] = top
        return out

    def note_late(self, late: pa.Table) -> None:
        """A late tick fills its gap: seen once, so a second copy is a duplicate."""
        for run, seq in zip(late["run_id"].to_pylist(), late["seq"].to_pylist(), strict=True):
            self.gaps.get(run, set()).discard(seq)


def _repeats(runs: np.ndarray, seq: np.ndarray) -> np.ndarray:
    """True for the second and later occurrence of a (run, seq) within one batch."""
    if len(seq) < 2:
        return np.zeros(len(seq), dtype=bool)
    keys = seq if (runs == runs[0]).all() else np.char.add(runs.astype(str), np.char.add("#", seq.astype(str)))
    _, first = np.unique(keys, return_index=True)
    out = np.ones(len(seq), dtype=bool)
    out[first] = False
    return out


def _in(runs: np.ndarray, seq: np.ndarray, pending: pa.Table) -> np.ndarray:
    p_runs = pending["run_id"].to_numpy(zero_copy_only=False)
    p_seq = pending["seq"].to_numpy()
    out = np.zeros(len(seq), dtype=bool)
    for run in set(runs.tolist()):
        mask = runs == run
        out[mask] = np.isin(seq[mask], p_seq[p_runs == run])
    return out
