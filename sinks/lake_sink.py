"""Bytewax sink writing the flow's outputs to Delta in micro-batches, idempotently, one partition per partition
of the units (`sources.jetstream.unit_partition`).

Items are `(table_name, pa.Table)`. Rows are buffered per table and committed on a writer thread, so scoring
goes on while a micro-batch is written.

With a recovery store each partition keeps its own write-ahead log (`wal_dir`, beside the store) and commits
like a two-phase sink: rows are appended to the log as Arrow IPC as they come; a segment is sealed at each
epoch's end (and at `max_rows`); the epoch's snapshot is the number of the next segment; and a segment is
committed only once the epoch that sealed it is in the recovery store, one epoch later (as the source's acks
are), each table's commit carrying a Delta app transaction (`txn`: this partition's id, the segment's number).
A restarted partition commits what the last process left: the segments its stored snapshot acknowledged,
skipping a table whose `txn` version shows it already has them, and also the later ones, sealed or cut short.
The source replays the input of those later ones, so after a crash the replayed rows that Delta has are
recognised by key (as without a recovery store, below). Keeping them costs that key read at the restart;
deleting them, on the promise that the source's stored position and the sink's are of one moment, lost a
partition's rows after a broker fault and a kill (docs/SCALE-OUT.md §5). A clean stop leaves nothing: then no
key is read. Either way no row lands twice, whichever partition, process or machine commits. Rows reach
Delta up to two epochs after they came; alerts do not wait (they go to NATS). The segments are not fsynced: a
crash of the process leaves them in the page cache, and against a power cut the stack is no stronger than its
broker. The measured trade-offs: docs/PERFORMANCE.md, "The figures behind the design".

Without a recovery store (`wal_dir=None`) nothing keeps a snapshot and delivery around a crash is best effort:
micro-batches are committed when a table reaches `max_rows`, when the oldest buffered row is `max_age_s` old
and at the end of every epoch; a re-delivered row is recognised by its key and skipped (ticks, scores and late
ticks by (run, seq) — the flow releases a run's ticks in seq order, so a per-run high-water mark is enough —
alerts by alert id, assays by (run, sample time), dead letters by stream sequence: the keys in the lake are read
once when the partition starts). At most two sealed micro-batches wait for the writer (the dataflow thread
waits beyond that), which keeps the commits close behind.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from core.codec import encode_arrow
from core.events import SCHEMAS
from sinks import delta

SEQ_KEYED = ("ticks", "vitals", "scores")  # a unit's readings, either plant kind (core.plants), and their scores
# the other tables' row keys (the patient plant's: late vitals, labs, doses, the twin's forecasts)
KEY_COLUMNS = {"alerts": ["alert_id"], "late_ticks": ["run_id", "seq"], "assays": ["run_id", "sample_ts"],
               "deadletter": ["stream_seq"], "late_vitals": ["run_id", "seq"], "labs": ["run_id", "sample_ts"],
               "doses": ["run_id", "ts", "drug"], "twin_forecasts": ["run_id", "fitted_ts", "ts", "dosing"],
               "recipes": ["run_id", "recipe_hash"], "annotations": ["run_id", "ts", "kind"]}
FLOW_TABLES = (*SEQ_KEYED, *KEY_COLUMNS)  # every table the flow writes
# no rows: an item the flow sends every partition once an epoch, so that Bytewax snapshots it (it snapshots only
# the partitions an epoch brought items) and what the epoch before sealed goes to Delta
EPOCH_ITEM: tuple[str, pa.Table] = ("", pa.table({}))
# a micro-batch's rows at most: a Delta commit costs the same CPU whatever its size, and encoding a large
# batch costs less per row than several small ones, so at full rate the batches are large; at live rates the
# age limit closes them long before (docs/PERFORMANCE.md)
MAX_ROWS = 250_000

Parts = dict[str, list[pa.Table]]
log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """One micro-batch for the writer: its rows (None: read back from `segment`), its write-ahead segment
    (deleted once it is committed) and that segment's number, the app-transaction version it commits with."""

    parts: Parts | None
    segment: Path | None = None
    version: int | None = None
    recovered: bool = False  # left by a previous process: a table may have it already


