"""Markup planted in data cannot run in the dashboard page: ids are refused at the API (422), and where the
API still carries free text (reactor names, incident and alert fields, stored run rows) the page shows it as
text, in real Chromium, under a Content-Security-Policy that forbids inline script."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from urllib.parse import quote

import nats
import pyarrow as pa
import pytest

from core.events import RUNS
from sinks import delta
from tests.browser_helpers import needs_chromium
from tests.dashboard_helpers import mark_live

IMG = "<img src=x onerror=alert(1)>"
HOSTILE = [IMG, '"><img src=x onerror=alert(2)>', "<script>alert(3)</script>", "<svg onload=alert(4)>"]


@pytest.fixture
def dash(start_dashboard, tmp_path):
    lake = tmp_path / "lake"
    # a stored run whose id and scenario are markup: ids are checked where they enter the API, not in old rows
    delta.append(lake, "runs", pa.Table.from_pylist([{
        "run_id": HOSTILE[1], "reactor_id": HOSTILE[2], "plant": "bioreactor", "scenario": HOSTILE[3], "seed": 1,
        "config_json": "{}", "started_ts": datetime(2026, 1, 5, tzinfo=UTC), "ended_ts": None}], schema=RUNS), RUNS)
    return start_dashboard(lake)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/replay", {"run_id": "run-1", "as_run": IMG}),
    ("POST", "/api/replay", {"run_id": IMG}),
    ("GET", f"/api/runs/{quote(IMG)}", None),
    ("GET", f"/api/runs/{quote(IMG)}/ticks", None),
    ("GET", f"/api/reports/{quote(IMG)}", None),
    ("POST", f"/api/replay/{quote(IMG)}/stop", None),
    ("POST", "/api/replay/replay1/explode", None),
    ("POST", "/api/chat", {"question": "why?", "run_id": IMG}),
    ("POST", "/api/chat", {"question": "why?", "incident_id": IMG}),
])
def test_ids_with_markup_are_422(dash, method, path, body):
    with dash.client("operator") as c:
        r = c.request(method, path, json=body)
    assert r.status_code == 422 and r.json()["message"], r.text


def test_every_response_carries_the_security_headers_refusals_included(dash):
    with dash.client("viewer") as c, dash.client(None) as anonymous:
        replies = [c.get("/"), c.get("/static/app.js"), c.get("/api/runs"), c.get("/api/runs/nope"),
                   c.get(f"/api/runs/{quote(IMG)}"), anonymous.get("/api/runs"), c.get("/docs")]
    assert [r.status_code for r in replies] == [200, 200, 200, 404, 422, 401, 200]
    for r in replies:
        assert "object-src 'none'" in r.headers["content-security-policy"], r.url
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    assert all("script-src 'self';" in r.headers["content-security-policy"] for r in replies[:-1])


async def _publish_hostile_events(nats_url: str, reactor: str) -> None:
    nc = await nats.connect(nats_url)
    incident = {"incident_id": "inc-1", "reactor_id": reactor, "run_id": HOSTILE[1], "status": HOSTILE[0],
                "severity": HOSTILE[1], "start_ts": "2026-01-05T00:00:00+00:00", "end_ts": None,
                "signals": [HOSTILE[2], HOSTILE[3]], "alert_count": HOSTILE[0]}
    alert = {"alert_id": "a-1", "reactor_id": reactor, "run_id": HOSTILE[1], "severity": HOSTILE[0],
             "detector": HOSTILE[3], "ts": "2026-01-05T00:00:00+00:00"}
    await nc.publish("biopilot.alerts.r1", json.dumps(alert).encode())
    await nc.publish("biopilot.incidents.r1", json.dumps(incident).encode())
    await nc.publish("biopilot.agent.r1", json.dumps({"incident_id": "inc-1", "seq": 0, "text": HOSTILE[2]}).encode())
    await nc.flush()
    await nc.close()


@needs_chromium
def test_markup_in_reactor_names_incidents_alerts_and_runs_stays_text_in_the_page(dash, nats_server,
                                                                                   redis_server, chromium_page):
    from playwright.sync_api import expect

    reactor = IMG  # '<' sorts before letters: the page selects this reactor first
    mark_live(redis_server.url, reactor, "r1")
    watched = chromium_page(extra_http_headers={"Authorization": f"Bearer {dash.tokens['admin']}"})
    page = watched.page
    response = page.goto(dash.url)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "object-src 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    expect(page.locator("#status")).to_have_text("live", timeout=20_000)
    expect(page.locator("#reactor")).to_have_value(reactor, timeout=10_000)
    expect(page.locator("#replay-run option")).to_have_text([HOSTILE[1]], timeout=10_000)

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API already runs a loop in this thread
        pool.submit(asyncio.run, _publish_hostile_events(nats_server.url, reactor)).result()
    expect(page.locator("#incidents li[data-id]")).to_have_count(1, timeout=15_000)
    incident = page.locator("#incidents li[data-id]")
    expect(incident).to_contain_text(HOSTILE[0])
    expect(incident).to_contain_text(f"{HOSTILE[2]}, {HOSTILE[3]}")
    expect(page.locator("#agent")).to_contain_text(HOSTILE[2], timeout=10_000)
    expect(page.locator("#alert-count")).to_have_text("1 alerts")
    page.wait_for_timeout(500)  # an onerror or onload would have fired by now

    assert page.query_selector("img[src=x]") is None
    assert page.query_selector("svg[onload]") is None
    assert page.evaluate("document.querySelectorAll('img, [onerror], [onload]').length") == 0
    assert page.evaluate("[...document.scripts].every((s) => s.src)")  # no inline script was added
    assert watched.dialogs == []
    assert watched.csp_violations == []
