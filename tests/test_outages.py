"""Outages, on the real stack (nats-server, redis-server, the dashboard, the agent workers): a hung Redis,
a dashboard or workers down while alerts flow, stream caps, odd Last-Event-IDs, a language model that never
ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
import nats
import pytest
import redis
from redis.exceptions import TimeoutError as RedisTimeout

from agents.llm import OfflineBackend, OpenAIBackend
from agents.workers import MONITORING_DURABLE, Workers
from biopilot.events import TICKS
from biopilot.services import ManagedServer, redis_client
from dashboard.hub import Hub, Outgoing, stream_key
from dashboard.relay import REACTORS_KEY, RELAY_DURABLE, Outbox, Pending
from sinks import delta
from sources.publish import publish_ticks
from tests.agent_helpers import simulated
from tests.dashboard_helpers import running_dashboard, sse_events, wait_for
from tests.llm_helpers import fake_openai_server

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _alert(k: int, reactor: str = "r1", **extra: object) -> dict:
    return {"alert_id": f"a{k}", "run_id": "run", "reactor_id": reactor,
            "ts": (T0 + timedelta(minutes=k)).isoformat(), "severity": "warning", "detector": "fusion",
            "score": 1.5, "signals": [{"name": "do_pct", "contribution": 0.8}]} | extra


def _publish(url: str, messages: list[dict], subject: str = "biopilot.alerts.r1") -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for m in messages:
            await js.publish(subject, json.dumps(m).encode())  # acked: stored in ALERTS
        await nc.close()
    asyncio.run(go())


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


class Events:
    """An SSE response read in several goes (httpx streams a body once: every go continues the same lines)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code, self.lines = response.status_code, response.iter_lines()

    def iter_lines(self) -> Iterator[str]:
        return self.lines


def _read(events: Events, n: int, names: set[str] | None = None, timeout_s: float = 15.0) -> list[dict]:
    """`n` SSE events, or fail after `timeout_s` (heartbeats would keep a plain read waiting forever)."""
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(sse_events(events, n, names)), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert not reader.is_alive(), f"fewer than {n} events within {timeout_s} s"
    return got


def _alert_ids(events: list[dict]) -> list[str]:
    return [json.loads(e["data"])["alert_id"] for e in events]


# ---- a hung Redis -----------------------------------------------------------------------------------------

def test_a_hung_redis_stalls_neither_the_relay_nor_healthz_and_every_alert_gets_through(
        nats_server, redis_server, tmp_path):
    ticks, _, _ = simulated("do_limitation")
    reactor = ticks["reactor_id"][0].as_py()
    with running_dashboard(nats_server.url, redis_server.url, tmp_path / "lake") as dash, \
            dash.client("viewer") as c, dash.client(None) as anonymous:
        with c.stream("GET", "/api/stream/alerts") as response:
            stream = Events(response)
            time.sleep(0.3)  # the stream is registered before the alerts flow
            _publish(nats_server.url, [_alert(k) for k in range(5)])
            before = _read(stream, 5, {"alert"})
            with hung(redis_server):
                t = time.monotonic()
                health = anonymous.get("/healthz")
                health_s = time.monotonic() - t
                _publish(nats_server.url, [_alert(k) for k in range(5, 25)])

                async def ticks_flow() -> None:
                    nc = await nats.connect(nats_server.url)
                    for k in range(50):
                        await publish_ticks(nc.jetstream(), reactor, ticks.slice(100 * k, 100))
                    await nc.close()
                asyncio.run(ticks_flow())
                # the relay took every alert from the broker although it cannot write them yet
                taken = wait_for(lambda: _consumer(nats_server.url, RELAY_DURABLE) == (0, 20), 5)
                time.sleep(max(0.0, 3.0 - (time.monotonic() - t)))
            during = _read(stream, 20, {"alert"})
        reactors = wait_for(lambda: reactor in c.get("/api/reactors").json())  # the ticks' position, now written
        acked = wait_for(lambda: _consumer(nats_server.url, RELAY_DURABLE) == (0, 0))
    assert health.status_code == 200 and health_s < 2.0, health_s
    assert health.json()["status"] == "degraded" and health.json()["redis"] is False
    assert "redis down" in health.json()["problems"]
    assert taken and reactors and acked
    assert _alert_ids(before + during) == [f"a{k}" for k in range(25)]  # all, in order, none twice


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

