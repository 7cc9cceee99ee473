"""SSE: resume with Last-Event-ID without gap or duplicate, and the slow-client policy."""

from __future__ import annotations

import asyncio
import json
import time

import nats
import pytest

from dashboard.hub import Client
from tests.dashboard_helpers import sse_events


def _publish_alerts(url: str, first: int, n: int) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        for k in range(first, first + n):
            alert = {"alert_id": f"a{k}", "run_id": "run", "reactor_id": "r1", "ts": "2026-01-05T00:00:00+00:00",
                     "severity": "warning", "detector": "fusion", "score": 1.5, "signals": []}
            await nc.publish("biopilot.alerts.r1", json.dumps(alert).encode())
        await nc.flush()
        await nc.close()
    asyncio.run(go())


def test_reconnect_with_last_event_id_resumes_without_gap_or_duplicate(nats_server, start_dashboard):
    with start_dashboard() as dash, dash.client("viewer") as c:
        with c.stream("GET", "/api/stream/alerts") as first:
            time.sleep(0.3)  # the stream is registered before the alerts flow
            _publish_alerts(nats_server.url, 0, 10)
            got = sse_events(first, 4, {"alert"})
        last_id = got[-1]["id"]
        _publish_alerts(nats_server.url, 10, 10)  # published while the client is away
        time.sleep(0.5)
        with c.stream("GET", "/api/stream/alerts", headers={"Last-Event-ID": last_id}) as second:
            rest = sse_events(second, 16, {"alert"})
    ids = [json.loads(e["data"])["alert_id"] for e in got + rest]
    assert ids == [f"a{k}" for k in range(20)]
    assert len({e["id"] for e in got + rest}) == 20


def test_a_full_queue_drops_the_oldest_ticks_but_never_alerts():
    ticks = Client("telemetry", lambda _e: True, queue_max=3)
    for k in range(5):
        ticks.offer(f"{k}-0", {"k": k})
    assert [e["k"] for _, e in ticks.queue] == [2, 3, 4] and ticks.dropped == 2 and not ticks.overflowed

    alerts = Client("alerts", lambda _e: True, queue_max=3)
    for k in range(4):
        alerts.offer(f"{k}-0", {"k": k})
    assert alerts.overflowed and [e["k"] for _, e in alerts.queue] == [0, 1, 2]  # nothing silently lost


@pytest.mark.parametrize("path", ["/api/stream/telemetry", "/api/stream/incidents", "/api/stream/agents"])
def test_streams_answer_with_event_stream_and_heartbeat_headers(start_dashboard, path):
    with start_dashboard() as dash, dash.client("viewer") as c, c.stream("GET", path) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