class WriteAheadLog:
    """Micro-batches on local disk until Delta has them. Every table handed to the sink is appended to the open
    segment as it comes (a frame: table name, length, Arrow IPC stream), which is cheap for a live message's
    rows; a flush closes the segment and renames it `<number>.batch`, so a segment cut short by a crash keeps
    its temporary name: only its whole frames are read back. Writing a second's many small tables at the flush
    instead held the dataflow thread up at each epoch's end."""

    _FRAME = struct.Struct("<HQ")  # name length, payload length

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.segment: BinaryIO | None = None
        self.next_number = 0

    def leftovers(self, acknowledged_below: int) -> list[_Batch]:
        """Every segment a previous process left, oldest first, to commit: those sealed before its stored snapshot
        (numbered below `acknowledged_below`) and also the later ones and the whole frames of a torn one. Their
        input is replayed only if the source's stored position is before them, and Bytewax does not promise that
        the positions and this snapshot it restores are of one moment (docs/SCALE-OUT.md §5): rows dropped here
        on that promise were lost. The replayed rows are recognised by key instead (`_LakePartition`). Numbering
        goes on past them all."""
        batches = []
        for path in sorted(self.root.glob("*.batch")) + sorted(self.root.glob("*.tmp")):
            number = int(path.stem)
            parts = None
            if path.suffix == ".tmp":  # cut short by the crash: its whole frames
                parts = self._read(path.read_bytes(), torn=True)
                if not parts:
                    path.unlink()
                    continue
            batches.append(_Batch(parts, path, number, recovered=True))
        batches.sort(key=lambda b: b.version)
        self.next_number = max([acknowledged_below] + [b.version + 1 for b in batches])
        return batches

    def read(self, path: Path) -> Parts | None:
        """A sealed segment's tables; None, with a warning, if it cannot be read (then it is deleted)."""
        try:
            return self._read(path.read_bytes())
        except (pa.ArrowInvalid, struct.error, UnicodeDecodeError, ValueError) as err:
            log.warning("skipping unreadable write-ahead segment %s: %s", path, err)
            path.unlink()
            return None

    def _read(self, data: bytes, torn: bool = False) -> Parts:
        """The frames of a segment; `torn`: up to the first one the crash cut short."""
        parts: Parts = defaultdict(list)
        offset = 0
        while offset < len(data):
            whole = len(data) - offset >= self._FRAME.size
            if whole:
                name_len, size = self._FRAME.unpack_from(data, offset)
                whole = offset + self._FRAME.size + name_len + size <= len(data)
            if not whole:
                if torn:
                    break
                raise ValueError("truncated frame")
            offset += self._FRAME.size
            name = data[offset:offset + name_len].decode()
            parts[name].append(pa.ipc.open_stream(data[offset + name_len:offset + name_len + size]).read_all())
            offset += name_len + size
        return dict(parts)

    def append(self, name: str, table: pa.Table) -> None:
        if self.segment is None:
            self.segment = open(self._path(".tmp"), "wb")  # noqa: SIM115 - stays open until the flush
        payload, encoded = encode_arrow(table), name.encode()
        self.segment.write(self._FRAME.pack(len(encoded), len(payload)) + encoded + payload)

    def _path(self, suffix: str) -> Path:
        return self.root / f"{self.next_number:012d}{suffix}"

    def seal(self) -> _Batch | None:
        """Close the open segment (the rows of the next flush go to a new one); it, if there was one."""
        if self.segment is None:
            return None
        self.segment.close()
        self.segment = None
        path = self._path(".batch")
        os.replace(self._path(".tmp"), path)
        self.next_number += 1
        return _Batch(None, path, self.next_number - 1)


