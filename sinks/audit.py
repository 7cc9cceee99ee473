"""The audit trail (the `audit` Delta table): one commit per row, made before the caller goes on, and every row
chained to the one before it by hash, so that a removed or edited row shows (`biopilot audit verify`).

Row k has `seq` = k (consecutive from 0), `prev_hash` = row k-1's `hash` (GENESIS for row 0) and `hash` =
sha256(prev_hash + the canonical JSON of its other fields). Rows from before the chain (an older schema, no
`seq`) stay in the table, outside it. The chain shows removals inside it and edits; it cannot show the newest
rows cut off together, nor a table rewritten with every hash recomputed (sha256 takes no key).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError

from core.events import AUDIT
from sinks import delta

log = logging.getLogger(__name__)
TABLE = "audit"
GENESIS = "0" * 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HASHED = ("seq", "ts", "actor", "role", "token_id", "action", "target", "payload_json", "request_id", "client",
           "result")


def row_hash(row: dict) -> str:
    fields = {k: row.get(k) for k in _HASHED}
    fields["ts"] = (row["ts"] - _EPOCH) // timedelta(microseconds=1)  # as stored: microseconds, no time zone text
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((row["prev_hash"] + canonical).encode()).hexdigest()


# Every chained row's commit records this Delta app transaction: two writers that chained a row to the same head
# conflict, and the second chains again after the first's row (an `s3://` lake has no file lock to take)
CHAIN_APP_ID = "biopilot-audit-chain"
CHAIN_RETRIES = 20


@contextlib.contextmanager
def lake_lock(lake: str, name: str) -> Iterator[None]:
    """Serialises appenders of one table across processes (the dashboard, `biopilot token revoke`, `biopilot
    models`) on a local lake, by an flock on `<lake>/.<name>.lock`; on a remote lake there is none (the audit
    chain's commits conflict instead: `CHAIN_APP_ID`)."""
    if "://" in lake:
        yield
        return
    Path(lake).mkdir(parents=True, exist_ok=True)
    with open(Path(lake) / f".{name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _chained(table: pa.Table) -> pa.Table:
    """The chained rows (seq set), in seq order."""
    if "seq" not in table.column_names:
        return table.slice(0, 0)
    table = table.filter(pc.is_valid(table["seq"]))
    return table.sort_by([("seq", "ascending")])


class AuditLog:
    """Appends chained rows to a lake's audit table. Thread-safe; the head (next seq, last hash) is kept, and
    read again from the table when another process has committed to it since."""

    def __init__(self, lake: str) -> None:
        self.lake = str(lake)
        self._lock = threading.Lock()
        self._table: DeltaTable | None = None
        self._head: tuple[int, str] | None = None  # (next seq, hash of the last row)

    def _read_head(self) -> tuple[int, str]:
        rows = delta.read(self.lake, TABLE)
        chained = _chained(rows).to_pylist() if rows is not None else []
        return (chained[-1]["seq"] + 1, chained[-1]["hash"]) if chained else (0, GENESIS)

    def _open(self) -> DeltaTable:
        if self._table is None:
            self._table = delta.create_table(self.lake, TABLE, AUDIT)
            properties = delta.table_properties(TABLE)
            if any(self._table.metadata().configuration.get(k) != v for k, v in properties.items()):
                self._table.alter.set_table_properties(properties)  # a table from before they were set
            self._head = None
            return self._table
        version = self._table.version()
        self._table.update_incremental()
        if self._table.version() != version:  # someone else appended: our head is stale
            self._head = None
        return self._table

    @staticmethod
    def _commit(table: DeltaTable, data: pa.Table, seq: int) -> None:
        """Commit one chained row with the chain's app transaction at `seq`: of two processes committing on the
        same head, the second is refused (a concurrent transaction of the same app id), lock or no lock. Merge:
        an audit table from before the chain gains the new columns (null in old rows)."""
        write_deltalake(table, data, mode="append", schema_mode="merge", writer_properties=delta.WRITER,
                        commit_properties=CommitProperties(app_transactions=[Transaction(CHAIN_APP_ID, seq)]))

    def append(self, row: dict) -> dict:
        """Chain `row` (ts, actor, role, token_id, action, target, payload_json, request_id, client, result)
        and commit it; returns the row as written (with seq, prev_hash, hash)."""
        with self._lock, lake_lock(self.lake, "audit"):
            for attempt in range(CHAIN_RETRIES):
                table = self._open()
                if self._head is None:
                    self._head = self._read_head()
                seq, prev_hash = self._head
                chained = {**row, "seq": seq, "prev_hash": prev_hash}
                chained["hash"] = row_hash(chained)
                try:
                    self._commit(table, pa.Table.from_pylist([chained], schema=AUDIT), seq)
                    break
                except CommitFailedError:  # another process chained a row to this head first: again, after it
                    self._table = None
                    if attempt == CHAIN_RETRIES - 1:
                        raise
                except Exception:
                    self._table = None  # unknown state: reopen and reread the head next time
                    raise
            self._head = (seq + 1, chained["hash"])
            if table.version() % delta.CHECKPOINT_INTERVAL == 0:
                # as the Appender does: one-row files and a handle replaying commits since its checkpoint
                # each slow every later append; merged (not vacuumed: the history stays) and reopened
                self._table = None
                try:
                    table.optimize.compact(target_size=delta.SMALL_FILE_BYTES, writer_properties=delta.WRITER,
                                           max_concurrent_tasks=1)
                except DeltaError as err:  # upkeep: the row is committed; the next round tries again
                    log.warning("compacting the audit table failed (%s)", err)
            return chained


@dataclass(frozen=True)
class Verdict:
    intact: bool
    message: str


def verify(lake: str) -> Verdict:
    """Walk the chain; the first break names its seq."""
    rows = delta.read(lake, TABLE)
    if rows is None:
        # nothing to vouch for: a deleted table, or a mistyped lake, must not pass as an intact chain
        return Verdict(False, f"no audit table in {lake} (the wrong --lake, or the table was removed)")
    chained = _chained(rows).to_pylist()
    before = rows.num_rows - len(chained)
    prev_hash, expected = GENESIS, 0
    for row in chained:
        seq = row["seq"]
        if seq < expected:
            return Verdict(False, f"seq {seq} appears twice (two writers forked the chain, or a row was copied)")
        if seq > expected:
            missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
            return Verdict(False, f"{missing} missing: removed from the table (the chain goes on at seq {seq})")
        if row["prev_hash"] != prev_hash:
            return Verdict(False, f"seq {seq}: prev_hash is not the hash of seq {seq - 1} (a row was edited or "
                                  "replaced)")
        if row_hash(row) != row["hash"]:
            return Verdict(False, f"seq {seq}: hash mismatch, the row was edited")
        prev_hash, expected = row["hash"], expected + 1
    span = f"seq 0..{expected - 1}" if expected else "no chained rows"
    old = f"; {before} row(s) from before the chain (no seq) are not covered" if before else ""
    return Verdict(True, f"audit chain intact: {len(chained)} row(s), {span}{old}")


def tail(lake: str, n: int) -> list[dict]:
    """The newest `n` rows, oldest first (rows from before the chain by time, ahead of the chained ones)."""
    rows = delta.read(lake, TABLE)
    if rows is None:
        return []
    chained = _chained(rows)
    old = rows.filter(pc.is_null(rows["seq"])) if "seq" in rows.column_names else rows
    ordered = old.sort_by([("ts", "ascending")]).to_pylist() + chained.to_pylist()
    return ordered[-n:] if n > 0 else []
