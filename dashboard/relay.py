"""From NATS to the SSE hub: telemetry decimated for screens, assays, alerts, incidents and agent chunks; for the
patient plant also doses and the twin's forecasts.

The plant kind's vocabulary (`core.plants`, `Settings.plant`) says what telemetry and lab rows look like: a
reactor's ticks and assays, or a patient's vitals and labs. The events keep the key `reactor_id` for the unit's
id whichever the kind, as the generic tables do (docs/DESIGN.md), so the streams' filters serve both.

Telemetry arrives as Arrow batches at up to hundreds of thousands of ticks per second; a screen needs a few
points per reactor per update. Ticks are pooled per reactor and every `every_s` (0.25 s: 4 updates/s per
reactor) the pool is thinned to at most `max_points` evenly spaced points (the last one always kept).

Alerts and incidents come from the JetStream `ALERTS` stream through the durable consumer `RELAY_DURABLE`, and
are acked once they are in the hub: a dashboard that was down, or a Redis that was, resumes where it stopped.

No NATS callback waits on Redis: events go into a bounded `Outbox` that one task writes to the hub, retrying
with backoff while Redis is down or hung. When the outbox is full it drops the oldest telemetry (a screen
needs only the latest), leaves new alerts and incidents unacked for JetStream to deliver again later, and
drops new agent chunks (they are in the `agent_messages` table too), counting and logging both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from core.codec import decode_rows
from core.events import DOSES, TICK_SIGNALS, VITAL_SIGNALS
from core.plants import PLANTS, PlantVocabulary
from core.services import connect_nats
from dashboard.hub import DROPPABLE, Hub, Outgoing
from outcomes.serving import RecordStore, RiskCache
from sources.patient.news2 import news2_components
from sources.telemetry import KIND_HEADER

log = logging.getLogger(__name__)
REACTORS_KEY = "biopilot:reactors"
REACTORS_TTL_S = 86400  # refreshed at every flush: reactors that stopped ticking a day ago leave the list
RELAY_DURABLE = "biopilot-dashboard-relay"
STORED = {"biopilot.alerts": "alerts", "biopilot.incidents": "incidents"}  # subject prefix -> hub channel
TWIN_CHANNEL = "twin"  # the patient twin's forecasts (`biopilot.twin.<patient>`): few, each one replaces the last
ACK_WAIT_S = 60.0  # JetStream redelivers what the relay has not acked by then; queued ones are deduplicated
MAX_ACK_PENDING = 2000  # alerts and incidents taken but not yet in the hub: what Redis being down may hold
WRITE_BATCH = 500  # events per Redis round trip
RETRY_MAX_S = 2.0


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


def tick_event(reactor: str, ticks: pa.Table, signals: tuple[str, ...] = TICK_SIGNALS) -> dict:
    """The screen's event of a unit's readings (a reactor's ticks or a patient's vitals: `signals`)."""
    ticks = ticks.sort_by("seq")
    return {"kind": "ticks", "reactor_id": reactor, "run_id": ticks["run_id"][-1].as_py(),
            "t": [round(v / 1e6, 3) for v in ticks["ts"].cast(pa.int64()).to_pylist()],
            "signals": {name: _floats(ticks[name]) for name in signals}}


def news2(vitals: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """NEWS2 of each vitals row (`sources.patient.news2`): the aggregate and the highest single parameter's
    points (NaN where a vital is missing)."""
    parts = news2_components({s: vitals[s].to_numpy(zero_copy_only=False).astype(float) for s in VITAL_SIGNALS})
    return parts.sum(axis=0), parts.max(axis=0)


def lab_values(plant: PlantVocabulary) -> tuple[str, ...]:
    """The measured columns of the kind's lab rows (a reactor's assays, a patient's INR and Hb)."""
    return tuple(f.name for f in plant.assays_schema if pa.types.is_floating(f.type))


def _is_event(data: bytes) -> bool:
    try:
        return isinstance(json.loads(data), dict)
    except ValueError:
        return False


@dataclass(eq=False)
class Pending(Outgoing):
    msg: Msg | None = None  # the JetStream delivery to ack once the event is in the hub


@dataclass
class Outbox:
    """Events waiting for the hub, bounded: at most `max_telemetry` telemetry events (the oldest go first) and
    `max_other` others (refused past that: the caller decides)."""

    max_telemetry: int = 1000
    max_other: int = 2 * MAX_ACK_PENDING
    telemetry: deque[Pending] = field(default_factory=deque)
    other: deque[Pending] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped_telemetry: int = 0

    def put(self, item: Pending) -> bool:
        if item.channel in DROPPABLE:
            if len(self.telemetry) >= self.max_telemetry:
                self.telemetry.popleft()
                self.dropped_telemetry += 1
            self.telemetry.append(item)
        elif len(self.other) >= self.max_other:
            return False
        else:
            self.other.append(item)
        self.ready.set()
        return True

    def take(self, n: int) -> list[Pending]:
        batch = [self.other.popleft() for _ in range(min(n, len(self.other)))]
        batch += [self.telemetry.popleft() for _ in range(min(n - len(batch), len(self.telemetry)))]
        if not self.other and not self.telemetry:
            self.ready.clear()
        return batch

    def __len__(self) -> int:
        return len(self.telemetry) + len(self.other)


