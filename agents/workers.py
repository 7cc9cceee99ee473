"""The agent workers on NATS: monitoring (alerts -> incidents) and troubleshooting (incidents -> explanations).

Both read the JetStream `ALERTS` stream through durable consumers with a deliver group (`MONITORING_DURABLE`,
`TROUBLESHOOTING_DURABLE`), so several `biopilot agents` processes share the load, and alerts published while
every worker was down are handled when one comes back. A message is acked once handled; one that fails on an
outage (Redis, NATS) is redelivered until it goes through, one that fails otherwise is given up (terminated,
logged) after `POISON_DELIVERIES` tries. Redelivery is safe: the incident tracker's state lives in Redis under
a per-reactor lock with the stream sequences it has handled, so whichever worker gets a reactor's next alert
carries on from the same incidents and a redelivered alert changes nothing; an explanation is not sent twice.
The troubleshooting worker sends a first chunk at once (what opened, which signals drove it), then reads the
run's ticks from the lake, ranks the causes and streams the backend's explanation to
`biopilot.agent.<incident_id>`. For the patient plant (`plant`, from `Settings.plant`) it reads the patient's
vitals, labs, doses and covariates instead and ranks with the patient knowledge base (`agents.patient_diagnose`). Every incident event and chunk is also written to Delta (`incidents`,
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
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError
from redis.exceptions import RedisError

from agents.diagnose import HORIZON, IncidentFinding, load_recipe_context, previous_end_stored, recipe_of
from agents.evidence import gather
from agents.incidents import IncidentTracker
from agents.llm import Backend, OfflineBackend
from agents.troubleshooting import rank
from core.config import load_settings
from core.plants import PLANTS
from core.services import connect_nats, redis_client, wait_nats
from outcomes.drift import MODEL_UNIT
from sinks import delta
from sinks.nats_sink import alert_json
from sinks.table_writer import TableWriter

log = logging.getLogger(__name__)
STATE_KEY = "biopilot:incidents:{reactor}"
SEQ_KEY = "biopilot:agent-seq:{incident_id}"
EXPLAINED_KEY = "biopilot:explained:{incident_id}:{event}:{version}"  # set once its explanation is sent
# an incident can stay open for days, a redelivery come as late as the stream keeps it: refreshed on write
KEY_TTL_S = 7 * 86400
HANDLED_KEEP = 256  # stream sequences of the latest alerts a reactor's state remembers (to skip redeliveries)
MONITORING_DURABLE = "biopilot-monitoring"
TROUBLESHOOTING_DURABLE = "biopilot-troubleshooting"
ACK_WAIT_S = 30.0  # a message still being handled tells JetStream so every third of this
POISON_DELIVERIES = 5
RETRY_MAX_S = 30.0
OUTAGES = (RedisError, nats.errors.Error, OSError)  # retried without limit: the message is not at fault
# how long to wait for the flow to commit the ticks around a new incident: on a loaded machine its commits lag
# the alerts by more than 5 s, and evidence read before them is empty (the first chunk does not wait for it)
EVIDENCE_WAIT_S = 30.0
BROKER_WAIT_S = 15.0
OPEN_WAIT_S = 5.0  # how long an incident's resolve waits for its open's first chunk (another worker's)


@dataclass
class Workers:
    nats_url: str
    redis_url: str
    lake: str
    backend: Backend = field(default_factory=OfflineBackend)
    horizon: timedelta = HORIZON
    retry_s: float = 1.0  # redelivery delay after a failure, doubling with each delivery up to RETRY_MAX_S
    plant: str = "bioreactor"  # whose tables and knowledge base explain an incident (`Settings.plant`)
    evidence_wait_s: float = EVIDENCE_WAIT_S  # shortened by tests whose lake never gets the incident's ticks
    broker_wait_s: float = BROKER_WAIT_S  # how long a broker that is still starting is waited for

    async def start(self) -> None:
        await asyncio.to_thread(wait_nats, self.nats_url, self.broker_wait_s)
        self.nc = await connect_nats(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.js = self.nc.jetstream()
        self.redis = redis_client(self.redis_url)
        self.writer = TableWriter(self.lake)
        self.tasks: set[asyncio.Task] = set()
        self.diagnosing = asyncio.Semaphore(4)  # lake reads in parallel, bounded
        self.writer.task = asyncio.create_task(self.writer.run())
        self.subs = [
            await self._durable("biopilot.alerts.>", MONITORING_DURABLE, self._on_alert, 1000),
            await self._durable("biopilot.incidents.>", TROUBLESHOOTING_DURABLE, self._on_incident, 64)]

    async def _durable(self, subject: str, name: str, cb, max_ack_pending: int):  # noqa: ANN001, ANN202
        """Bind to the shared durable consumer `name`, creating it (new messages only) if it is not there."""
        async def subscribe():  # noqa: ANN202
            config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S, max_deliver=-1,
                                    max_ack_pending=max_ack_pending)
            return await self.js.subscribe(subject, queue=name, stream="ALERTS", cb=cb, manual_ack=True,
                                           config=config, deliver_policy=DeliverPolicy.NEW)

        try:
            return await subscribe()
        except BadRequestError:  # another worker created it at the same moment: bind to theirs
            return await subscribe()

    async def _handle(self, msg: Msg, work, what: str, required: tuple[str, ...]) -> None:  # noqa: ANN001
        """`await work(message, stream_seq)`, then ack; on failure, nak (retried later) or, for a message at
        fault, term after `POISON_DELIVERIES` tries. Tells JetStream it is in progress while `work` runs."""
        try:
            message = json.loads(msg.data)
            if not isinstance(message, dict):
                raise ValueError("not a JSON object")
            if missing := [k for k in required if k not in message]:
                raise ValueError(f"no {', '.join(missing)}")
        except (ValueError, TypeError) as err:  # it will never decode: no point retrying
            log.warning("ignoring an undecodable %s on %s: %s", what, msg.subject, err)
            await msg.term()
            return
        meta = msg.metadata
        retry_s = min(RETRY_MAX_S, self.retry_s * 2 ** min(meta.num_delivered - 1, 16))
        alive = asyncio.create_task(self._in_progress(msg))
        try:
            await work(message, meta.sequence.stream)
        except OUTAGES as err:
            log.warning("%s %d: %s; it will be redelivered", what, meta.sequence.stream, err)
            await msg.nak(delay=retry_s)
            return
        except Exception:
            if meta.num_delivered >= POISON_DELIVERIES:
                log.exception("giving up on %s %d after %d deliveries: %s", what, meta.sequence.stream,
                              meta.num_delivered, msg.data[:500])
                await msg.term()
            else:
                log.exception("%s %d failed (delivery %d); it will be redelivered", what,
                              meta.sequence.stream, meta.num_delivered)
                await msg.nak(delay=retry_s)
            return
        finally:
            alive.cancel()
        await msg.ack()

    @staticmethod
    async def _in_progress(msg: Msg) -> None:
        while True:
            await asyncio.sleep(ACK_WAIT_S / 3)
            await msg.in_progress()

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
        await self._handle(msg, self._monitor, "alert", ("reactor_id", "alert_id"))

    async def _monitor(self, message: dict, stream_seq: int) -> None:
        reactor = message["reactor_id"]
        key = STATE_KEY.format(reactor=reactor)
        async with self.redis.lock(f"{key}:lock", timeout=10, blocking_timeout=10):
            raw = await self.redis.get(key)
            state = json.loads(raw) if raw else {}
            handled = state.get("handled", [])
            if stream_seq in handled:  # redelivered after it was handled (its ack was lost)
                return
            tracker = IncidentTracker.from_json(state)
            events = tracker.on_clear(message) if message.get("type") == "clear" else tracker.on_alert(message)
            # published before the state is saved: a crash in between handles the alert again from the old
            # state, to the same events, which JetStream de-duplicates by their id
            for event in events:
                await self.js.publish(f"biopilot.incidents.{reactor}", alert_json(event),
                                      headers={"Nats-Msg-Id": f"{event['incident_id']}-{event['version']}"})
                self.writer.put("incidents", event)
            state = tracker.to_json() | {"handled": [*handled, stream_seq][-HANDLED_KEEP:]}
            await self.redis.set(key, json.dumps(state), ex=KEY_TTL_S)

    # ---- troubleshooting ---------------------------------------------------------------------------------
    async def _on_incident(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one after another: the diagnosis (lake reads) runs as its
        # own task so the next incident's first chunk does not wait for it
        task = asyncio.create_task(self._handle(msg, self._troubleshoot, "incident",
                                                ("incident_id", "event", "version", "reactor_id")))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _troubleshoot(self, event: dict, _stream_seq: int) -> None:
        if event["reactor_id"] == MODEL_UNIT:  # the outcome model's drift: the risk worker explains its own
            return
        if event["event"] not in ("open", "resolve") and not self._news(event):
            return
        explained = EXPLAINED_KEY.format(incident_id=event["incident_id"], event=event["event"],
                                         version=event["version"])
        if await self.redis.exists(explained):  # redelivered after it was explained (its ack was lost)
            return
        await self._explain(event)
        await self.redis.set(explained, 1, ex=KEY_TTL_S)

    async def _explain(self, event: dict) -> None:
        incident_id = event["incident_id"]

        async def send(text: str, done: bool = False, findings: dict | None = None) -> None:
            # one sequence per incident across its events and workers
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(SEQ_KEY.format(incident_id=incident_id))
                pipe.expire(SEQ_KEY.format(incident_id=incident_id), KEY_TTL_S)
                seq = (await pipe.execute())[0] - 1
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
        lead = ", ".join(event["signals"]) or "several signals"
        if event["event"] == "update":
            await send(f"Incident {incident_id} on {event['reactor_id']} has a new alert at {event['last_ts']} "
                       f"({event['severity']}, {event['alert_count']} alerts), driven by {lead}. Gathering "
                       f"evidence...")
        else:
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

    def _news(self, event: dict) -> bool:
        """A patient's incident updated by an alert past what its first explanation saw (an INR incident lasts
        weeks: amiodarone started, or doses missed, days into it): explained again, from that alert on."""
        if self.plant != "patient" or event["event"] != "update" or not event.get("last_ts"):
            return False
        from agents.patient_diagnose import HORIZON as PATIENT_HORIZON

        return (datetime.fromisoformat(event["last_ts"]) - datetime.fromisoformat(event["start_ts"])
                > PATIENT_HORIZON)

    async def _opened_first(self, incident_id: str) -> None:
        """A short incident's open and resolve reach the two workers at once, and the resolve's chunk could take
        seq 0: the incident's stream would begin with "resolved". Its chunk waits until the open's first one has
        taken its seq (at most `OPEN_WAIT_S`: an open handled before this process started may leave no trace)."""
        key = SEQ_KEY.format(incident_id=incident_id)
        deadline = time.monotonic() + OPEN_WAIT_S
        while not await self.redis.exists(key) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _diagnose(self, event: dict) -> IncidentFinding | None:
        start = datetime.fromisoformat(event["last_ts" if event["event"] == "update" else "start_ts"])
        deadline = time.monotonic() + self.evidence_wait_s
        ticks_table = PLANTS[self.plant].ticks_table
        while True:  # wait for the flow's commit by polling the event times only, then read the run once
            seen = delta.read(self.lake, ticks_table, columns=["ts"], run_ids=[event["run_id"]])
            latest = None if seen is None or seen.num_rows == 0 else pc.max(seen["ts"]).as_py()
            if latest is not None and (latest >= start or time.monotonic() > deadline):
                break
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)
        if self.plant == "patient":
            from agents.patient_diagnose import HORIZON as PATIENT_HORIZON
            from agents.patient_diagnose import explain_incident

            return explain_incident(self.lake, event, start, min(start + PATIENT_HORIZON, latest))
        ticks = delta.read(self.lake, "ticks", run_ids=[event["run_id"]])
        assays = delta.read(self.lake, "assays", run_ids=[event["run_id"]])
        recipes, annotations = load_recipe_context(self.lake, event["run_id"])
        ev = gather(ticks, start, min(start + self.horizon, latest), assays,
                    {s: 1.0 for s in event["signals"]}, recipe=recipe_of(recipes), annotations=annotations,
                    after_ts=previous_end_stored(self.lake, event | {"start_ts": start}))
        return IncidentFinding(event | {"start_ts": start, "end_ts": None}, ev, rank(ev))


async def run_workers(nats_url: str, redis_url: str, lake: str, backend: Backend,
                      stop: asyncio.Event, plant: str | None = None, broker_wait_s: float = BROKER_WAIT_S) -> Workers:
    """The workers until `stop`; `plant` (default: the settings' `plant`) picks the knowledge base. For the patient
    plant, the live risk scoring too (`agents.risk_worker`)."""
    workers = Workers(nats_url, redis_url, lake, backend, plant=plant or load_settings().plant,
                      broker_wait_s=broker_wait_s)
    await workers.start()
    risk = None
    if workers.plant == "patient":
        from agents.risk_worker import RiskWorker  # torch: loaded for the patient plant only

        risk = RiskWorker(nats_url, redis_url, lake, live_retrain_patients=load_settings().live_retrain_patients)
        try:
            await risk.start()
        except Exception:  # noqa: BLE001 - no model, or one this code cannot load: the other workers go on
            log.exception("live risk scoring off: the outcome model did not load")
            risk = None
    try:
        await stop.wait()
    finally:
        if risk is not None:
            await risk.stop()
        await workers.stop()
    return workers