def default_wal_dir(lake: str, consumer: str) -> str:
    """Where a flow's write-ahead log goes when none is set: under a local lake, one per consumer."""
    if "://" in lake:
        raise RuntimeError("with a recovery store and a remote lake, set BIOPILOT_FLOW_WAL to a local directory "
                           "beside the store (the Delta sink's write-ahead log)")
    return os.path.join(lake, ".flow-wal", consumer)


# A redelivered batch comes within an epoch of its first delivery (the broker's unacknowledged messages, the
# write-ahead log's sealed segments), so the keys of rows without a seq are remembered for this many commits of
# their table, not for good: kept for good, they grew with every alert and late tick the flow ever wrote
SEEN_COMMITS = 100


class _Dedupe:
    def __init__(self, lake: str | Path) -> None:
        self.high: dict[str, dict[str, int]] = {name: {} for name in SEQ_KEYED}
        # per table: each remembered key with the number of the last batch that had it, and the batches' keys in
        # order, to forget a batch's keys SEEN_COMMITS batches on (the keys read at the start count as one batch)
        self.seen: dict[str, dict[tuple, int]] = defaultdict(dict)
        self.batches: dict[str, deque[tuple[int, list[tuple]]]] = defaultdict(deque)
        self.counter = 0
        for name in SEQ_KEYED:
            table = delta.read(lake, name, columns=["run_id", "seq"])
            if table is not None and table.num_rows:
                agg = table.group_by("run_id").aggregate([("seq", "max")])
                self.high[name] = dict(zip(agg["run_id"].to_pylist(), agg["seq_max"].to_pylist(), strict=True))
        for name, cols in KEY_COLUMNS.items():
            table = delta.read(lake, name, columns=cols)
            if table is not None:
                self._remember(name, list(zip(*(table[c].to_pylist() for c in cols), strict=True)))

    def fresh(self, name: str, table: pa.Table) -> pa.Table:
        if name in SEQ_KEYED:
            high = self.high[name]
            codes = pc.dictionary_encode(table["run_id"]).combine_chunks()
            runs, names = codes.indices.to_numpy(), codes.dictionary.to_pylist()
            seq = table["seq"].to_numpy()
            if len(names) == 1:  # one run: no mask needed
                run = names[0]
                keep_from = high.get(run, -1)
                high[run] = max(keep_from, int(seq.max()))
                return table if seq.min() > keep_from else table.filter(pa.array(seq > keep_from))
            keep = np.ones(table.num_rows, dtype=bool)
            for k, run in enumerate(names):
                mask = runs == k
                if run in high:
                    keep[mask] = seq[mask] > high[run]
                high[run] = max(high.get(run, -1), int(seq[mask].max()))
            return table if keep.all() else table.filter(pa.array(keep))
        cols = KEY_COLUMNS.get(name)
        if cols is None:
            return table
        seen = self.seen[name]
        keys = list(zip(*(table[c].to_pylist() for c in cols), strict=True))
        keep = [k not in seen for k in keys]
        self._remember(name, keys)
        return table if all(keep) else table.filter(pa.array(keep))

    def _remember(self, name: str, keys: list[tuple]) -> None:
        seen, batches = self.seen[name], self.batches[name]
        self.counter += 1
        seen.update(dict.fromkeys(keys, self.counter))
        batches.append((self.counter, keys))
        if len(batches) > SEEN_COMMITS:
            number, old = batches.popleft()
            for key in old:
                if seen.get(key) == number:  # not seen again since
                    del seen[key]