def test_alerts_published_while_the_dashboard_was_down_reach_its_stream(nats_server, redis_server, tmp_path):
    lake = tmp_path / "lake"
    with running_dashboard(nats_server.url, redis_server.url, lake) as dash, dash.client("viewer") as c, \
            c.stream("GET", "/api/stream/alerts") as stream:
        time.sleep(0.3)
        _publish(nats_server.url, [_alert(k) for k in range(3)])
        first = _read(Events(stream), 3, {"alert"})
    _publish(nats_server.url, [_alert(k) for k in range(3, 10)])  # no dashboard running
    with running_dashboard(nats_server.url, redis_server.url, lake) as dash, dash.client("viewer") as c, \
            c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": first[-1]["id"]}) as stream:
        rest = _read(Events(stream), 7, {"alert"})
    assert _alert_ids(first + rest) == [f"a{k}" for k in range(10)]


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
        for alert in (_alert(1), _alert(2, reactor="r2")):
            await js.publish(f"biopilot.alerts.{alert['reactor_id']}", json.dumps(alert).encode())
        again = Workers(nats_server.url, redis_server.url, lake, OfflineBackend())
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
    first = _alert(1)
    later = _alert(600, signals=[{"name": "ph", "contribution": 0.9}])

    async def go() -> list[dict]:
        w = Workers(nats_server.url, redis_server.url, str(tmp_path / "lake"), OfflineBackend())
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
        w = Workers(nats_server.url, redis_server.url, str(tmp_path / "lake"), OfflineBackend(), retry_s=0.05)
        await w.start()
        nc, got = await _incident_events(nats_server.url)
        js = nc.jetstream()
        await js.publish("biopilot.alerts.r1", json.dumps(_alert(1, ts="not a time")).encode())
        await js.publish("biopilot.alerts.r2", json.dumps(_alert(2, reactor="r2")).encode())
        await _until(lambda: got and "giving up" in caplog.text)
        info = await js.consumer_info("ALERTS", MONITORING_DURABLE)
        await nc.close()
        await w.stop()
        return got, (info.num_pending, info.num_ack_pending)

    got, (waiting, unacked) = asyncio.run(go())
    assert [(e["event"], e["reactor_id"]) for e in got] == [("open", "r2")]
    assert "giving up on alert 1 after 5 deliveries" in caplog.text
    assert waiting == 0 and unacked == 0  # the poison alert is settled, not redelivered forever


def test_every_key_the_dashboard_and_workers_write_expires(nats_server, redis_server, tmp_path):
    ticks = simulated("do_limitation")[0].slice(0, 2000)
    lake = tmp_path / "lake"
    delta.append(str(lake), "ticks", ticks, TICKS)
    reactor, run_id = ticks["reactor_id"][0].as_py(), ticks["run_id"][0].as_py()
    alert = _alert(1, reactor=reactor, run_id=run_id, ts=ticks["ts"][1000].as_py().isoformat())
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

    with running_dashboard(nats_server.url, redis_server.url, lake):
        asyncio.run(go())
    keys = {k.decode(): cache.ttl(k) for k in cache.keys("biopilot:*")}
    cache.close()
    kinds = {k.split(":")[1] for k in keys}
    assert kinds >= {"reactors", "incidents", "agent-seq", "explained", "sse"}, keys
    assert all(ttl > 0 for ttl in keys.values()), keys


# ---- caps and odd input on the streams --------------------------------------------------------------------

def test_sse_streams_are_capped_per_token_and_a_closed_one_frees_its_slot(nats_server, redis_server,
                                                                           tmp_path):
    with running_dashboard(nats_server.url, redis_server.url, tmp_path / "lake",
                           sse_max_per_token=2) as dash, \
            dash.client("viewer") as c, dash.client("operator") as other:
        with c.stream("GET", "/api/stream/alerts") as one, c.stream("GET", "/api/stream/telemetry") as two:
            assert one.status_code == two.status_code == 200
            with c.stream("GET", "/api/stream/incidents") as three:
                refused, body = three.status_code, json.loads(three.read())
            with other.stream("GET", "/api/stream/incidents") as elsewhere:  # another token has its own slots
                assert elsewhere.status_code == 200

        def reopened() -> bool:
            with c.stream("GET", "/api/stream/incidents") as again:
                return again.status_code == 200

        freed = wait_for(reopened, 5)
    assert refused == 429 and "too many SSE streams" in body["detail"]
    assert freed


@pytest.mark.parametrize("bad", ["abc", "-1", "99999999999999999999999-0",
                                 pytest.param("1" * 300, id="300-digits")])
def test_a_malformed_last_event_id_is_answered_400(nats_server, redis_server, tmp_path, bad):
    with running_dashboard(nats_server.url, redis_server.url, tmp_path / "lake") as dash, \
            dash.client("viewer") as c:
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": bad}) as header:
            by_header = header.status_code, json.loads(header.read())
        with c.stream("GET", "/api/stream/agents", params={"last_event_id": bad}) as query:
            by_query = query.status_code, json.loads(query.read())
    for status, body in (by_header, by_query):
        assert status == 400 and "Last-Event-ID" in body["detail"]


