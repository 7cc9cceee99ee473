"""Bytewax sink writing the flow's outputs to Delta in micro-batches, idempotently.

Items are `(table_name, pa.Table)`. Rows are buffered per table and committed when a table reaches
`max_rows`, when the oldest buffered row is `max_age_s` old, and at the end of every epoch. Commits happen on a
writer thread, so scoring goes on while a micro-batch is written. A re-delivered row is recognised by its key
and skipped: ticks, scores and late ticks by (run, seq) — the flow releases a run's ticks in seq order, so a
per-run high-water mark is enough — alerts by alert id, assays by (run, sample time), dead letters by stream
sequence. The keys already in the lake are read once when the partition starts.

With a recovery store the sink keeps a write-ahead log (`wal_dir`, beside the store): rows are appended there
as Arrow IPC as they come, each micro-batch's segment is sealed when it goes to the writer and removed once
committed, and an epoch's snapshot only seals the open segment. A restarted partition first commits the
segments left over, in the order they were written (the idempotent keys skip what had landed), so every row a
stored epoch acknowledged reaches Delta although no snapshot waited for a commit. Waiting held the dataflow
thread up at each epoch's end, alerts included; carrying the rows in the snapshot was worse (Bytewax pickled
them into its store every epoch). The segments are not fsynced (an fsync each epoch would cost the dataflow
thread too): a crash of the process leaves them in the page cache, and against a power cut the stack is no
stronger than its broker, whose JetStream file store syncs every two minutes by default. The measured
trade-offs: docs/PERFORMANCE.md, "The figures behind the design".
Without a recovery store (`wal_dir=None`) nothing keeps a snapshot and delivery around a crash is best effort:
the snapshot only hands the buffer to the writer; at most two sealed micro-batches wait for it (the dataflow
thread waits beyond that), which keeps the commits close behind.
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
# a micro-batch's rows at most: a Delta commit costs the same CPU whatever its size, and encoding a large
# batch costs less per row than several small ones, so at full rate the batches are large; at live rates the
# age limit closes them long before (docs/PERFORMANCE.md)
MAX_ROWS = 250_000

Parts = dict[str, list[pa.Table]]
log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """One micro-batch for the writer, with its write-ahead segment (deleted once it is committed)."""

    parts: Parts
    segment: Path | None = None


class WriteAheadLog:
    """Micro-batches on local disk until Delta has them. Every table handed to the sink is appended to the open
    segment as it comes (a frame: table name, length, Arrow IPC stream), which is cheap for a live message's
    rows; a flush closes the segment and renames it `<number>.batch`, so a segment cut short by a crash keeps
    its temporary name and is never taken for a whole one. Writing a second's many small tables at the flush
    instead held the dataflow thread up at each epoch's end."""

    _FRAME = struct.Struct("<HQ")  # name length, payload length

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.segment: BinaryIO | None = None
        self.next_number = 0

    def leftovers(self) -> list[_Batch]:
        """The batches a previous process wrote and never committed, oldest first."""
        for torn in self.root.glob("*.tmp"):
            torn.unlink()
        batches = []
        for path in sorted(self.root.glob("*.batch")):
            try:
                parts = self._read(path.read_bytes())
            except (pa.ArrowInvalid, struct.error, UnicodeDecodeError, ValueError) as err:
                log.warning("skipping unreadable write-ahead segment %s: %s", path, err)
                path.unlink()
                continue
            batches.append(_Batch(parts, path))
            self.next_number = int(path.stem) + 1
        return batches

    def _read(self, data: bytes) -> Parts:
        parts: Parts = defaultdict(list)
        offset = 0
        while offset < len(data):
            name_len, size = self._FRAME.unpack_from(data, offset)
            offset += self._FRAME.size
            name = data[offset:offset + name_len].decode()
            payload = data[offset + name_len:offset + name_len + size]
            if len(payload) != size:
                raise ValueError("truncated frame")
            parts[name].append(pa.ipc.open_stream(payload).read_all())
            offset += name_len + size
        return dict(parts)

    def append(self, name: str, table: pa.Table) -> None:
        if self.segment is None:
            self.segment = open(self._path(".tmp"), "wb")  # noqa: SIM115 - stays open until the flush
        payload, encoded = encode_arrow(table), name.encode()
        self.segment.write(self._FRAME.pack(len(encoded), len(payload)) + encoded + payload)

    def _path(self, suffix: str) -> Path:
        return self.root / f"{self.next_number:012d}{suffix}"

    def seal(self) -> Path | None:
        """Close the open segment (the rows of the next flush go to a new one); its path, if there was one."""
        if self.segment is None:
            return None
        self.segment.close()
        self.segment = None
        path = self._path(".batch")
        os.replace(self._path(".tmp"), path)
        self.next_number += 1
        return path


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


