"""The agent workers on NATS: monitoring (alerts -> incidents) and troubleshooting (incidents -> explanations).

Both subscribe in queue groups, so several `biopilot agents` processes share the load. The incident tracker's
state lives in Redis under a per-reactor lock, so whichever worker gets a reactor's next alert carries on
from the same incidents. The troubleshooting worker sends a first chunk at once (what opened, which signals
drove it), then reads the run's ticks from the lake, ranks the causes and streams the backend's explanation to
`biopilot.agent.<incident_id>`. Every incident event and chunk is also written to Delta (`incidents`,
`agent_messages`) by a batching writer that never holds up the messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nats
import pyarrow.compute as pc
import redis.asyncio as aioredis
from nats.aio.msg import Msg

from agents.diagnose import HORIZON, IncidentFinding
from agents.evidence import gather
from agents.llm import Backend, OfflineBackend
from agents.monitoring import IncidentTracker
from agents.troubleshooting import rank
from sinks import delta
from sinks.nats_sink import alert_json
from sinks.table_writer import TableWriter

log = logging.getLogger(__name__)
STATE_KEY = "biopilot:incidents:{reactor}"
SEQ_KEY = "biopilot:agent-seq:{incident_id}"
EVIDENCE_WAIT_S = 5.0  # how long to wait for the flow to commit the ticks around a new incident
OPEN_WAIT_S = 5.0  # how long an incident's resolve waits for its open's first chunk (another worker's)


@dataclass
class Workers:
    nats_url: str
    redis_url: str
    lake: str
    backend: Backend = field(default_factory=OfflineBackend)
    horizon: timedelta = HORIZON

    async def start(self) -> None:
        from urllib.parse import urlparse

        port = urlparse(self.nats_url).port
        if port:  # connecting before the broker listens prints a traceback and stalls 2 s
            from biopilot.services import wait_port

            await asyncio.to_thread(wait_port, port)
        self.nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.js = self.nc.jetstream()
        self.redis = aioredis.from_url(self.redis_url)
        self.writer = TableWriter(self.lake)
        self.tasks: set[asyncio.Task] = set()
        self.diagnosing = asyncio.Semaphore(4)  # lake reads in parallel, bounded
        self.writer.task = asyncio.create_task(self.writer.run())
        self.subs = [await self.nc.subscribe("biopilot.alerts.>", queue="monitoring", cb=self._on_alert),
                     await self.nc.subscribe("biopilot.incidents.>", queue="troubleshooting", cb=self._on_incident)]

    async def stop(self) -> None:
        for sub in self.subs:
            with contextlib.suppress(Exception):
                await sub.drain()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=30)
        if self.writer.task:
            self.writer.task.cancel()
        await self.writer.flush()
        await self.nc.drain()
        await self.redis.aclose()

    # ---- monitoring --------------------------------------------------------------------------------------
    async def _on_alert(self, msg: Msg) -> None:
        try:
            message = json.loads(msg.data)
            reactor = message["reactor_id"]
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring an undecodable alert on %s: %s", msg.subject, err)
            return
        key = STATE_KEY.format(reactor=reactor)
        async with self.redis.lock(f"{key}:lock", timeout=10, blocking_timeout=10):
            raw = await self.redis.get(key)
            tracker = IncidentTracker.from_json(json.loads(raw) if raw else {})
            events = tracker.on_clear(message) if message.get("type") == "clear" else tracker.on_alert(message)
            await self.redis.set(key, json.dumps(tracker.to_json()))
        for event in events:
            await self.js.publish(f"biopilot.incidents.{reactor}", alert_json(event),
                                  headers={"Nats-Msg-Id": f"{event['incident_id']}-{event['version']}"})
            self.writer.put("incidents", event)

    # ---- troubleshooting ---------------------------------------------------------------------------------
    async def _on_incident(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one after another: the diagnosis (lake reads) runs as its
        # own task so the next incident's first chunk does not wait for it
        task = asyncio.create_task(self._troubleshoot(json.loads(msg.data)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _troubleshoot(self, event: dict) -> None:
        incident_id = event["incident_id"]

        async def send(text: str, done: bool = False, findings: dict | None = None) -> None:
            # one sequence per incident across its events and workers
            seq = await self.redis.incr(SEQ_KEY.format(incident_id=incident_id)) - 1
            chunk = {"incident_id": incident_id, "seq": seq, "agent": "troubleshooting", "text": text,
                     "done": done}
            payload = chunk | ({"findings": findings} if findings else {})  # the last chunk carries them
            await self.nc.publish(f"biopilot.agent.{incident_id}", json.dumps(payload, default=str).encode())
            self.writer.put("agent_messages", chunk | {"findings_json": json.dumps(findings) if findings else None,
                                                       "emitted_at": datetime.now(UTC)})

        if event["event"] == "resolve":
            await self._opened_first(incident_id)
            await send(f"Incident {incident_id} on {event['reactor_id']} resolved at {event['end_ts']}: every "
                       f"alarm in it stayed quiet for the clear period.", done=True)
            return
        if event["event"] != "open":
            return
        lead = ", ".join(event["signals"]) or "several signals"
        await send(f"Incident {incident_id} opened on {event['reactor_id']} at {event['start_ts']} "
                   f"({event['severity']}), driven by {lead}. Gathering evidence...")
        async with self.diagnosing:
            finding = await asyncio.to_thread(self._diagnose, event)
        if finding is None:
            await send("No telemetry for this run in the lake yet: insufficient evidence to name a cause.",
                       done=True)
            return
        findings = finding.as_dict()
        for text in await asyncio.to_thread(lambda: list(self.backend.explain(findings))):
            await send(text)
        await send("", done=True, findings=findings)

    async def _opened_first(self, incident_id: str) -> None:
        """A short incident's open and resolve reach the two workers at once, and the resolve's chunk could take
        seq 0: the incident's stream would begin with "resolved". Its chunk waits until the open's first one has
        taken its seq (at most `OPEN_WAIT_S`: an open handled before this process started may leave no trace)."""
        key = SEQ_KEY.format(incident_id=incident_id)
        deadline = time.monotonic() + OPEN_WAIT_S
        while not await self.redis.exists(key) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _diagnose(self, event: dict) -> IncidentFinding | None:
        start = datetime.fromisoformat(event["start_ts"])
        deadline = time.monotonic() + EVIDENCE_WAIT_S
        while True:  # wait for the flow's commit by polling the event times only, then read the run once
            seen = delta.read(self.lake, "ticks", columns=["ts"], run_ids=[event["run_id"]])
            latest = None if seen is None or seen.num_rows == 0 else pc.max(seen["ts"]).as_py()
            if latest is not None and (latest >= start or time.monotonic() > deadline):
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        ticks = delta.read(self.lake, "ticks", run_ids=[event["run_id"]])
        assays = delta.read(self.lake, "assays", run_ids=[event["run_id"]])
        ev = gather(ticks, start, min(start + self.horizon, latest), assays,
                    {s: 1.0 for s in event["signals"]})
        return IncidentFinding(event | {"start_ts": start, "end_ts": None}, ev, rank(ev))


async def run_workers(nats_url: str, redis_url: str, lake: str, backend: Backend,
                      stop: asyncio.Event) -> Workers:
    workers = Workers(nats_url, redis_url, lake, backend)
    await workers.start()
    try:
        await stop.wait()
    finally:
        await workers.stop()
    return workers
