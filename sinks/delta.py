"""Delta Lake tables under the lake root (docs/DESIGN.md, "Tables"): append, read, delete runs, compact.

Sensor readings are quantised to instrument resolution, so dictionary encoding keeps the files small; the
writer streams record batches (a `RecordBatchReader`) so a fleet never has to sit in memory at once.

The lake is a local folder or `s3://bucket/prefix`: every table is opened here with the object store's options
(`core.config.lake_storage_options`: the settings' endpoint, keys and region, commits by conditional PUT) and every read goes
through a pyarrow filesystem made from the same options, so nothing else needs to know where the lake is.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from core.config import lake_storage_options

log = logging.getLogger(__name__)

# Quantised sensor readings and ids stay dictionary-encoded (Parquet's default). Building a dictionary is wasted on
# columns with a new value in nearly every row: run-wise increasing `seq` and `ts` take delta encoding, the
# detectors' continuous outputs byte-stream-split: less CPU and smaller files (docs/PERFORMANCE.md).
_INCREASING = ColumnProperties(dictionary_enabled=False, encoding="DELTA_BINARY_PACKED")
_CONTINUOUS = ColumnProperties(dictionary_enabled=False, encoding="BYTE_STREAM_SPLIT")
WRITER = WriterProperties(compression="SNAPPY", column_properties={
    "seq": _INCREASING, "ts": _INCREASING,
    "score": _CONTINUOUS, "vcd_e6_per_ml_est": _CONTINUOUS, "glucose_g_l_est": _CONTINUOUS,
})
CHECKPOINT_INTERVAL = 100  # Delta's default `delta.checkpointInterval`: a checkpoint every 100 commits
# Every commit lists the table's whole log directory (a stat per entry), and Delta keeps each commit's entry
# for 30 days by default, so a table committing every second would slow every commit hour by hour. Each
# checkpoint removes the entries past the retention (those before the newest checkpoint that is older than
# it). At full rate a table commits several times a second: even 10 minutes of log slowed the commits of ticks
# over a soak, the sink's queue (the flow's memory) rising with them (docs/PERFORMANCE.md). One minute keeps a
# few hundred entries. Nothing here reads a version older than its table's newest checkpoint, and a reader
# opening the newest needs the entries after that checkpoint only for the milliseconds it takes. The files
# compaction replaces are listed (as removed) in every checkpoint for as long as they may be vacuumed: an
# hour, not a week.
TABLE_PROPERTIES = {"delta.logRetentionDuration": "interval 1 minute",
                    "delta.deletedFileRetentionDuration": "interval 1 hours"}
# Delta keeps each file's min, max and null count for the first 32 columns, in the log, in every checkpoint
# and in every open handle, and a commit's CPU and the writer's memory grow with them, much less so with
# statistics for the key columns only (docs/PERFORMANCE.md). At full rate the ticks and the scores gain
# several files a second each, so they keep statistics for the columns readers select on; the other tables are
# small and keep Delta's default.
FULL_RATE_STATS = {"delta.dataSkippingStatsColumns": "run_id,reactor_id,seq,ts"}
FULL_RATE_TABLES = ("ticks", "scores", "late_ticks")
# The audit trail keeps its history: the files a delete, an update or a compaction replaced stay for ten years
# (a removed or edited row can be read back from them) and nothing here vacuums it; its log keeps Delta's
# default 30 days of versions (every commit lists the log, so a log kept for good would slow every append).
HISTORY_PROPERTIES = {"delta.logRetentionDuration": "interval 30 days",
                      "delta.deletedFileRetentionDuration": "interval 3650 days"}
HISTORY_TABLES = ("audit",)
# A live micro-batch is a second of a few reactors: a file of a few kB per table and second. Each file costs
# every later commit and read, and the writer's memory. So every COMPACT_EVERY commits of a table an
# `Appender` merges its files smaller than SMALL_FILE_BYTES, on one thread, and deletes the files replaced
# over VACUUM_AFTER_HOURS ago (a reader listing a snapshot before the compaction still finds its files). A
# round rewrites the small files of COMPACT_EVERY commits, short enough for the writer's thread (the GIL
# released); a full-rate micro-batch's file is over SMALL_FILE_BYTES and never rewritten (rewriting them cost
# as much as writing them had). The figures: docs/PERFORMANCE.md.
COMPACT_EVERY = CHECKPOINT_INTERVAL
SMALL_FILE_BYTES = 2 << 20
VACUUM_AFTER_HOURS = 1


def is_remote(lake: str | Path) -> bool:
    """Whether the lake is on object storage (a URL), not a local folder."""
    return "://" in str(lake)


def table_uri(lake: str | Path, name: str) -> str:
    lake = str(lake)
    return f"{lake.rstrip('/')}/{name}" if is_remote(lake) else str(Path(lake) / name)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(options: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    given = dict(options)
    endpoint = urlsplit(given.get("AWS_ENDPOINT_URL", ""))
    return pafs.S3FileSystem(access_key=given.get("AWS_ACCESS_KEY_ID"), secret_key=given.get("AWS_SECRET_ACCESS_KEY"),
                             region=given["AWS_REGION"], endpoint_override=endpoint.netloc or None,
                             scheme=endpoint.scheme or "https")


def filesystem(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a lake path or URL (the lake's object store, with its settings, for `s3://`)
    and the path within it."""
    options = lake_storage_options(uri)
    if options is None:
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    return _s3_filesystem(tuple(sorted(options.items()))), str(uri).split("://", 1)[1]


