"""From NATS to the SSE hub: telemetry decimated for screens, assays, alerts, incidents and agent chunks.

Telemetry arrives as Arrow batches at up to hundreds of thousands of ticks per second; a screen needs a few
points per reactor per update. Ticks are pooled per reactor and every `every_s` (0.25 s: 4 updates/s per
reactor) the pool is thinned to at most `max_points` evenly spaced points (the last one always kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import dataclass, field

import nats
import pyarrow as pa
from nats.aio.msg import Msg

from biopilot.codec import decode_assays, decode_rows
from biopilot.events import ASSAY_VALUES, TICK_SIGNALS
from dashboard.hub import Hub
from sources.telemetry import KIND_HEADER

log = logging.getLogger(__name__)
REACTORS_KEY = "biopilot:reactors"


def _floats(column: pa.ChunkedArray) -> list[float | None]:
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 4)
            for v in column.to_pylist()]


def thin(ticks: pa.Table, max_points: int) -> pa.Table:
    """At most `max_points` evenly spaced rows, the last row always kept."""
    n = ticks.num_rows
    if n <= max_points:
        return ticks
    step = math.ceil(n / max_points)
    idx = list(range(n - 1, -1, -step))[::-1]
    return ticks.take(pa.array(idx))


def tick_event(reactor: str, ticks: pa.Table) -> dict:
    ticks = ticks.sort_by("seq")
    return {"kind": "ticks", "reactor_id": reactor, "run_id": ticks["run_id"][-1].as_py(),
            "t": [round(v / 1e6, 3) for v in ticks["ts"].cast(pa.int64()).to_pylist()],
            "signals": {name: _floats(ticks[name]) for name in TICK_SIGNALS}}


@dataclass
class Relay:
    nats_url: str
    hub: Hub
    every_s: float = 0.25
    max_points: int = 60
    pending: dict[str, list[pa.Table]] = field(default_factory=dict)

    async def start(self) -> None:
        self.nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.subs = [await self.nc.subscribe("biopilot.telemetry.*", cb=self._on_ticks),
                     await self.nc.subscribe("biopilot.assays.*", cb=self._on_assays)]
        for subject, channel in (("biopilot.alerts.>", "alerts"), ("biopilot.incidents.>", "incidents"),
                                 ("biopilot.agent.>", "agents")):
            self.subs.append(await self.nc.subscribe(subject, cb=self._forward(channel)))
        self.flusher = asyncio.create_task(self._flush_loop())

    async def stop(self) -> None:
        self.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.flusher
        await self.nc.drain()

    def _forward(self, channel: str):  # noqa: ANN202
        async def forward(msg: Msg) -> None:
            try:
                event = json.loads(msg.data)
            except ValueError:
                return
            await self.hub.publish(channel, event)
        return forward

    async def _on_ticks(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(KIND_HEADER) == "watermark":
            return
        try:
            ticks = decode_rows(msg.data)
        except Exception:  # noqa: BLE001 - bad payloads are the flow's dead letters, not the screen's problem
            return
        if ticks.num_rows:
            self.pending.setdefault(msg.subject.rsplit(".", 1)[-1], []).append(ticks)

    async def _on_assays(self, msg: Msg) -> None:
        try:
            assays = decode_assays(msg.data)
        except Exception:  # noqa: BLE001
            return
        for row in assays.to_pylist():
            await self.hub.publish("telemetry", {
                "kind": "assay", "reactor_id": row["reactor_id"], "run_id": row["run_id"],
                "t": row["sample_ts"].timestamp(),
                "values": {k: row[k] for k in ASSAY_VALUES if row[k] is not None}})

    async def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for reactor, tables in pending.items():
            ticks = thin(pa.concat_tables(tables).sort_by("seq"), self.max_points)
            event = tick_event(reactor, ticks)
            await self.hub.publish("telemetry", event)
            await self.hub.redis.hset(REACTORS_KEY, reactor, json.dumps(
                {"run_id": event["run_id"], "t": event["t"][-1]}))

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.flush()
            except Exception:  # noqa: BLE001 - keep relaying; the next flush tries again
                log.exception("relay flush failed")
