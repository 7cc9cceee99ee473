"""Outages, on the real stack (nats-server, redis-server, the dashboard, the agent workers): a hung Redis,
a dashboard or workers down while alerts flow, a language model that never ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import nats
import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeout

from agents.llm import OfflineBackend, OpenAIBackend
from agents.workers import MONITORING_DURABLE, Workers
from core.events import TICKS
from core.services import ManagedServer, redis_client
from dashboard.hub import Hub, Outgoing, stream_key
from dashboard.relay import REACTORS_KEY, RELAY_DURABLE, Outbox, Pending
from sinks import delta
from sources.publish import publish_ticks
from tests.agent_helpers import NO_TICKS_WAIT_S, simulated
from tests.dashboard_helpers import Events, alert_ids, make_alert, publish_alerts, read_events, wait_for


def _consumer(url: str, durable: str) -> tuple[int, int]:
    """(messages not yet delivered, delivered but not acked) of a durable consumer on ALERTS."""
    async def go() -> tuple[int, int]:
        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info("ALERTS", durable)
            return info.num_pending, info.num_ack_pending
        finally:
            await nc.close()
    return asyncio.run(go())


@contextmanager
def hung(server: ManagedServer) -> Iterator[None]:
    """The server's process stopped (SIGSTOP): connections open, nothing answered, until SIGCONT."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


# ---- a hung Redis -----------------------------------------------------------------------------------------

def test_a_hung_redis_stalls_neither_the_relay_nor_healthz_and_every_alert_gets_through(
        nats_server, redis_server, start_dashboard):
    ticks, _, _ = simulated("do_limitation")
    reactor = ticks["reactor_id"][0].as_py()
    with start_dashboard() as dash, dash.client("viewer") as c, dash.client(None) as anonymous:
        with c.stream("GET", "/api/stream/alerts") as response:
            stream = Events(response)
            time.sleep(0.3)  # the stream is registered before the alerts flow
            publish_alerts(nats_server.url, [make_alert(k) for k in range(5)])
            before = read_events(stream, 5, {"alert"})
            with hung(redis_server):
                t = time.monotonic()
                health = anonymous.get("/healthz")
                health_s = time.monotonic() - t
                publish_alerts(nats_server.url, [make_alert(k) for k in range(5, 25)])

                async def ticks_flow() -> None:
                    nc = await nats.connect(nats_server.url)
                    for k in range(50):
                        await publish_ticks(nc.jetstream(), reactor, ticks.slice(100 * k, 100))
                    await nc.close()
                asyncio.run(ticks_flow())
                # the relay took every alert from the broker although it cannot write them yet
                taken = wait_for(lambda: _consumer(nats_server.url, RELAY_DURABLE) == (0, 20), 5)
                time.sleep(max(0.0, 3.0 - (time.monotonic() - t)))
            during = read_events(stream, 20, {"alert"})
        reactors = wait_for(lambda: reactor in c.get("/api/reactors").json())  # the ticks' position, now written
        acked = wait_for(lambda: _consumer(nats_server.url, RELAY_DURABLE) == (0, 0))
    assert health.status_code == 200 and health_s < 2.0, health_s
    assert health.json()["status"] == "degraded" and health.json()["redis"] is False
    assert "redis down" in health.json()["problems"]
    assert taken and reactors and acked
    assert alert_ids(before + during) == [f"a{k}" for k in range(25)]  # all, in order, none twice


def test_a_write_retried_after_a_redis_timeout_is_not_added_twice(redis_server):
    async def go() -> list:
        client = redis_client(redis_server.url, socket_timeout_s=0.5)
        hub = Hub(client)
        batch = [Outgoing("alerts", json.dumps({"alert_id": f"a{k}"})) for k in range(3)]
        with hung(redis_server), pytest.raises(RedisTimeout):
            await hub.write(batch)  # sent, unanswered: Redis runs it when it wakes
        await asyncio.sleep(0.2)
        await hub.write(batch)  # the retry of the same batch
        entries = await client.xrange(stream_key("alerts"))
        await client.aclose()
        return entries

    entries = asyncio.run(go())
    assert [json.loads(fields[b"data"])["alert_id"] for _, fields in entries] == ["a0", "a1", "a2"]