def _files(lake: str | Path, table: DeltaTable) -> tuple[list[str], pafs.FileSystem | None]:
    """The snapshot's data files and the filesystem pyarrow reads them through."""
    uris = table.file_uris()
    if lake_storage_options(lake) is None:
        return uris, None
    return [uri.split("://", 1)[1] for uri in uris], filesystem(lake)[0]


def table_properties(name: str) -> dict[str, str]:
    """The Delta properties a lake table is created with (and an older one is given when a sink opens it)."""
    if name in HISTORY_TABLES:
        return HISTORY_PROPERTIES
    return {**TABLE_PROPERTIES, **FULL_RATE_STATS} if name in FULL_RATE_TABLES else TABLE_PROPERTIES


def open_table(lake: str | Path, name: str) -> DeltaTable | None:
    try:
        return DeltaTable(table_uri(lake, name), storage_options=lake_storage_options(lake))
    except TableNotFoundError:
        return None


def _prepared(data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch], schema: pa.Schema,
              ) -> pa.Table | pa.RecordBatchReader | None:
    """`data` as the writer takes it (None if there is nothing to write)."""
    if not isinstance(data, pa.Table | pa.RecordBatchReader):
        return pa.RecordBatchReader.from_batches(schema, iter(data))
    if isinstance(data, pa.Table):
        if not data.num_rows:
            return None
        return data if data.schema == schema else data.cast(schema)  # the flow's sink has cast its batches
    return data


AppTransaction = tuple[str, int]  # a Delta app transaction (`txn`): the writer's id, and the version it commits


# a flow's partitions append to one table at each epoch's end at once: blind appends, which a retry always
# resolves, so they retry for longer than a creation race before the sink gives up
PARTITIONED_COMMIT_RETRIES = 100


def _commit_properties(app_transactions: Sequence[AppTransaction]) -> CommitProperties | None:
    """With app transactions, deltalake does not retry the commit itself: when the store took a commit but its
    answer was lost (the store restarting), deltalake's retry found the version taken, and as a blind append
    does not conflict with another it committed the same rows again at the next version, under the same `txn`.
    The `Appender` retries instead, once it has read the table's `txn` (`_landed`)."""
    if not app_transactions:
        return None
    return CommitProperties(app_transactions=[Transaction(app_id=app_id, version=version)
                                              for app_id, version in app_transactions], max_commit_retries=0)


def append(lake: str | Path, name: str, data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
           schema: pa.Schema, app_transactions: Sequence[AppTransaction] = ()) -> None:
    """Append rows in one commit; `data` may be a stream of batches of `schema`. `app_transactions`: recorded with
    the commit in the same atomic step (`transaction_version` reads each back): writers' idempotence keys (one
    commit may carry the rows of several writers, each with its own)."""
    data = _prepared(data, schema)
    if data is None:
        return
    if not is_remote(lake):
        Path(lake).mkdir(parents=True, exist_ok=True)
    write_deltalake(table_uri(lake, name), data, mode="append", writer_properties=WRITER,
                    configuration=table_properties(name), storage_options=lake_storage_options(lake),
                    commit_properties=_commit_properties(app_transactions))


