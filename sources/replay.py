"""Replay a stored run to NATS: its ticks at their event-time spacing divided by `speed` (or as fast as
possible), its assays when their lab results were reported, and a closing watermark.

At `max` (or any speed faster than the flow) it waits while the flow's consumer `flow_durable` is more than
`max_behind_bytes` (1 GB) behind (`sources.backpressure`), so that the broker never drops what the flow has not
read.

`biopilot.control.<reactor>` accepts `{"type": "pause"}`, `{"type": "resume"}` and `{"type": "stop"}` while a
replay runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import nats
import pyarrow as pa

from core.services import FLOW_DURABLE, connect_nats
from sources.backpressure import DEFAULT_MAX_BYTES, Backpressure
from sources.publish import publish_assays, publish_ticks, publish_watermark


class Replay:
    def __init__(self, nats_url: str, ticks: pa.Table, assays: pa.Table | None = None, speed: float | None = None,
                 batch_ticks: int = 500, lateness_s: float = 300.0, as_run: str | None = None,
                 as_reactor: str | None = None, flow_durable: str = FLOW_DURABLE,
                 max_behind_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if ticks.num_rows == 0:
            raise ValueError("the run has no ticks")
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0, or max")
        self.nats_url = nats_url
        self.ticks = ticks.sort_by("seq")
        self.assays = assays.sort_by("reported_ts") if assays is not None and assays.num_rows else None
        for column, value in (("run_id", as_run), ("reactor_id", as_reactor)):
            if value:  # e.g. a dashboard replay beside a live plant must not share its reactor's stream
                self.ticks = _rename(self.ticks, column, value)
                self.assays = _rename(self.assays, column, value) if self.assays is not None else None
        self.reactor = self.ticks["reactor_id"][0].as_py()
        self.speed, self.batch_ticks, self.lateness_s = speed, batch_ticks, lateness_s
        self.paused = asyncio.Event()
        self.stopped = False
        self.published = 0
        self.backpressure = Backpressure(None, flow_durable, max_bytes=max_behind_bytes)  # connected by `run`

    async def _on_control(self, msg: nats.aio.msg.Msg) -> None:
        try:
            kind = json.loads(msg.data).get("type")
        except (ValueError, AttributeError):
            return
        if kind in ("pause", "resume", "stop"):
            self.command(kind)

    def command(self, kind: str) -> None:
        """pause, resume or stop (also from the control subject)."""
        if kind == "pause":
            self.paused.set()
        elif kind == "resume":
            self.paused.clear()
        elif kind == "stop":
            self.stopped = True
            self.paused.clear()
            self.backpressure.release()
        else:
            raise ValueError(f"unknown replay command {kind!r}; use pause, resume or stop")

    async def run(self, progress: Callable[[int], None] | None = None) -> int:
        nc = await connect_nats(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        self.backpressure.js = js
        sub = await nc.subscribe(f"biopilot.control.{self.reactor}", cb=self._on_control)
        ts = self.ticks["ts"].cast(pa.int64()).to_numpy()
        reported = (self.assays["reported_ts"].cast(pa.int64()).to_numpy() if self.assays is not None else [])
        next_assay = 0
        t0_event, t0_wall = int(ts[0]), time.monotonic()
        paused_for = 0.0
        try:
            for offset in range(0, len(ts), self.batch_ticks):
                while self.paused.is_set() and not self.stopped:
                    pause_start = time.monotonic()
                    await asyncio.sleep(0.05)
                    paused_for += time.monotonic() - pause_start
                if self.stopped:
                    break
                batch = self.ticks.slice(offset, self.batch_ticks)
                last_ts = int(ts[min(offset + self.batch_ticks, len(ts)) - 1])
                if self.speed is not None:  # keep event-time spacing, divided by the speed
                    due = t0_wall + paused_for + (last_ts - t0_event) / 1e6 / self.speed
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                await publish_ticks(js, self.reactor, batch, backpressure=self.backpressure)
                while next_assay < len(reported) and reported[next_assay] <= last_ts:
                    await publish_assays(js, self.reactor, self.assays.slice(next_assay, 1))
                    next_assay += 1
                self.published += batch.num_rows
                if progress:
                    progress(batch.num_rows)
            if self.assays is not None and not self.stopped:
                for i in range(next_assay, self.assays.num_rows):
                    await publish_assays(js, self.reactor, self.assays.slice(i, 1))
            await publish_watermark(js, self.reactor, int(ts[-1]) + int(self.lateness_s * 1e6) + 1)
        finally:
            await sub.unsubscribe()
            await nc.drain()
        return self.published


def _rename(table: pa.Table, column: str, value: str) -> pa.Table:
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, table.schema.field(column), pa.array([value] * table.num_rows, pa.string()))

