"""The dashboard API end to end: runs, controls (published + audited), validation, chat, reports, webhooks,
replay — over a real broker, cache and Delta lake."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import nats
import pytest

from core.services import free_port
from sinks import delta
from tests.dashboard_helpers import mark_live, sse_events, wait_for


@pytest.fixture
def dash(start_dashboard, tmp_path):
    import subprocess
    import sys

    lake = tmp_path / "lake"
    out = subprocess.run([sys.executable, "-m", "biopilot.cli", "simulate", "--scenario", "temperature_spike",
                          "--seed", "11", "--lake", str(lake), "--quiet"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    d = start_dashboard(lake, webhook_allow_hosts="127.0.0.1")
    d.run_id = out.stdout.split()[0]
    return d


def test_runs_run_ticks_and_alerts(dash):
    with dash.client("viewer") as c:
        runs = c.get("/api/runs").json()
        assert [r["run_id"] for r in runs] == [dash.run_id]
        run = c.get(f"/api/runs/{dash.run_id}").json()
        assert run["summary"]["peak_vcd_e6_per_ml"] > 1 and run["labels"][0]["fault"] == "temperature_spike"
        ticks = c.get(f"/api/runs/{dash.run_id}/ticks", params={"signals": "do_pct,ph", "max_points": 500}).json()
        assert set(ticks["signals"]) == {"do_pct", "ph"} and 400 <= len(ticks["t"]) <= 500 and ticks["assays"]
        assert c.get(f"/api/runs/{dash.run_id}/alerts").json()["labels"]
        bad = c.get(f"/api/runs/{dash.run_id}/ticks", params={"signals": "do_pct,bogus"})
        assert bad.status_code == 422 and "bogus" in bad.json()["detail"]
        assert c.get("/api/runs/nope").status_code == 404


def test_control_and_fault_are_published_and_audited(dash, nats_server, redis_server):
    mark_live(redis_server.url, "r7")
    received = []

    async def listen() -> None:
        nc = await nats.connect(nats_server.url)

        async def on(msg) -> None:  # noqa: ANN001
            received.append(json.loads(msg.data))

        await nc.subscribe("biopilot.control.r7", cb=on)
        await nc.flush()
        with dash.client("operator") as c:
            r1 = await asyncio.to_thread(c.post, "/api/reactors/r7/control",
                                         json={"type": "setpoint", "name": "do_setpoint_pct", "value": 50,
                                               "changed_by": "someone-else"})
            r2 = await asyncio.to_thread(c.post, "/api/reactors/r7/faults",
                                         json={"fault": "sensor_stuck", "signal": "do_pct", "duration_h": 2})
        assert r1.status_code == 202 and r2.status_code == 202, (r1.text, r2.text)
        await asyncio.sleep(0.5)
        await nc.close()

    asyncio.run(listen())
    # the change is the signed-in subject's, whatever the body claims: the run's annotation names them
    assert received[0] == {"type": "setpoint", "name": "do_setpoint_pct", "value": 50.0, "changed_by": "test-operator"}
    assert received[1]["type"] == "fault" and received[1]["fault"] == "sensor_stuck" and received[1]["signal"] == "do_pct"
    audit = wait_for(lambda: (t := delta.read(dash.lake, "audit")) is not None and t.num_rows >= 2 and t)
    rows = audit.to_pylist()
    assert {r["action"] for r in rows} == {"control", "fault"}
    assert all(r["actor"] == "test-operator" and r["role"] == "operator" and r["target"] == "r7" for r in rows)


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/api/reactors/r1/faults", {"fault": "meltdown"}, "fault"),
    ("/api/reactors/r1/faults", {"fault": "sensor_drift"}, "needs the faulty sensor"),
    ("/api/reactors/r1/control", {"type": "setpoint", "name": "warp_speed", "value": 9}, "unknown setpoint"),
    ("/api/reactors/r1/control", {"type": "feed"}, "volume_ml"),
    ("/api/reactors/bad%20id/control", {"type": "stop"}, "reactor_id"),
    ("/api/replay", {"run_id": "x", "speed": -3}, "speed"),
])
def test_invalid_input_is_422_with_a_clear_message(dash, path, body, needle):
    with dash.client("operator") as c:
        r = c.post(path, json=body)
    assert r.status_code == 422 and needle in r.json()["message"], r.text


def test_chat_streams_an_answer_from_the_evidence(dash):
    with dash.client("viewer") as c, c.stream("POST", "/api/chat",
                                              json={"question": "what happened to temperature?",
                                                    "run_id": dash.run_id}) as r:
        events = sse_events(r, 50, {"chunk", "done"})
    texts = [json.loads(e["data"])["text"] for e in events if e["event"] == "chunk"]
    assert len(texts) >= 3 and events[-1]["event"] == "done"
    assert any("temperature_spike" in t for t in texts) and any("temp_c read" in t for t in texts)


def test_report_over_http(dash):
    with dash.client("viewer") as c:
        r = c.get(f"/api/reports/{dash.run_id}", params={"format": "html"})
        assert r.status_code == 200 and "temperature_spike" in r.text and "data:image/png;base64" in r.text
        # no script at all; the inline style and the inlined plot are all it may load
        assert r.headers["content-security-policy"].startswith("default-src 'none'; img-src data:;")
        assert c.get(f"/api/reports/{dash.run_id}", params={"format": "pdf"}).content.startswith(b"%PDF")


def test_an_unknown_run_is_404_without_the_servers_lake_path(dash):
    with dash.client("viewer") as c:
        report = c.get("/api/reports/no-such-run")
        chat = c.post("/api/chat", json={"question": "what happened?", "run_id": "no-such-run"})
    for r in (report, chat):
        assert r.status_code == 404 and "no-such-run" in r.json()["detail"], r.text
        assert str(dash.lake) not in r.text and dash.run_id not in r.text, r.text


class _Receiver(BaseHTTPRequestHandler):
    got: list = []
    fail_first = True

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.fail_first:  # the first try fails: the sender must retry
            _Receiver.fail_first = False
            self.send_response(503)
        else:
            headers = self.headers
            _Receiver.got.append((body, headers["X-BioPilot-Timestamp"], headers["X-BioPilot-Signature"]))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_subscription_stream_and_signed_webhook_with_retry(dash, nats_server):
    port = free_port()
    server = HTTPServer(("127.0.0.1", port), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with dash.client("operator") as c:
            sub = c.post("/api/subscriptions", json={"reactor": "r3", "severity": "critical",
                                                     "webhook_url": f"http://127.0.0.1:{port}/hook"}).json()
            listed = c.get("/api/subscriptions").json()
            assert [s["id"] for s in listed] == [sub["id"]] and "secret" not in listed[0]
            with c.stream("GET", sub["stream_url"]) as stream:
                time.sleep(0.3)

                async def publish() -> None:
                    nc = await nats.connect(nats_server.url)
                    for k, (reactor, severity) in enumerate([("r3", "warning"), ("r1", "critical"),
                                                             ("r3", "critical")]):
                        await nc.publish(f"biopilot.alerts.{reactor}", json.dumps(
                            {"alert_id": f"w{k}", "reactor_id": reactor, "severity": severity, "run_id": "x",
                             "detector": "fusion", "ts": "2026-01-05T00:00:00+00:00"}).encode())
                    await nc.flush()
                    await nc.close()

                asyncio.run(publish())
                events = sse_events(stream, 1, {"alert"})
            assert [json.loads(e["data"])["alert_id"] for e in events] == ["w2"]
            assert wait_for(lambda: _Receiver.got, 20)
            body, timestamp, sig = _Receiver.got[0]
            assert json.loads(body)["event"]["alert_id"] == "w2"
            signed = f"{timestamp}.".encode() + body
            assert sig == "sha256=" + hmac.new(sub["secret"].encode(), signed, hashlib.sha256).hexdigest()
            assert c.delete(f"/api/subscriptions/{sub['id']}").status_code == 204
            assert c.get("/api/subscriptions").json() == []
    finally:
        server.shutdown()


def test_replay_publishes_the_stored_run_under_its_own_reactor(dash, nats_server):
    counts = {"ticks": 0}

    async def go() -> dict:
        nc = await nats.connect(nats_server.url)

        async def on(msg) -> None:  # noqa: ANN001
            if not (msg.headers or {}).get("BioPilot-Kind"):
                counts["ticks"] += 1

        await nc.subscribe("biopilot.telemetry.replay1", cb=on)
        await nc.flush()
        with dash.client("operator") as c:
            started = (await asyncio.to_thread(c.post, "/api/replay", json={"run_id": dash.run_id,
                                                                             "speed": None})).json()
            for _ in range(100):
                status = (await asyncio.to_thread(c.get, "/api/replay")).json()[0]
                if status["state"] == "done":
                    break
                await asyncio.sleep(0.2)
        await nc.close()
        return started | {"final": status}

    result = asyncio.run(go())
    assert result["reactor_id"] == "replay1" and result["as_run"].startswith(dash.run_id)
    assert result["final"]["state"] == "done" and result["final"]["published"] == result["final"]["total"]
    assert result["final"]["held_s"] == 0.0  # no flow reads this broker: nothing to wait for
    assert counts["ticks"] > 10