def create_table(lake: str | Path, name: str, schema: pa.Schema) -> DeltaTable:
    """The table, made empty with its properties if it does not exist: of processes making it at once one does,
    and the others open it (a first commit that both create and append would not conflict with another's)."""
    if not is_remote(lake):
        Path(lake).mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(DeltaError):  # another process made it between our check and our commit
        DeltaTable.create(table_uri(lake, name), schema, mode="ignore", configuration=table_properties(name),
                          storage_options=lake_storage_options(lake))
    table = open_table(lake, name)
    if table is None:
        raise DeltaError(f"table {name} could not be made in {lake}")
    return table


def transaction_version(lake: str | Path, name: str, app_id: str) -> int | None:
    """The last version `app_id` committed to table `name` (`append`'s `app_transactions`), None if none."""
    table = open_table(lake, name)
    return None if table is None else table.transaction_version(app_id)


def prepare_tables(lake: str | Path, names: Iterable[str]) -> None:
    """Give the existing tables among `names` their properties (`table_properties`) now, before several writers
    append to them: a metadata change aborts the appends committed beside it."""
    for name in names:
        table = open_table(lake, name)
        properties = table_properties(name)
        if table is not None and any(table.metadata().configuration.get(k) != v for k, v in properties.items()):
            table.alter.set_table_properties(properties)


CREATION_RACE_RETRIES = 8


def _landed(table: DeltaTable, app_transactions: Sequence[AppTransaction]) -> bool:
    """Whether a commit that raised had landed all the same: its answer lost (the object store restarting),
    deltalake's retry of it refused as a concurrent transaction by itself. Its `txn`s say so (they land together);
    appending again would commit its rows twice."""
    if not app_transactions:
        return False
    done = [table.transaction_version(app_id) for app_id, _ in app_transactions]
    return all(d is not None and d >= version for d, (_, version) in zip(done, app_transactions, strict=True))


class Appender:
    """Appends to a lake's tables through handles kept open, for writers that commit again and again (the
    flow's sink: a micro-batch a second per table). Opening a table re-reads its log since the last checkpoint,
    which cost as much as the write itself; an open handle moves on with its own commits (and
    reads only newer log entries if another writer committed in between). But a handle also replays every
    commit since the checkpoint it was opened at, so it is reopened every 100 commits, just after Delta writes
    a checkpoint: a handle kept for good slows down as its table grows, more than opening afresh for each
    commit (docs/PERFORMANCE.md). Every `compact_every` commits of a table its small files are compacted (never
    if None: one of several writers of a table compacts).

    >>> import tempfile
    >>> appender = Appender(tempfile.mkdtemp(), compact_every=2)
    >>> schema = pa.schema([("x", pa.int64())])
    >>> for k in range(3):
    ...     appender.append("numbers", pa.table({"x": [k]}), schema)
    >>> sorted(read(appender.lake, "numbers")["x"].to_pylist()), len(open_table(appender.lake, "numbers").file_uris())
    ([0, 1, 2], 2)
    """

    def __init__(self, lake: str | Path, compact_every: int | None = COMPACT_EVERY) -> None:
        self.lake, self.compact_every = lake, compact_every
        self.tables: dict[str, DeltaTable] = {}
        self.commits: dict[str, int] = defaultdict(int)  # per table, since its last compaction

    def append(self, name: str, data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
               schema: pa.Schema, app_transactions: Sequence[AppTransaction] = ()) -> None:
        table = self.tables.get(name)
        if table is None:
            table = open_table(self.lake, name)
            if table is None:  # the first commit creates the table
                try:
                    append(self.lake, name, data, schema, app_transactions)
                    self.commits[name] += 1
                    return
                except DeltaError:  # another writer created it first: append to theirs
                    table = open_table(self.lake, name)
                    if table is None:
                        raise
                    if _landed(table, app_transactions):
                        self.commits[name] += 1
                        return
            properties = table_properties(name)
            if any(table.metadata().configuration.get(k) != v for k, v in properties.items()):
                table.alter.set_table_properties(properties)  # a table from before they were set
            self.tables[name] = table
        data = _prepared(data, schema)
        if data is None:
            return
        try:
            write_deltalake(table, data, mode="append", writer_properties=WRITER,
                            commit_properties=_commit_properties(app_transactions))
        except CommitFailedError:
            # a concurrent commit: another partition's append, or a change of the metadata (another process's
            # creation of the table landing just after ours, a properties change), or ours landed unanswered.
            # Ours is made again on the table as it is now, unless its `txn` says it landed (a stream of batches,
            # already consumed, cannot be: the caller retries it)
            if not isinstance(data, pa.Table):
                raise
            attempts = PARTITIONED_COMMIT_RETRIES if app_transactions else CREATION_RACE_RETRIES
            for attempt in range(attempts):
                table = self.tables[name] = open_table(self.lake, name)
                if _landed(table, app_transactions):
                    break
                try:
                    write_deltalake(table, data, mode="append", writer_properties=WRITER,
                                    commit_properties=_commit_properties(app_transactions))
                    break
                except CommitFailedError:
                    if attempt == attempts - 1:
                        raise
        self.commits[name] += 1
        if self.compact_every is not None and self.commits[name] >= self.compact_every:
            self.commits[name] = 0
            del self.tables[name]  # reopened from the newest checkpoint, whatever version the compaction reached
            try:
                _compact(table, SMALL_FILE_BYTES, None if name in HISTORY_TABLES else VACUUM_AFTER_HOURS)
            except DeltaError as err:  # upkeep, not a write: another writer's commit in between, say
                log.warning("compacting %s failed (%s); the next round tries again", name, err)
        elif table.version() % CHECKPOINT_INTERVAL == 0:  # a checkpoint was just written: reopen from it
            del self.tables[name]


