"""A batching Delta writer for asyncio services (agents, dashboard): rows are queued by table name and
appended in one commit per table every `every_s`, on a thread, so writing never holds up a message."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

import pyarrow as pa

from core.events import SCHEMAS
from sinks import delta

log = logging.getLogger(__name__)


class TableWriter:
    """Rows queued by table name, appended to Delta in one commit per table every `every_s`."""

    def __init__(self, lake: str, every_s: float = 0.5) -> None:
        self.lake, self.every_s = lake, every_s
        self.appender = delta.Appender(lake)
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self.task: asyncio.Task | None = None

    def put(self, name: str, row: dict) -> None:
        self.rows[name].append(row)

    async def flush(self) -> None:
        batches, self.rows = self.rows, defaultdict(list)
        for name, rows in batches.items():
            try:
                table = pa.Table.from_pylist(rows, schema=SCHEMAS[name])
                await asyncio.to_thread(self.appender.append, name, table, SCHEMAS[name])
            except Exception:  # noqa: BLE001 - keep the rows for the next try rather than lose them
                log.exception("could not write %d %s rows; retrying", len(rows), name)
                self.rows[name][:0] = rows

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            await self.flush()
