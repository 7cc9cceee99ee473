"""The agent workers on a real broker and cache: alerts -> incidents -> streamed explanations, in Delta too."""

from __future__ import annotations

import asyncio
import json

import nats

from agents.diagnose import incidents_of
from agents.llm import OfflineBackend
from agents.workers import HANDLED_KEEP, STATE_KEY, Workers
from core.events import TICKS
from core.services import redis_client
from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from sinks import delta
from sinks.nats_sink import alert_json
from tests.agent_helpers import NO_TICKS_WAIT_S, simulated


def _flow_messages(ticks) -> list[dict]:
    """What the flow publishes for this run: alerts and alarm clears, in event-time order."""
    monitor = ReactorMonitor(ticks["reactor_id"][0].as_py(), MonitorConfig.for_detector("fusion"))
    out, end = monitor.on_ticks(ticks), monitor.on_watermark(2**62)
    return sorted([*out.alerts, *end.alerts, *out.clears, *end.clears], key=lambda m: (m["ts"], "type" in m))


async def _scenario(nats_url: str, redis_url: str, lake: str, messages: list[dict],
                    expected_incidents: int) -> tuple[list, dict]:
    # two workers in the same queue groups share the load and the incident state (Redis)
    workers = [Workers(nats_url, redis_url, lake, OfflineBackend()) for _ in range(2)]
    for w in workers:
        await w.start()
    nc = await nats.connect(nats_url)
    incidents, chunks = [], {}
    finished: set[str] = set()

    async def on_incident(msg) -> None:  # noqa: ANN001
        incidents.append(json.loads(msg.data))

    async def on_chunk(msg) -> None:  # noqa: ANN001
        c = json.loads(msg.data)
        chunks.setdefault(c["incident_id"], []).append(c)
        if c["done"] and c["text"] == "":
            finished.add(c["incident_id"])

    def all_explained_and_resolved() -> bool:
        opened = {e["incident_id"] for e in incidents if e["event"] == "open"}
        resolved = {e["incident_id"] for e in incidents if e["event"] == "resolve"}
        return len(opened) >= expected_incidents and opened <= finished and opened <= resolved

    await nc.subscribe("biopilot.incidents.>", cb=on_incident)
    await nc.subscribe("biopilot.agent.>", cb=on_chunk)
    await nc.flush()
    js = nc.jetstream()
    redis = redis_client(redis_url)
    for i, m in enumerate(messages, start=1):
        await js.publish(f"biopilot.alerts.{m['reactor_id']}", alert_json(m))
        # the flow publishes a reactor's alerts and clears minutes of event time apart; published all at once,
        # two workers could take them out of order on a loaded machine, which is not what this test is about
        for _ in range(200):
            raw = await redis.get(STATE_KEY.format(reactor=m["reactor_id"]))
            if raw and len(json.loads(raw).get("handled", [])) >= min(i, HANDLED_KEEP):
                break
            await asyncio.sleep(0.02)
    await redis.aclose()
    # wait on the outcome, not a fixed time: a loaded CI machine opens the second incident late
    for _ in range(300):
        if all_explained_and_resolved():
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # room for a storm or a split to show up as extra incidents
    await nc.close()
    for w in workers:
        await w.stop()
    return incidents, chunks


def test_alerts_become_incidents_and_streamed_diagnoses(nats_server, redis_server, tmp_path):
    ticks, assays, labels = simulated("do_limitation")
    lake = str(tmp_path / "lake")
    delta.append(lake, "ticks", ticks, TICKS)
    messages = _flow_messages(ticks)
    expected = incidents_of(ticks)
    incidents, chunks = asyncio.run(_scenario(nats_server.url, redis_server.url, lake, messages,
                                                     len(expected)))

    opened = [e for e in incidents if e["event"] == "open"]
    assert len(opened) == len(expected)  # one excursion, one incident: no storm, no split across workers
    assert {e["incident_id"] for e in opened} == {e["incident_id"] for e, _ in expected}
    assert any(e["event"] == "resolve" for e in incidents)

    fault_window = labels[0]
    first = next(e for e in opened if e["start_ts"] >= fault_window.start_ts.isoformat())
    stream = sorted(chunks[first["incident_id"]], key=lambda c: c["seq"])
    assert [c["seq"] for c in stream] == list(range(len(stream)))
    assert stream[0]["text"].startswith(f"Incident {first['incident_id']} opened")
    assert any("Most likely cause: do_limitation" in c["text"] for c in stream)

    rows = delta.read(lake, "agent_messages")
    final = [json.loads(r["findings_json"]) for r in rows.to_pylist() if r["findings_json"]
             and r["incident_id"] == first["incident_id"]]
    assert final and final[0]["hypotheses"][0]["fault"] == "do_limitation"
    assert delta.read(lake, "incidents").num_rows == len(incidents)


def test_an_undecodable_alert_is_skipped_and_the_next_one_handled(nats_server, redis_server, tmp_path):
    ticks, _, _ = simulated("do_limitation")
    lake = str(tmp_path / "lake")
    delta.append(lake, "ticks", ticks, TICKS)

    async def go() -> list:
        w = Workers(nats_server.url, redis_server.url, lake, OfflineBackend())
        await w.start()
        nc = await nats.connect(nats_server.url)
        got = []

        async def on_incident(msg) -> None:  # noqa: ANN001
            got.append(json.loads(msg.data))

        await nc.subscribe("biopilot.incidents.>", cb=on_incident)
        await nc.flush()
        await nc.publish("biopilot.alerts.r1", b"{not json")
        await nc.publish("biopilot.alerts.r1", alert_json(_flow_messages(ticks)[0]))
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.1)
        await nc.close()
        await w.stop()
        return got

    got = asyncio.run(go())
    assert [e["event"] for e in got] == ["open"]


def test_an_incident_stream_begins_with_its_open_even_when_its_resolve_arrives_first(nats_server, redis_server,
                                                                                     tmp_path):
    # a short incident: its open and resolve reach two workers at once, and the resolve may be handled first
    ticks, _, _ = simulated("do_limitation")
    resolve = incidents_of(ticks)[0][0]
    opened = resolve | {"event": "open", "status": "open", "end_ts": None}

    async def go() -> list[dict]:
        w = Workers(nats_server.url, redis_server.url, str(tmp_path / "lake"), OfflineBackend(),
                    evidence_wait_s=NO_TICKS_WAIT_S)
        await w.start()
        nc = await nats.connect(nats_server.url)
        chunks: list[dict] = []

        async def on_chunk(msg) -> None:  # noqa: ANN001
            chunks.append(json.loads(msg.data))

        await nc.subscribe(f"biopilot.agent.{resolve['incident_id']}", cb=on_chunk)
        await nc.flush()
        await nc.publish("biopilot.incidents.r1", alert_json(resolve))
        await asyncio.sleep(0.3)
        await nc.publish("biopilot.incidents.r1", alert_json(opened))
        for _ in range(100):  # the open's diagnosis ends after the evidence wait (no telemetry in this lake)
            if sum(c["done"] for c in chunks) == 2:
                break
            await asyncio.sleep(0.1)
        await nc.close()
        await w.stop()
        return sorted(chunks, key=lambda c: c["seq"])

    stream = asyncio.run(go())
    assert [c["seq"] for c in stream] == list(range(len(stream)))
    assert stream[0]["text"].startswith(f"Incident {resolve['incident_id']} opened")
    assert stream[1]["text"].startswith(f"Incident {resolve['incident_id']} on r1 resolved")