def read(lake: str | Path, name: str, columns: list[str] | None = None, run_ids: Iterable[str] | None = None,
         where: pc.Expression | None = None) -> pa.Table | None:
    """The table (or None if it does not exist), optionally limited to some runs and to the rows `where` holds
    (files and row groups whose statistics rule it out are not read)."""
    table = open_table(lake, name)
    if table is None:
        return None
    # pyarrow's own Parquet reader over the snapshot's files: reading through deltalake's dataset bridge
    # aborted the process at exit about one time in three ("terminate called without an active exception")
    schema = pa.schema(table.schema().to_arrow())
    files, filesystem = _files(lake, table)
    dataset = ds.dataset(files, format="parquet", schema=schema, filesystem=filesystem)
    flt = None
    if run_ids is not None:
        flt = pc.field("run_id").isin(pa.array(list(run_ids), pa.string()))
    if where is not None:
        flt = where if flt is None else flt & where
    return dataset.to_table(columns=columns, filter=flt)


def run_ids(lake: str | Path, name: str = "runs") -> set[str]:
    table = read(lake, name, columns=["run_id"])
    return set() if table is None else set(table.column("run_id").to_pylist())


def delete_runs(lake: str | Path, names: Iterable[str], ids: Iterable[str]) -> None:
    """Remove every row of these runs from these tables (used to clean up an interrupted write)."""
    ids = sorted(ids)
    if not ids:
        return
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    for name in names:
        table = open_table(lake, name)
        if table is not None:
            table.delete(f"run_id IN ({quoted})")


def _compact(table: DeltaTable, target_size: int | None, vacuum_after_hours: int | None) -> dict:
    """Merge the files smaller than `target_size` (Delta's default, 100 MB, if None) and delete the files that
    were replaced `vacuum_after_hours` or longer ago (none if None)."""
    metrics = table.optimize.compact(target_size=target_size, writer_properties=WRITER, max_concurrent_tasks=1)
    if vacuum_after_hours is not None:
        table.vacuum(retention_hours=vacuum_after_hours, enforce_retention_duration=False, dry_run=False)
    return metrics


def optimize(lake: str | Path, names: Iterable[str]) -> dict[str, dict]:
    """Compact small files and drop the files no longer referenced (kept for the tables that keep history)."""
    report = {}
    for name in names:
        table = open_table(lake, name)
        if table is not None:
            report[name] = _compact(table, None, None if name in HISTORY_TABLES else 0)
    return report