def test_a_full_outbox_drops_the_oldest_telemetry_and_refuses_the_rest():
    outbox = Outbox(max_telemetry=2, max_other=2)
    for k in range(4):
        assert outbox.put(Pending("telemetry", str(k)))
    assert outbox.put(Pending("alerts", "a")) and outbox.put(Pending("agents", "b"))
    assert not outbox.put(Pending("alerts", "c"))  # left to JetStream to deliver again, not lost
    assert outbox.dropped_telemetry == 2
    assert [p.data for p in outbox.take(10)] == ["a", "b", "2", "3"]  # alerts first, then the latest ticks


# ---- durable consumers ------------------------------------------------------------------------------------

def test_alerts_published_while_the_dashboard_was_down_reach_its_stream(nats_server, start_dashboard,
                                                                        tmp_path):
    lake = tmp_path / "lake"
    with start_dashboard(lake) as dash, dash.client("viewer") as c, \
            c.stream("GET", "/api/stream/alerts") as stream:
        time.sleep(0.3)
        publish_alerts(nats_server.url, [make_alert(k) for k in range(3)])
        first = read_events(Events(stream), 3, {"alert"})
    publish_alerts(nats_server.url, [make_alert(k) for k in range(3, 10)])  # no dashboard running
    with start_dashboard(lake) as dash, dash.client("viewer") as c, \
            c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": first[-1]["id"]}) as stream:
        rest = read_events(Events(stream), 7, {"alert"})
    assert alert_ids(first + rest) == [f"a{k}" for k in range(10)]