class _Committer:
    """The one writer thread of a lake in this process, for every sink partition the process holds: it takes the
    batches all of them sealed and commits each table once, the rows of several partitions in one Delta commit
    that carries each partition's app transaction (they land together or not at all). A writer per partition
    made a commit per partition and table: on one machine eight partitions' writers committed eight times as
    often, and the flow waited on them (docs/PERFORMANCE.md). The partitions share its condition: it guards
    their buffers, logs' open segments and batches, and the writer's work. Partition `p000`'s process compacts:
    the compaction's commit then never races another process's."""

    registry: dict[str, _Committer] = {}
    registry_lock = threading.Lock()

    def __init__(self, lake: str) -> None:
        self.lake = lake
        self.appender = delta.Appender(lake, None)
        self.changed = threading.Condition()
        self.partitions: list[_LakePartition] = []
        self.thread = threading.Thread(target=self._write_loop, name="biopilot-delta-writer", daemon=True)

    @classmethod
    def join(cls, part: _LakePartition, compacts: bool) -> _Committer:
        with cls.registry_lock:
            committer = cls.registry.get(part.lake)
            if committer is None:
                committer = cls.registry[part.lake] = cls(part.lake)
            with committer.changed:
                committer.partitions.append(part)
                if compacts:
                    committer.appender.compact_every = delta.COMPACT_EVERY
            if not committer.thread.is_alive():  # started with its first partition: it ends with its last
                committer.thread.start()
        return committer

    def leave(self, part: _LakePartition) -> None:
        """`part` closed; the last one out ends the thread."""
        with self.registry_lock, self.changed:
            self.partitions.remove(part)
            if not self.partitions:
                del self.registry[self.lake]
                self.changed.notify_all()

    def _work(self) -> list[tuple[_LakePartition, list[_Batch]]] | None:
        """Every partition's sealed batches, sealing the buffers whose oldest row is `max_age_s` old (partitions
        without a log); None once no partition is left (with the condition held)."""
        while True:
            work, due, taken = [], None, False
            for part in self.partitions:
                if part.wal is None and part.oldest is not None:
                    wait_s = part.oldest + part.max_age_s - time.monotonic()
                    if wait_s <= 0:
                        part.seal()
                    else:
                        due = wait_s if due is None else min(due, wait_s)
                if part.sealed:
                    batches, taken = list(part.sealed), True
                    part.sealed.clear()
                    if part.failure is None:  # after a failure the segments stay for the next process
                        work.append((part, batches))
            if taken:
                self.changed.notify_all()  # room for the dataflow thread
            if work:
                return work
            if not self.partitions:
                return None
            self.changed.wait(due)

    def _write_loop(self) -> None:
        while True:
            with self.changed:
                work = self._work()
                if work is None:
                    return
                for part, _ in work:
                    part.committing = True
            try:
                self._commit(work)
            except BaseException as err:  # surfaced on the dataflow's thread at the partitions' next call
                # and said here: in a cluster Bytewax aborts on it without its traceback (bytewax#318)
                log.exception("Delta commit of %s failed", ", ".join(part.app_id for part, _ in work))
                for part, _ in work:
                    part.failure = err
            finally:
                with self.changed:
                    for part, _ in work:
                        part.committing = False
                    self.changed.notify_all()

    def _commit(self, work: list[tuple[_LakePartition, list[_Batch]]]) -> None:
        rows: dict[str, list[pa.Table]] = defaultdict(list)
        versions: dict[str, dict[str, int]] = defaultdict(dict)  # per table: each partition's last segment
        for part, batches in work:
            for batch in batches:
                for name, table in part.rows_of(batch).items():
                    rows[name].append(table)
                    if batch.version is not None:
                        versions[name][part.app_id] = batch.version
        for name, tables in rows.items():
            self.appender.append(name, pa.concat_tables(tables), SCHEMAS[name], list(versions[name].items()))
        for _, batches in work:
            for batch in batches:
                if batch.segment is not None:
                    batch.segment.unlink(missing_ok=True)