def test_an_ancient_last_event_id_gets_what_the_buffer_has_and_a_missed_note(nats_server, redis_server,
                                                                            tmp_path):
    cache = redis.Redis.from_url(redis_server.url)
    with running_dashboard(nats_server.url, redis_server.url, tmp_path / "lake") as dash, \
            dash.client("viewer") as c:
        _publish(nats_server.url, [_alert(k) for k in range(6)])
        assert wait_for(lambda: cache.xlen(stream_key("alerts")) == 6)
        oldest = cache.xrange(stream_key("alerts"), count=1)[0][0].decode()
        cache.xtrim(stream_key("alerts"), maxlen=3, approximate=False)  # its id and the two after it go
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": oldest}) as stream:
            events = _read(Events(stream), 4, {"alert", "missed"})
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": "99999999999999-0"}) as future:
            time.sleep(0.3)
            _publish(nats_server.url, [_alert(6)])
            live = _read(Events(future), 1, {"alert"})  # an id never issued resumes from the live edge
    cache.close()
    assert events[0]["event"] == "missed" and json.loads(events[0]["data"])["after"] == oldest
    assert _alert_ids(events[1:]) == ["a3", "a4", "a5"]
    assert _alert_ids(live) == ["a6"]


@pytest.mark.parametrize("query", ["reactor=%3Cscript%3E", "detector=a%20b",
                                   pytest.param("incident=" + "x" * 200, id="incident-200-chars")])
def test_stream_filters_must_be_ids(nats_server, redis_server, tmp_path, query):
    path = "/api/stream/agents" if query.startswith("incident") else "/api/stream/alerts"
    with running_dashboard(nats_server.url, redis_server.url, tmp_path / "lake") as dash, \
            dash.client("viewer") as c, c.stream("GET", f"{path}?{query}") as r:
        assert r.status_code == 422 and "pattern" in json.loads(r.read())["message"]


# ---- language model and chat ------------------------------------------------------------------------------

FINDING = {"incident_id": "inc42", "reactor_id": "r2", "start_ts": "2026-01-11T12:20:00+00:00",
           "end_ts": None, "severity": "warning", "alert_count": 1, "signals": ["do_pct"], "abstained": False,
           "facts": [],
           "hypotheses": [{"fault": "do_limitation", "confidence": 0.66, "match": 0.95,
                           "root_cause": "oxygen transfer limited", "action": "check the O2 supply",
                           "evidence": ["do_pct read 3.2 % air sat. at 2026-01-11 13:29 UTC"]}]}


def test_an_answer_that_dribbles_forever_is_cut_at_the_deadline_and_falls_back():
    with fake_openai_server({"kind": "dribble"}) as (url, _):
        answer: list[str] = []
        t = time.monotonic()
        reader = threading.Thread(target=lambda: answer.extend(
            OpenAIBackend("local-model", url, None, timeout_s=2).explain(FINDING)), daemon=True)
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


def test_chat_answers_are_capped_per_user(nats_server, redis_server, tmp_path, monkeypatch):
    ticks, _, _ = simulated("do_limitation")
    lake = tmp_path / "lake"
    delta.append(str(lake), "ticks", ticks.slice(0, 2000), TICKS)  # a short run: quick to diagnose
    question = {"question": "why did DO drop?", "run_id": ticks["run_id"][0].as_py()}
    with fake_openai_server({"kind": "dribble"}) as (url, _):
        monkeypatch.setenv("OPENAI_BASE_URL", url)
        with running_dashboard(nats_server.url, redis_server.url, lake, llm="openai", llm_timeout_s=3,
                               chat_max_per_user=1) as dash, \
                dash.client("viewer") as c, dash.client("operator") as other:
            with c.stream("POST", "/api/chat", json=question) as response:
                answering = Events(response)
                assert answering.status_code == 200
                _read(answering, 1, {"chunk"})  # the answer is streaming
                with c.stream("POST", "/api/chat", json=question) as second:
                    refused, body = second.status_code, json.loads(second.read())
                with other.stream("POST", "/api/chat", json=question) as elsewhere:
                    other_user = elsewhere.status_code
                finished = _read(answering, 1, {"done"}, timeout_s=10)

            def answered() -> bool:
                with c.stream("POST", "/api/chat", json=question) as again:
                    return again.status_code == 200

            after = wait_for(answered, 5)
    assert refused == 429 and "too many chat answers" in body["detail"]
    assert other_user == 200 and finished and after
