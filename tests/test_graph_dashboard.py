"""The knowledge graph and the Experiment Designer on the dashboard, over a real lake with a stored build, a real
nats-server, redis-server and dashboard: the typed routes (viewer role), chat without a run, and the graph page in
real headless Chromium (screenshot: docs/screenshots/graph.png)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents import knowledge_graph as kg
from tests.browser_helpers import needs_chromium
from tests.graph_helpers import DESIGN_RESULTS, make_graph_lake

SCREENSHOT = Path(__file__).parent.parent / "docs" / "screenshots" / "graph.png"


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("graph-dash") / "lake"
    make_graph_lake(root)
    subprocess.run([sys.executable, "-m", "biopilot.cli", "graph", "build", "--lake", str(root), "--design",
                    f"titer={DESIGN_RESULTS}"], check=True, capture_output=True)
    return root


def _chat(client, question: str, run_id: str | None = None) -> tuple[int, str]:
    body = {"question": question} | ({"run_id": run_id} if run_id else {})
    with client.stream("POST", "/api/chat", json=body) as reply:
        if reply.status_code != 200:
            reply.read()
            return reply.status_code, reply.text
        chunks = [json.loads(line[5:])["text"] for line in reply.iter_lines()
                  if line.startswith("data:") and line[5:].strip() not in ("", "{}")]
    return 200, " ".join(chunks)


def test_graph_routes_are_typed_and_read_the_newest_build(lake, start_dashboard):
    dash = start_dashboard(lake=lake)
    stored = kg.load(lake)
    with dash.client("viewer") as c:
        graph = c.get("/api/graph").json()
        assert graph["build_id"] == stored.build_id
        assert {n["id"] for n in graph["nodes"]} == set(stored.graph)
        edge = next(e for e in graph["edges"] if (e["source"], e["target"]) == ("do_limitation", "do_pct"))
        assert edge["sign"] == -1 and {"signature", "labelled_runs", "incidents"} <= {v["kind"] for v in edge["evidence"]}
        causes = c.get("/api/graph/causes", params={"target": "do_pct", "direction": -1, "day": 6}).json()
        assert causes["causes"][0]["origin"] == "do_limitation" and causes["causes"][0]["applies"] is True
        assert c.get("/api/graph/causes", params={"target": "nope"}).status_code == 404
        assert c.get("/api/graph/causes", params={"target": "do_pct", "direction": 2}).status_code == 422
        schema = c.get("/openapi.json").json()["paths"]["/api/graph"]["get"]["responses"]["200"]
        assert schema["content"]["application/json"]["schema"]["$ref"].endswith("/GraphOut")
    with dash.client(None) as anonymous:
        assert anonymous.get("/api/graph").status_code == 401


def test_chat_answers_the_graph_and_the_designer_without_a_run(lake, start_dashboard):
    dash = start_dashboard(lake=lake)
    with dash.client("viewer") as c:
        status, text = _chat(c, "what could cause low DO on day 6?")
        assert status == 200 and "1. do_limitation" in text and "labelled do_limitation runs" in text
        status, text = _chat(c, "maximise titer with lactate below 3 g/L")
        assert status == 200 and "design of 17 runs" in text and "Best settings within the ranges" in text
        status, text = _chat(c, "why did DO drop?")  # about a run: it needs one
        assert status == 422


@needs_chromium
def test_the_graph_page_draws_the_graph_with_evidence_on_hover(lake, start_dashboard, chromium_page):
    from playwright.sync_api import expect

    dash = start_dashboard(lake=lake)
    watched = chromium_page(extra_http_headers={"Authorization": f"Bearer {dash.tokens['viewer']}"})
    page = watched.page
    page.goto(f"{dash.url}/static/graph.html")
    expect(page.locator("#status")).to_have_text("ready", timeout=30_000)
    stored = kg.load(lake)
    expect(page.locator("#graph circle")).to_have_count(stored.graph.number_of_nodes())
    expect(page.locator("#build")).to_contain_text(stored.build_id)
    page.hover('#graph circle[data-node="do_limitation"]')
    expect(page.locator("#evidence")).to_contain_text("labelled do_limitation runs")
    expect(page.locator("#evidence")).to_contain_text("signature: do_pct -2.0")
    page.select_option("#cause-direction", "-1")
    page.select_option("#cause-target", "do_pct")
    page.fill("#cause-day", "6")
    page.click("#causes-form button")
    expect(page.locator("#causes li").first).to_contain_text("do_limitation → do_pct")
    page.fill("#ask-q", "what raises HCP?")
    page.click("#ask-form button")
    expect(page.locator("#answer")).to_contain_text("process.seed_vcd_e6_per_ml", timeout=30_000)
    page.hover('#graph circle[data-node="do_limitation"]')
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert not watched.csp_violations and not watched.dialogs