class _LakePartition(StatefulSinkPartition[tuple[str, pa.Table], int | None]):
    def __init__(self, lake: str, max_rows: int, max_age_s: float, wal_dir: str | Path | None = None,
                 app_id: str = "biopilot-flow", compacts: bool = True, resume_state: int | None = None) -> None:
        self.lake, self.max_rows, self.max_age_s, self.app_id = lake, max_rows, max_age_s, app_id
        self.buffers: Parts = defaultdict(list)
        self.rows: dict[str, int] = defaultdict(int)
        self.oldest: float | None = None
        self.wal = None if wal_dir is None else WriteAheadLog(wal_dir)
        self.dedupe = _Dedupe(lake) if self.wal is None else None
        # batch assembly, de-duplication and commits run on the lake's writer thread (Arrow and the Delta writer
        # release the GIL), so the dataflow thread only hands tables over and keeps scoring and alerting. Without
        # a log the writer also keeps the age limit: when the input pauses (a run ends, a replay is paused) the
        # last rows land `max_age_s` later rather than at the end of the epoch, up to 5 s on. At most two
        # batches wait for the writer: the back-pressure.
        self.sealed: deque[_Batch] = deque()  # for the writer, in order
        self.held: list[_Batch] = []  # sealed in the epoch now ending: committed once the next one ends
        self.acknowledged_below = resume_state or 0  # the segment number the last snapshot returned
        # per table, the last segment of this partition in Delta (its `txn`), as the partition starts
        self.committed: dict[str, int | None] = {}
        if self.wal is not None:  # what the last process's stored snapshot acknowledged, and not deleted
            self.committed = {name: delta.transaction_version(lake, name, app_id) for name in FLOW_TABLES}
            self.sealed.extend(self.wal.leftovers(self.acknowledged_below))
            self._resume_past_commits()
        self.committing = False
        self.failure: BaseException | None = None
        self.committer = _Committer.join(self, compacts)
        self.changed = self.committer.changed
        if self.wal is not None:
            with self.changed:
                self.changed.notify_all()
            self.wait_committed()  # a restarted partition's leftovers land before anything new

    def _resume_past_commits(self) -> None:
        """The last process may have left segments at or past the snapshot this partition resumes from: sealed or
        torn after it (`WriteAheadLog.leftovers`: they are committed), or even committed (Bytewax stores an epoch's
        snapshots some time after the epoch ends, and under load that was after the next epoch's end, when the
        segment is committed; docs/SCALE-OUT.md §5). The source replays what its stored position is before: those
        rows are recognised by key, as without a log, and numbering goes on past the last segment, committed or
        not (a new segment numbered below a committed one would pass for it: `txn`)."""
        last = max((v for v in self.committed.values() if v is not None), default=None)
        beyond = [b.version for b in self.sealed if b.version is not None and b.version >= self.acknowledged_below]
        if last is not None and last >= self.acknowledged_below:
            log.warning("partition %s resumes before segment %d, which is in Delta already (its epoch was not stored "
                        "when it was committed): the replayed rows that Delta has are skipped by key", self.app_id,
                        last)
            self.wal.next_number = max(self.wal.next_number, last + 1)
        elif beyond:
            log.warning("partition %s commits %d segment(s) from after its stored snapshot (the last process did not "
                        "close): the replayed rows that Delta has are skipped by key", self.app_id, len(beyond))
        else:
            return
        self.dedupe = _Dedupe(self.lake)

    def rows_of(self, batch: _Batch) -> dict[str, pa.Table]:
        """A batch's rows per table, in the table's schema, less what the lake has already: a recovered segment's
        tables that have it (their `txn`), and without a log the rows whose keys it holds (writer thread)."""
        parts = batch.parts if batch.parts is not None or self.wal is None else self.wal.read(batch.segment)
        out = {}
        for name, tables in (parts or {}).items():
            if batch.recovered:
                done = self.committed.get(name)
                if done is not None and done >= batch.version:
                    continue  # the table had this segment before the crash
            schema = SCHEMAS[name]
            # one copy and one cast per table: casting each of the many message-sized parts (their fields
            # arrive nullable) one by one cost more, and Parquet encodes one chunk per column faster than many
            table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
            table = table if table.schema == schema else table.cast(schema)
            if self.dedupe is not None:
                table = self.dedupe.fresh(name, table)
            if table.num_rows:
                out[name] = table
        return out

    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"Delta write failed: {self.failure}") from self.failure

    def seal(self) -> None:
        """Hand the buffered rows on (with the condition held): to the writer, or with a log to the batches
        held until their epoch is stored (their rows are on disk: not kept in memory)."""
        if self.wal is not None:
            if (batch := self.wal.seal()) is not None:
                self.held.append(batch)
        elif self.buffers:
            self.sealed.append(_Batch(dict(self.buffers)))
            self.changed.notify_all()
        self.buffers = defaultdict(list)
        self.rows.clear()
        self.oldest = None

    def write_batch(self, values: list[tuple[str, pa.Table]]) -> None:
        self._check()
        with self.changed:
            values = [v for v in values if v[0]]  # not the epoch's mark
            for name, table in values:
                self.rows[name] += table.num_rows
                if self.wal is not None:
                    self.wal.append(name, table)
                else:
                    self.buffers[name].append(table)
            if self.oldest is None and values:
                self.oldest = time.monotonic()
                self.changed.notify_all()  # the writer's age clock starts
            if any(n >= self.max_rows for n in self.rows.values()):
                self.seal()
            if len(self.sealed) > 2:  # the writer is behind (batches sealed by size, age or epoch): wait for it
                self.changed.wait_for(lambda: len(self.sealed) <= 2 or self.failure is not None)

    def snapshot(self) -> int | None:
        """End of an epoch: every row handed over so far is on its way to Delta; with a write-ahead log it is in
        a sealed segment, so it survives a crash of the process, and the segments of the epoch before (stored
        by now) go to the writer. The state: the number of the next segment, below which everything is in a
        stored epoch once this one is."""
        with self.changed:
            if self.wal is not None:
                ready = [b for b in self.held if b.version < self.acknowledged_below]
                self.held = [b for b in self.held if b.version >= self.acknowledged_below]
                self.sealed.extend(ready)
                self.changed.notify_all()
            self.seal()
            if self.wal is not None:
                self.acknowledged_below = self.wal.next_number
                if len(self.sealed) > 2:  # the writer is behind: wait for it
                    self.changed.wait_for(lambda: len(self.sealed) <= 2 or self.failure is not None)
        self._check()
        return None if self.wal is None else self.acknowledged_below

    def wait_committed(self) -> None:
        """Until every batch given to the writer is in Delta (or failed)."""
        with self.changed:
            self.changed.wait_for(lambda: not self.sealed and not self.committing)

    def close(self) -> None:
        """The input ended (a finite run): nothing is replayed, so everything goes to Delta now."""
        with self.changed:
            self.seal()
            self.sealed.extend(self.held)
            self.held = []
            self.changed.notify_all()
        self.wait_committed()
        self.committer.leave(self)
        self._check()


