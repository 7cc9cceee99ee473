"""Caps and odd input on the dashboard's streams, on the real stack: SSE streams per token, malformed and
ancient Last-Event-IDs, filters that must be ids, chat answers per user."""

from __future__ import annotations

import json
import time

import pytest
import redis

from core.events import TICKS
from dashboard.hub import stream_key
from sinks import delta
from tests.agent_helpers import simulated
from tests.dashboard_helpers import Events, alert_ids, make_alert, publish_alerts, read_events, wait_for

# ---- SSE streams ------------------------------------------------------------------------------------------

def test_sse_streams_are_capped_per_token_and_a_closed_one_frees_its_slot(start_dashboard):
    with start_dashboard(sse_max_per_token=2) as dash, \
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
def test_a_malformed_last_event_id_is_answered_400(bad, start_dashboard):
    with start_dashboard() as dash, \
            dash.client("viewer") as c:
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": bad}) as header:
            by_header = header.status_code, json.loads(header.read())
        with c.stream("GET", "/api/stream/agents", params={"last_event_id": bad}) as query:
            by_query = query.status_code, json.loads(query.read())
    for status, body in (by_header, by_query):
        assert status == 400 and "Last-Event-ID" in body["detail"]


def test_an_ancient_last_event_id_gets_what_the_buffer_has_and_a_missed_note(nats_server, redis_server,
                                                                             start_dashboard):
    cache = redis.Redis.from_url(redis_server.url)
    with start_dashboard() as dash, dash.client("viewer") as c:
        publish_alerts(nats_server.url, [make_alert(k) for k in range(6)])
        assert wait_for(lambda: cache.xlen(stream_key("alerts")) == 6)
        oldest = cache.xrange(stream_key("alerts"), count=1)[0][0].decode()
        cache.xtrim(stream_key("alerts"), maxlen=3, approximate=False)  # its id and the two after it go
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": oldest}) as stream:
            events = read_events(Events(stream), 4, {"alert", "missed"})
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": "99999999999999-0"}) as future:
            time.sleep(0.3)
            publish_alerts(nats_server.url, [make_alert(6)])
            live = read_events(Events(future), 1, {"alert"})  # an id never issued resumes from the live edge
    cache.close()
    assert events[0]["event"] == "missed" and json.loads(events[0]["data"])["after"] == oldest
    assert alert_ids(events[1:]) == ["a3", "a4", "a5"]
    assert alert_ids(live) == ["a6"]


@pytest.mark.parametrize("query", ["reactor=%3Cscript%3E", "detector=a%20b",
                                   pytest.param("incident=" + "x" * 200, id="incident-200-chars")])
def test_stream_filters_must_be_ids(query, start_dashboard):
    path = "/api/stream/agents" if query.startswith("incident") else "/api/stream/alerts"
    with start_dashboard() as dash, \
            dash.client("viewer") as c, c.stream("GET", f"{path}?{query}") as r:
        assert r.status_code == 422 and "pattern" in json.loads(r.read())["message"]


# ---- chat -------------------------------------------------------------------------------------------------

def test_chat_answers_are_capped_per_user(fake_openai_server, start_dashboard, tmp_path, monkeypatch):
    ticks, _, _ = simulated("do_limitation")
    lake = tmp_path / "lake"
    delta.append(str(lake), "ticks", ticks.slice(0, 2000), TICKS)  # a short run: quick to diagnose
    question = {"question": "why did DO drop?", "run_id": ticks["run_id"][0].as_py()}
    url, _ = fake_openai_server({"kind": "dribble"})
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    with start_dashboard(lake, llm="openai", llm_timeout_s=3, chat_max_per_user=1) as dash, \
            dash.client("viewer") as c, dash.client("operator") as other:
        with c.stream("POST", "/api/chat", json=question) as response:
            answering = Events(response)
            assert answering.status_code == 200
            read_events(answering, 1, {"chunk"})  # the answer is streaming
            with c.stream("POST", "/api/chat", json=question) as second:
                refused, body = second.status_code, json.loads(second.read())
            with other.stream("POST", "/api/chat", json=question) as elsewhere:
                other_user = elsewhere.status_code
            finished = read_events(answering, 1, {"done"}, timeout_s=10)

        def answered() -> bool:
            with c.stream("POST", "/api/chat", json=question) as again:
                return again.status_code == 200

        after = wait_for(answered, 5)
    assert refused == 429 and "too many chat answers" in body["detail"]
    assert other_user == 200 and finished and after