class _LakePartition(StatefulSinkPartition[tuple[str, pa.Table], None]):
    def __init__(self, lake: str, max_rows: int, max_age_s: float, wal_dir: str | Path | None = None) -> None:
        self.lake, self.max_rows, self.max_age_s = lake, max_rows, max_age_s
        self.dedupe = _Dedupe(lake)
        self.appender = delta.Appender(lake)
        self.buffers: Parts = defaultdict(list)
        self.rows: dict[str, int] = defaultdict(int)
        self.oldest: float | None = None
        self.wal = None if wal_dir is None else WriteAheadLog(wal_dir)
        if self.wal is not None:
            for batch in self.wal.leftovers():  # what the last process had acknowledged but not committed
                self._commit(batch)
        # batch assembly, de-duplication and commits run on a writer thread (Arrow and the Delta writer release
        # the GIL), so the dataflow thread only hands tables over and keeps scoring and alerting. The writer also
        # keeps the age limit: when the input pauses (a run ends, a replay is paused) the last rows land
        # `max_age_s` later rather than at the end of the epoch, up to 5 s on. At most two sealed batches wait:
        # the back-pressure. One condition guards the buffers, the log's open segment and the sealed batches.
        self.changed = threading.Condition()
        self.sealed: deque[_Batch] = deque()
        self.committing = False
        self.closing = False
        self.failure: BaseException | None = None
        self.writer = threading.Thread(target=self._write_loop, name="biopilot-delta-writer", daemon=True)
        self.writer.start()

    def _commit(self, batch: _Batch) -> None:
        for name, tables in batch.parts.items():
            schema = SCHEMAS[name]
            # one copy and one cast per table: casting each of the many message-sized parts (their fields
            # arrive nullable) one by one cost more, and Parquet encodes one chunk per column faster than many
            table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
            table = self.dedupe.fresh(name, table if table.schema == schema else table.cast(schema))
            if table.num_rows:
                self.appender.append(name, table, schema)
        if batch.segment is not None:
            batch.segment.unlink()

    def _next_batch(self) -> _Batch | None:
        """The oldest sealed batch, sealing the buffers once their oldest row is `max_age_s` old; None at the
        close (writer thread, with the condition held)."""
        while True:
            if self.sealed:
                self.changed.notify_all()  # room for the dataflow thread
                return self.sealed.popleft()
            if self.closing:
                return None
            if self.oldest is None:
                self.changed.wait()
                continue
            due = self.oldest + self.max_age_s - time.monotonic()
            if due <= 0:
                self._seal()
            else:
                self.changed.wait(due)

    def _write_loop(self) -> None:
        while True:
            with self.changed:
                batch = self._next_batch()
                if batch is None:
                    return
                self.committing = True
            try:
                if self.failure is None:  # after a failure the segments stay for the next process
                    self._commit(batch)
            except BaseException as err:  # surfaced on the dataflow's thread at the next call
                self.failure = err
            finally:
                with self.changed:
                    self.committing = False
                    self.changed.notify_all()

    def _check(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"Delta write failed: {self.failure}") from self.failure

    def _seal(self) -> None:
        """Hand the buffered rows to the writer (with the condition held)."""
        if self.buffers:
            self.sealed.append(_Batch(dict(self.buffers), None if self.wal is None else self.wal.seal()))
            self.changed.notify_all()
        self.buffers = defaultdict(list)
        self.rows.clear()
        self.oldest = None

    def write_batch(self, values: list[tuple[str, pa.Table]]) -> None:
        self._check()
        with self.changed:
            for name, table in values:
                self.buffers[name].append(table)
                self.rows[name] += table.num_rows
                if self.wal is not None:
                    self.wal.append(name, table)
            if self.oldest is None and values:
                self.oldest = time.monotonic()
                self.changed.notify_all()  # the writer's age clock starts
            if any(n >= self.max_rows for n in self.rows.values()):
                self._seal()
            if len(self.sealed) > 2:  # the writer is behind (batches sealed by size, age or epoch): wait for it
                self.changed.wait_for(lambda: len(self.sealed) <= 2 or self.failure is not None)

    def snapshot(self) -> None:
        """End of an epoch: every row handed over so far is on its way to Delta, and with a write-ahead log it is
        in a sealed segment, so it survives a crash of the process."""
        with self.changed:
            self._seal()
        self._check()

    def wait_committed(self) -> None:
        """Until every sealed batch is in Delta (or failed)."""
        with self.changed:
            self.changed.wait_for(lambda: not self.sealed and not self.committing)

    def close(self) -> None:
        with self.changed:
            self._seal()
        self.wait_committed()
        self._check()
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.writer.join(30)


class LakeSink(FixedPartitionedSink[tuple[str, pa.Table], None]):
    """`wal_dir`: where the write-ahead log lives; give one (beside the store) whenever the flow runs with a
    recovery store, or rows in flight at a crash are lost."""

    def __init__(self, lake: str | Path, max_rows: int = MAX_ROWS, max_age_s: float = 1.0,
                 wal_dir: str | Path | None = None) -> None:
        self.lake, self.max_rows, self.max_age_s, self.wal_dir = str(lake), max_rows, max_age_s, wal_dir

    def list_parts(self) -> list[str]:
        return ["lake"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _LakePartition:
        return _LakePartition(self.lake, self.max_rows, self.max_age_s, self.wal_dir)