def part_name(partition: int) -> str:
    """A sink partition's key: the units' partition, zero-padded so that the keys sort in partition order."""
    return f"p{partition:03d}"


class LakeSink(FixedPartitionedSink[tuple[str, pa.Table], int | None]):
    """`partitions` partitions, keyed `part_name(k)`: route each unit's rows to its partition's key (the same on
    every process). `wal_dir`: where the write-ahead logs live (one folder per partition); give one (beside the
    store) whenever the flow runs with a recovery store, or rows in flight at a crash are lost. `app_id`: the
    flow's name in the Delta app transactions (`<app_id>/<partition>`); partition 0 compacts."""

    def __init__(self, lake: str | Path, max_rows: int = MAX_ROWS, max_age_s: float = 1.0,
                 wal_dir: str | Path | None = None, partitions: int = 1, app_id: str = "biopilot-flow") -> None:
        self.lake, self.max_rows, self.max_age_s, self.wal_dir = str(lake), max_rows, max_age_s, wal_dir
        self.partitions, self.app_id = max(1, partitions), app_id

    def list_parts(self) -> list[str]:
        return [part_name(k) for k in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key[1:])

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LakePartition:
        wal_dir = None if self.wal_dir is None else Path(self.wal_dir) / for_part
        return _LakePartition(self.lake, self.max_rows, self.max_age_s, wal_dir, f"{self.app_id}/{for_part}",
                              compacts=for_part == part_name(0), resume_state=resume_state)