async def _until(predicate: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _incident_events(url: str) -> tuple[nats.NATS, list[dict]]:
    """A connection collecting every incident event published from now on."""
    nc = await nats.connect(url)
    got: list[dict] = []

    async def on_incident(msg) -> None:  # noqa: ANN001
        got.append(json.loads(msg.data))

    await nc.subscribe("biopilot.incidents.>", cb=on_incident)
    await nc.flush()
    return nc, got


def test_alerts_published_while_the_workers_were_down_open_incidents_when_they_return(
        nats_server, redis_server, tmp_path):
    lake = str(tmp_path / "lake")

    async def go() -> list[dict]:
        first = Workers(nats_server.url, redis_server.url, lake, OfflineBackend())
        await first.start()  # the workers ran once (their consumers exist) and are down when the alerts come
        await first.stop()
        nc, got = await _incident_events(nats_server.url)
        js = nc.jetstream()
        for alert in (make_alert(1), make_alert(2, reactor="r2")):
            await js.publish(f"biopilot.alerts.{alert['reactor_id']}", json.dumps(alert).encode())
        again = Workers(nats_server.url, redis_server.url, lake, OfflineBackend(),
                        evidence_wait_s=NO_TICKS_WAIT_S)
        await again.start()
        await _until(lambda: len(got) >= 2)
        await again.stop()
        await nc.close()
        return got

    opened = asyncio.run(go())
    assert sorted((e["event"], e["reactor_id"]) for e in opened) == [("open", "r1"), ("open", "r2")]


def test_a_redelivered_alert_changes_no_incident(nats_server, redis_server, tmp_path):
    # a1 opens an incident; a600, ten hours later on another signal, resolves it and opens a second. a1 again
    # (its ack lost, JetStream delivers it anew) must change nothing: without the guard it joins the second.
    first = make_alert(1)
    later = make_alert(600, signals=[{"name": "ph", "contribution": 0.9}])

    async def go() -> list[dict]:
        w = Workers(nats_server.url, redis_server.url, str(tmp_path / "lake"), OfflineBackend(),
                    evidence_wait_s=NO_TICKS_WAIT_S)
        await w.start()
        nc, got = await _incident_events(nats_server.url)
        await w._monitor(first, 1)
        await w._monitor(later, 2)
        await _until(lambda: len(got) >= 3)
        await w._monitor(first, 1)
        await asyncio.sleep(0.5)
        await nc.close()
        await w.stop()
        return got

    events = asyncio.run(go())
    assert [e["event"] for e in events] == ["open", "resolve", "open"]


def test_a_poison_alert_is_given_up_after_a_few_deliveries_and_the_next_one_handled(nats_server, redis_server,
                                                                                   tmp_path, caplog):
    async def go() -> tuple[list[dict], tuple[int, int]]:
        w = Workers(nats_server.url, redis_server.url, str(tmp_path / "lake"), OfflineBackend(), retry_s=0.05,
                    evidence_wait_s=NO_TICKS_WAIT_S)
        await w.start()
        nc, got = await _incident_events(nats_server.url)
        js = nc.jetstream()
        await js.publish("biopilot.alerts.r1", json.dumps(make_alert(1, ts="not a time")).encode())
        await js.publish("biopilot.alerts.r2", json.dumps(make_alert(2, reactor="r2")).encode())
        await _until(lambda: got and "giving up" in caplog.text)
        info = await js.consumer_info("ALERTS", MONITORING_DURABLE)
        await nc.close()
        await w.stop()
        return got, (info.num_pending, info.num_ack_pending)

    got, (waiting, unacked) = asyncio.run(go())
    assert [(e["event"], e["reactor_id"]) for e in got] == [("open", "r2")]
    assert "giving up on alert 1 after 5 deliveries" in caplog.text
    assert waiting == 0 and unacked == 0  # the poison alert is settled, not redelivered forever


def test_every_key_the_dashboard_and_workers_write_expires(nats_server, redis_server, start_dashboard,
                                                           tmp_path):
    ticks = simulated("do_limitation")[0].slice(0, 2000)
    lake = tmp_path / "lake"
    delta.append(str(lake), "ticks", ticks, TICKS)
    reactor, run_id = ticks["reactor_id"][0].as_py(), ticks["run_id"][0].as_py()
    alert = make_alert(1, reactor=reactor, run_id=run_id, ts=ticks["ts"][1000].as_py().isoformat())
    cache = redis.Redis.from_url(redis_server.url)

    async def go() -> None:
        w = Workers(nats_server.url, redis_server.url, str(lake), OfflineBackend())
        await w.start()
        nc = await nats.connect(nats_server.url)
        await publish_ticks(nc.jetstream(), reactor, ticks.slice(0, 100))
        await nc.jetstream().publish(f"biopilot.alerts.{reactor}", json.dumps(alert).encode())
        await _until(lambda: cache.keys("biopilot:explained:*") and cache.exists(REACTORS_KEY), 15)
        await nc.close()
        await w.stop()

    with start_dashboard(lake):
        asyncio.run(go())
    keys = {k.decode(): cache.ttl(k) for k in cache.keys("biopilot:*")}
    cache.close()
    kinds = {k.split(":")[1] for k in keys}
    assert kinds >= {"reactors", "incidents", "agent-seq", "explained", "sse"}, keys
    assert all(ttl > 0 for ttl in keys.values()), keys


# ---- a language model that never ends ---------------------------------------------------------------------

FINDING = {"incident_id": "inc42", "reactor_id": "r2", "start_ts": "2026-01-11T12:20:00+00:00",
           "end_ts": None, "severity": "warning", "alert_count": 1, "signals": ["do_pct"], "abstained": False,
           "facts": [],
           "hypotheses": [{"fault": "do_limitation", "confidence": 0.66, "match": 0.95,
                           "root_cause": "oxygen transfer limited", "action": "check the O2 supply",
                           "evidence": ["do_pct read 3.2 % air sat. at 2026-01-11 13:29 UTC"]}]}


def test_an_answer_that_dribbles_forever_is_cut_at_the_deadline_and_falls_back(fake_openai_server):
    url, _ = fake_openai_server({"kind": "dribble"})
    answer: list[str] = []
    # built before the clock starts: its first import of langchain_openai alone takes seconds on a loaded machine
    backend = OpenAIBackend("local-model", url, None, timeout_s=2)
    t = time.monotonic()
    reader = threading.Thread(target=lambda: answer.extend(backend.explain(FINDING)), daemon=True)
    reader.start()
    reader.join(10)
    took_s = time.monotonic() - t
    # the thread reading the endpoint stops at its next token, closing the stream
    closed = wait_for(lambda: not any(t.name == "llm-stream" for t in threading.enumerate()), 3)
    assert not reader.is_alive(), "the answer never ended"
    assert took_s < 4, took_s
    assert closed
    text = "".join(answer)
    assert text.startswith("still thinking") and "".join(OfflineBackend().explain(FINDING)) in text