@dataclass
class Relay:
    nats_url: str
    hub: Hub
    plant: PlantVocabulary = PLANTS["bioreactor"]  # what the telemetry and lab rows it relays look like
    every_s: float = 0.25
    max_points: int = 60
    pending: dict[str, list[pa.Table]] = field(default_factory=dict)
    outbox: Outbox = field(default_factory=Outbox)
    positions: dict[str, str] = field(default_factory=dict)  # reactor -> its latest run and time (the hash)
    queued: dict[int, Pending] = field(default_factory=dict)  # stream sequence -> its waiting alert/incident
    deferred: int = 0  # alerts and incidents left for JetStream to redeliver: the outbox was full
    dropped_chunks: int = 0  # agent chunks and twin forecasts (both are in the lake too)
    failing_since: float | None = None  # when writes to Redis began failing
    in_flight: list[Pending] = field(default_factory=list)  # the batch being written
    # patient -> the newest event time (us) of their data that arrived: it invalidates their cached risk
    arrived: dict[str, int] = field(default_factory=dict)
    # the patients' records as they arrive (patient plant): the risk API's miss path reads them, not the lake
    records: RecordStore = field(default_factory=RecordStore)

    async def start(self) -> None:
        self.nc = await connect_nats(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.subs = [await self.nc.subscribe("biopilot.telemetry.*", cb=self._on_ticks),
                     await self.nc.subscribe("biopilot.assays.*", cb=self._on_assays),
                     await self.nc.subscribe("biopilot.agent.>", cb=self._on_chunk),
                     await self.nc.subscribe("biopilot.twin.*", cb=self._on_twin),
                     await self.nc.subscribe("biopilot.risk.*", cb=self._on_twin)]  # the patients' risks
        # a deliver group, so a second dashboard on the same cache shares the work instead of failing to bind;
        # created delivering new messages only: a fresh dashboard does not replay a week of alerts
        config = ConsumerConfig(filter_subjects=[f"{p}.>" for p in STORED], ack_policy=AckPolicy.EXPLICIT,
                                ack_wait=ACK_WAIT_S, max_ack_pending=MAX_ACK_PENDING)
        self.subs.append(await self.nc.jetstream().subscribe(
            "biopilot.alerts.>", queue=RELAY_DURABLE, stream="ALERTS", cb=self._on_stored, manual_ack=True,
            config=config, deliver_policy=DeliverPolicy.NEW))
        self.risk_cache = RiskCache(self.hub.redis)
        self.flusher = asyncio.create_task(self._flush_loop())
        self.writer = asyncio.create_task(self._write_loop())

    async def stop(self, grace_s: float = 5.0) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.flusher
        deadline = time.monotonic() + grace_s  # what is taken is written (and acked) if Redis lets it
        while (len(self.outbox) or self.in_flight or self.positions) and time.monotonic() < deadline \
                and self.failing_since is None:
            await asyncio.sleep(0.05)
        self.writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.writer
        await self.nc.drain()

    def _put(self, item: Pending) -> bool:
        ok = self.outbox.put(item)
        if not ok and (self.deferred + self.dropped_chunks) % 1000 == 0:
            log.warning("relay: outbox full (%d events, Redis failing for %.0f s); %d alerts/incidents "
                        "deferred to JetStream, %d agent chunks dropped", len(self.outbox),
                        time.time() - (self.failing_since or time.time()), self.deferred, self.dropped_chunks)
        return ok

    async def _on_stored(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq in self.queued:  # redelivered while waiting for Redis: ack the newest delivery, once
            self.queued[seq].msg = msg
            return
        if not _is_event(msg.data):
            log.warning("relay: dropping an undecodable message on %s", msg.subject)
            await msg.term()
            return
        item = Pending(STORED[".".join(msg.subject.split(".")[:2])], msg.data.decode(), msg=msg)
        if self._put(item):
            self.queued[seq] = item
        else:
            self.deferred += 1
            await msg.nak(delay=1.0)

    async def _on_chunk(self, msg: Msg) -> None:
        if _is_event(msg.data) and not self._put(Pending("agents", msg.data.decode())):
            self.dropped_chunks += 1

    async def _on_twin(self, msg: Msg) -> None:
        # the flow stores every forecast in `twin_forecasts` too: one lost here is read back from the lake
        try:
            event = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        event.setdefault("reactor_id", event.get("patient_id"))  # the streams filter units by `reactor_id`
        if not self._put(Pending(TWIN_CHANNEL, json.dumps(event, default=str))):
            self.dropped_chunks += 1

    async def _on_ticks(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(KIND_HEADER) == "watermark":
            if self.plant.name == "patient":  # a stream's closing watermark: the patient's run ended
                self.records.end(msg.subject.rsplit(".", 1)[-1])
            return
        try:
            ticks = decode_rows(msg.data, self.plant.ticks_schema)
        except Exception:  # noqa: BLE001 - bad payloads are the flow's dead letters, not the screen's problem
            return
        if ticks.num_rows:
            self.pending.setdefault(msg.subject.rsplit(".", 1)[-1], []).append(ticks)
            self._arrived(msg.subject.rsplit(".", 1)[-1], ticks["ts"], "vitals", ticks)

    def _arrived(self, unit: str, times: pa.ChunkedArray, kind: str, rows: pa.Table) -> None:
        if self.plant.name == "patient":  # into the records before the cache hears of it: never behind
            self.records.add(kind, rows)
            self.arrived[unit] = max(self.arrived.get(unit, -1), pc.max(times).value)

    async def _on_assays(self, msg: Msg) -> None:
        kind = msg.headers.get(KIND_HEADER) if msg.headers else None
        if kind == "recipe":  # a run's recipe, at its start or after an operator's change: the page redraws its band
            self._put(Pending("telemetry", json.dumps({"kind": "recipe", "reactor_id": msg.subject.rsplit(".", 1)[-1]})))
            return
        doses = kind == "doses"
        try:
            rows = decode_rows(msg.data, DOSES if doses else self.plant.assays_schema)
        except Exception:  # noqa: BLE001
            return
        unit, values = self.plant.unit_column, lab_values(self.plant)
        if rows.num_rows:  # a lab is data once reported
            self._arrived(msg.subject.rsplit(".", 1)[-1], rows["ts" if doses else "reported_ts"],
                          "doses" if doses else "labs", rows)
        for row in rows.to_pylist():
            event = {"kind": "dose", "reactor_id": row["patient_id"], "run_id": row["run_id"],
                     "t": row["ts"].timestamp(), "drug": row["drug"], "dose_mg": row["dose_mg"],
                     "taken": row["taken"]} if doses else {
                "kind": "assay", "reactor_id": row[unit], "run_id": row["run_id"], "t": row["sample_ts"].timestamp(),
                "values": {k: row[k] for k in values if row[k] is not None}}
            self._put(Pending("telemetry", json.dumps(event, default=str)))

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for reactor, tables in pending.items():
            ticks = thin(pa.concat_tables(tables).sort_by("seq"), self.max_points)
            event = tick_event(reactor, ticks, self.plant.signals)
            if self.plant.name == "patient":  # the page shows NEWS2 as scored here, not re-derived in JS
                event["news2"] = [None if np.isnan(x) else x for x in news2(ticks)[0].tolist()]
            self._put(Pending("telemetry", json.dumps(event, default=str)))
            self.positions[reactor] = json.dumps({"run_id": event["run_id"], "t": event["t"][-1]})

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - keep relaying; the next flush tries again
                log.exception("relay flush failed")

    async def _write_loop(self) -> None:
        """Outbox -> hub, batch by batch; a failed batch is retried, with backoff, until Redis takes it."""
        delay_s = 0.1
        while True:
            if not self.in_flight and not self.positions and not self.arrived:
                await self.outbox.ready.wait()
            batch = self.in_flight = self.in_flight or self.outbox.take(WRITE_BATCH)
            positions, self.positions = self.positions, {}
            arrived, self.arrived = self.arrived, {}
            try:
                await self.risk_cache.note_data(arrived)  # first: no cached risk outlives its data's arrival
                await self.hub.write(batch)
                if positions:
                    async with self.hub.redis.pipeline(transaction=False) as pipe:
                        pipe.hset(REACTORS_KEY, mapping=positions)
                        pipe.expire(REACTORS_KEY, REACTORS_TTL_S)
                        await pipe.execute()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - Redis down or hung: keep the batch, try again
                self.positions = positions | self.positions
                for unit, t in arrived.items():
                    self.arrived[unit] = max(t, self.arrived.get(unit, -1))
                if self.failing_since is None:
                    self.failing_since = time.time()
                    log.warning("relay: writing to Redis failed (%s); retrying, %d events waiting", err,
                                len(self.outbox) + len(batch))
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_MAX_S)
                continue
            if self.failing_since is not None:
                log.warning("relay: Redis writes back after %.1f s; %d telemetry events dropped, %d alerts/"
                            "incidents deferred, %d agent chunks dropped so far",
                            time.time() - self.failing_since, self.outbox.dropped_telemetry, self.deferred,
                            self.dropped_chunks)
                self.failing_since = None
            delay_s = 0.1
            for item in batch:
                if item.msg is not None:
                    self.queued.pop(item.msg.metadata.sequence.stream, None)
                    with contextlib.suppress(Exception):  # unacked: redelivered, in the hub twice
                        await item.msg.ack()
            self.in_flight = []
