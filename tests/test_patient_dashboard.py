"""The dashboard of the patient plant, over a real lake written by `biopilot simulate --plant patient`, a real
nats-server, redis-server and dashboard: the cohort overview, one patient's vitals with NEWS2, labs, doses, the
twin's forecast band and adverse events, the controls (validated, audited, published on
`biopilot.control.<patient>`), the relay of vitals, labs, doses and twin forecasts to the SSE streams, and the
page in real headless Chromium (screenshot: docs/screenshots/patient.png). The reactor page stays the default."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
from nats.js import JetStreamContext

from agents.patient_diagnose import diagnose_patient_stored
from core.codec import encode_arrow
from core.events import DOSES, INCIDENTS, LABS, TWIN_FORECASTS, VITAL_SIGNALS, VITALS
from dashboard.relay import REACTORS_KEY
from dashboard.routers.patients import open_incidents
from detectors.patient_monitor import twin_message
from sinks import delta
from sinks.nats_sink import alert_json
from sources.patient.news2 import news2_points
from sources.publish import ARROW_HEADERS, publish_assays, publish_ticks
from sources.telemetry import KIND_HEADER
from tests.browser_helpers import needs_chromium
from tests.dashboard_helpers import Events, mark_live, read_events
from tests.graph_helpers import store_findings
from tests.test_controls_hardening import published_controls

SCREENSHOT = Path(__file__).parent.parent / "docs" / "screenshots" / "patient.png"
SCENARIO, PATIENTS, DAYS, SEED = "amiodarone_then_bleed", 3, 32, 1
TWIN_UNTIL = "2026-01-26T12:00"  # day 21: the twin's forecast runs on past the labs of day 28


def _twin_rows(lake: Path, run_id: str, patient_id: str) -> pa.Table:
    """The patient's own twin as `biopilot twin fit` fits it from the readings until TWIN_UNTIL, as the rows the
    flow writes at a refit (`twin_forecasts`): the forecast under the current dose and under the advised one."""
    out = subprocess.run([sys.executable, "-m", "biopilot.cli", "twin", "fit", "--lake", str(lake), "--patient",
                          patient_id, "--run", run_id, "--until", TWIN_UNTIL, "--days", "10", "--json"],
                         capture_output=True, text=True, check=True)
    fit = json.loads(out.stdout)
    labs = delta.read(lake, "labs", run_ids=[run_id])
    until = datetime.fromisoformat(TWIN_UNTIL).replace(tzinfo=UTC)
    fitted = max(ts for ts in labs["sample_ts"].to_pylist() if ts <= until)
    first_day = datetime.fromisoformat(fit["first_dose"]).replace(hour=0, minute=0)
    rows = [{"run_id": run_id, "patient_id": patient_id, "fitted_ts": fitted,
             "ts": first_day + timedelta(days=d - 1, hours=8), "dosing": f["schedule"], "inr_mid": mid,
             "inr_lo": lo, "inr_hi": hi, "weekly_dose_mg": 7 * f["daily_dose_mg"],
             "advised_weekly_dose_mg": fit["advice"]["weekly_dose_mg"], "labs_used": fit["inr_readings_used"]}
            for f in fit["forecasts"]
            for d, mid, lo, hi in zip(f["day"], f["inr"], f["inr_lo"], f["inr_hi"], strict=True)]
    return pa.Table.from_pylist(rows, schema=TWIN_FORECASTS)


def _diagnosed(lake: Path, run_id: str) -> None:
    """The run's incidents and the agent's findings, as the workers leave them in the lake: the patient
    monitor's alerts over the stored run, grouped into incidents and diagnosed (`agents.patient_diagnose`), the
    findings in the explanation's last chunk (the explanation's text is the LLM backend's: not this test's)."""
    store_findings(lake, diagnose_patient_stored(lake, run_id))


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """A few simulated patients through the real CLI; the first one's twin forecast, incidents and diagnosis."""
    path = tmp_path_factory.mktemp("patients") / "lake"
    out = subprocess.run([sys.executable, "-m", "biopilot.cli", "simulate", "--plant", "patient", "--scenario",
                          SCENARIO, "--patients", str(PATIENTS), "--days", str(DAYS), "--seed", str(SEED),
                          "--lake", str(path), "--quiet"], capture_output=True, text=True, check=True)
    first = out.stdout.split()[0]
    delta.append(path, "twin_forecasts", _twin_rows(path, first, "p000000"), TWIN_FORECASTS)
    _diagnosed(path, first)
    return path


@pytest.fixture
def dash(start_dashboard, lake):
    return start_dashboard(lake, plant="patient")


def _first_run(lake: Path) -> str:
    runs = delta.read(lake, "runs")
    return sorted(runs.filter(pc.equal(runs["reactor_id"], "p000000"))["run_id"].to_pylist())[0]


def _mark_running(redis_url: str, patient_id: str, run_id: str) -> None:
    """Record the patient as live in this run, as the relay does when its vitals arrive."""
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(REACTORS_KEY, patient_id, json.dumps({"run_id": run_id, "t": 0.0}))
    finally:
        client.close()


def test_cohort_overview_has_one_row_per_patient_with_last_inr_and_news2_from_the_lake(dash, lake):
    with dash.client("viewer") as c:
        rows = c.get("/api/patients").json()
    assert sorted(r["patient_id"] for r in rows) == [f"p{k:06d}" for k in range(PATIENTS)]
    labs = delta.read(lake, "labs").sort_by("sample_ts").to_pylist()
    vitals = delta.read(lake, "vitals").sort_by("seq")
    incidents = delta.read(lake, "incidents").to_pylist()  # the first patient's, one version each
    for row in rows:
        mine = [lab for lab in labs if lab["run_id"] == row["run_id"]]
        assert row["last_inr"] == pytest.approx(mine[-1]["inr"])
        assert row["last_inr_t"] == pytest.approx(mine[-1]["sample_ts"].timestamp())
        last = vitals.filter(pc.equal(vitals["run_id"], row["run_id"])).to_pylist()[-1]
        expected = news2_points(*(np.array([last[s]]) for s in ("hr_bpm", "sbp_mmhg", "spo2_pct", "rr_min",
                                                                  "temp_c")))[0]
        assert row["news2"] == expected and row["news2_t"] == last["ts"].timestamp()
        assert row["status"] in ("stable", "warning", "critical") and row["live"] is False
        assert row["scenario"] == SCENARIO and row["cyp2c9"]
        opened = [i for i in incidents if i["run_id"] == row["run_id"] and i["status"] != "resolved"]
        assert (row["open_incidents"], row["open_alerts"]) == (len(opened), sum(i["alert_count"] for i in opened))


def test_an_incident_is_open_until_its_latest_version_resolves_it():
    t = datetime(2026, 1, 5, tzinfo=UTC)
    rows = [{"incident_id": i, "version": v, "event": e, "run_id": "run", "reactor_id": "p1", "status": status,
             "start_ts": t, "end_ts": None, "severity": "warning", "alert_count": v, "signals": ["inr"],
             "emitted_at": t} for i, v, e, status in [("a", 1, "open", "open"), ("a", 2, "resolve", "resolved"),
                                                      ("b", 2, "update", "updated"), ("b", 1, "open", "open")]]
    opened = open_incidents(pa.Table.from_pylist(rows, schema=INCIDENTS))
    assert [(i["incident_id"], i["version"]) for i in opened["run"]] == [("b", 2)]
    assert open_incidents(None) == {}


def test_patient_view_serves_vitals_with_news2_labs_doses_twin_band_and_adverse_events(dash, lake):
    run = _first_run(lake)
    with dash.client("viewer") as c:
        vitals = c.get(f"/api/patients/{run}/vitals", params={"max_points": 500}).json()
        labs = c.get(f"/api/patients/{run}/labs").json()
        doses = c.get(f"/api/patients/{run}/doses").json()
        twin = c.get(f"/api/patients/{run}/twin").json()
        labels = c.get(f"/api/patients/{run}/labels").json()
        diagnosis = c.get(f"/api/patients/{run}/diagnosis").json()
        missing = c.get("/api/patients/no-such-run/vitals")
        other_twin = c.get("/api/patients/no-such-run/twin").json()
    assert set(vitals["signals"]) == set(VITAL_SIGNALS) and len(vitals["t"]) == len(vitals["news2"]) <= 500
    assert vitals["reactor_id"] == "p000000" and all(0 <= s <= 20 for s in vitals["news2"] if s is not None)
    stored = delta.read(lake, "labs", run_ids=[run])
    assert [x["inr"] for x in labs["labs"]] == stored.sort_by("sample_ts")["inr"].to_pylist()
    assert labs["inr_range"] == [2.0, 3.0]
    assert {"warfarin"} <= {d["drug"] for d in doses["doses"]} and all(d["t"] for d in doses["doses"])
    assert set(twin["bands"]) == {"current", "advised"} and twin["labs_used"] >= 3 and twin["refits"] == 1
    band = twin["bands"]["current"]
    assert len(band["t"]) == 10 and all(lo <= mid <= hi for lo, mid, hi in zip(band["inr_lo"], band["inr_mid"],
                                                                              band["inr_hi"], strict=True))
    # the two injected events; amiodarone may also push the INR into an over_anticoagulation episode
    assert {"drug_interaction", "major_bleed"} <= {e["event"] for e in labels["labels"]}
    stored = delta.read(lake, "incidents", run_ids=[run])
    assert {i["incident_id"] for i in diagnosis["incidents"]} == set(stored["incident_id"].to_pylist())
    newest = diagnosis["incidents"][0]  # newest first, with the agent's explanation and its ranked causes
    assert newest["start_t"] == max(i["start_t"] for i in diagnosis["incidents"])
    assert newest["findings"]["hypotheses"][0]["fault"] and newest["findings"]["incident_id"] == newest["incident_id"]
    assert missing.status_code == 404 and "no vitals" in missing.json()["detail"]
    assert other_twin["fitted_t"] is None and other_twin["bands"] == {}


def test_config_names_the_plant_kind_and_the_root_serves_its_page(dash):
    with dash.client("viewer") as c:
        config = c.get("/api/config").json()
        page = c.get("/")
        commands = c.get("/api/patients/commands").json()
    assert config["plant"] == "patient" and config["unit"] == "patient" and config["labs"] == ["inr", "hb_g_dl"]
    assert config["signals"] == list(VITAL_SIGNALS)
    assert "/static/patient.js" in page.text and "/static/app.js" not in page.text
    assert "major_bleed" in commands["events"] and commands["max_daily_mg"]["warfarin"] == 20.0


def test_the_reactor_stack_still_serves_the_reactor_page(start_dashboard, tmp_path):
    with start_dashboard(tmp_path / "lake") as d, d.client("viewer") as c:
        assert c.get("/api/config").json()["plant"] == "bioreactor"
        assert "/static/app.js" in c.get("/").text


def test_patient_controls_are_validated_audited_and_published_with_the_reactor_roles(dash, nats_server, lake):
    mark_live(dash.redis_url, "p000000")
    dose = {"type": "dose", "drug": "warfarin", "daily_mg": 7.5}
    with published_controls(nats_server.url) as got:
        with dash.client("operator") as c:
            accepted = c.post("/api/patients/p000000/control", json=dose)
            comed = c.post("/api/patients/p000000/control",
                           json={"type": "comedication", "drug": "amiodarone", "action": "start"})
            event = c.post("/api/patients/p000000/control", json={"type": "event", "event": "major_bleed"})
            too_much = c.post("/api/patients/p000000/control", json={**dose, "daily_mg": 90})
            unknown_event = c.post("/api/patients/p000000/control", json={"type": "event", "event": "meteor"})
            replay = c.post("/api/patients/p000000/control", json={"type": "pause"})
            not_live = c.post("/api/patients/p000009/control", json=dose)
            stop = c.post("/api/patients/p000000/control", json={"type": "stop"})
        with dash.client("viewer") as c:
            viewer = c.post("/api/patients/p000000/control", json=dose)
    assert accepted.status_code == 202 and accepted.json()["subject"] == "biopilot.control.p000000"
    assert comed.status_code == 202 and event.status_code == 202
    assert too_much.status_code == 422 and "up to 20 mg a day, got 90" in too_much.json()["message"]
    assert unknown_event.status_code == 422 and replay.status_code == 422
    assert not_live.status_code == 404 and "no live patient 'p000009'" in not_live.json()["detail"]
    assert stop.status_code == 403 and "needs the admin role" in stop.json()["detail"]
    assert viewer.status_code == 403
    assert [(s, json.loads(b)) for s, b in got] == [
        ("biopilot.control.p000000", dose),
        ("biopilot.control.p000000", {"type": "comedication", "drug": "amiodarone", "action": "start"}),
        ("biopilot.control.p000000", {"type": "event", "event": "major_bleed", "magnitude": 1.0,
                                      "duration_h": 48.0})]
    audit = [r for r in delta.read(lake, "audit").to_pylist() if r["action"] == "control"]
    assert any(r["target"] == "p000000" and r["result"] == "published" and json.loads(r["payload_json"]) == dose
               and r["actor"] == "test-operator" for r in audit)
    assert any(r["target"] == "p000009" and r["result"].startswith("refused: no live patient") for r in audit)


async def _publish_patient(nats_url: str, lake: Path, run: str) -> None:
    """A day of a stored patient as the live feed sends it: vitals, a lab, a dose row, and a twin forecast."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    vitals = delta.read(lake, "vitals", run_ids=[run]).sort_by("seq").slice(0, 288)
    vitals = vitals.set_column(1, "patient_id", pa.array(["p7"] * vitals.num_rows)).cast(VITALS)
    await publish_ticks(js, "p7", vitals)
    labs = delta.read(lake, "labs", run_ids=[run]).slice(0, 1)
    await publish_assays(js, "p7", labs.set_column(1, "patient_id", pa.array(["p7"])).cast(LABS))
    doses = pa.Table.from_pylist([{"run_id": run, "patient_id": "p7", "ts": datetime(2026, 1, 5, 18, tzinfo=UTC),
                                   "drug": "warfarin", "dose_mg": 5.0, "taken": True}], schema=DOSES)
    await js.publish("biopilot.assays.p7", encode_arrow(doses), headers={**ARROW_HEADERS, KIND_HEADER: "doses"})
    await _publish_twin(js, _twin(run, "p7", datetime(2026, 1, 8, 8, tzinfo=UTC), 3))
    await nc.close()


def _twin(run: str, patient_id: str, fitted: datetime, days: int) -> dict:
    """A refit as the patient monitor reports it (`Outputs.twins`): its forecast rows under both dosings."""
    rows = [{"run_id": run, "patient_id": patient_id, "fitted_ts": fitted, "ts": fitted + timedelta(days=d + 1),
             "dosing": dosing, "inr_mid": 2.1 + 0.1 * d, "inr_lo": 1.7 + 0.1 * d, "inr_hi": 2.6 + 0.1 * d,
             "weekly_dose_mg": weekly, "advised_weekly_dose_mg": 35.0, "labs_used": 4}
            for dosing, weekly in (("current", 42.0), ("advised", 35.0)) for d in range(days)]
    return {"run_id": run, "patient_id": patient_id, "fitted_ts": fitted, "advised_weekly_dose_mg": 35.0,
            "labs_used": 4, "forecasts": rows}


async def _publish_twin(js: JetStreamContext, twin: dict) -> None:
    """As the flow publishes a refit: `sinks.nats_sink.alert_json` on the monitor's subject, with its id."""
    subject, headers = twin_message(twin)
    await js.publish(subject, alert_json(twin), headers=headers)


def test_relay_streams_vitals_with_news2_labs_doses_and_twin_forecasts(dash, nats_server, lake):
    run = _first_run(lake)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _publish_patient(nats_server.url, lake, run)).result()
    with dash.client("viewer") as c:
        # resume from the start of the buffer: every event the relay wrote since the dashboard started
        with c.stream("GET", "/api/stream/telemetry", params={"reactor": "p7", "last_event_id": "0-1"}) as r:
            events = [json.loads(e["data"]) for e in read_events(Events(r), 3, {"tick", "assay", "dose"})]
            while not {e["kind"] for e in events} >= {"ticks", "assay", "dose"}:
                events += [json.loads(e["data"]) for e in read_events(Events(r), 1, {"tick", "assay", "dose"})]
        with c.stream("GET", "/api/stream/twin", params={"reactor": "p7", "last_event_id": "0-1"}) as r:
            twin = json.loads(read_events(Events(r), 1, {"twin"})[0]["data"])
    tick = next(e for e in events if e["kind"] == "ticks")
    assert set(tick["signals"]) == set(VITAL_SIGNALS) and len(tick["news2"]) == len(tick["t"])
    stored = delta.read(lake, "vitals", run_ids=[run]).sort_by("seq").slice(0, 288).to_pylist()
    by_t = {round(v["ts"].timestamp(), 3): v for v in stored}
    for t, score in zip(tick["t"], tick["news2"], strict=True):
        v = by_t[t]
        assert score == news2_points(*(np.array([v[s]]) for s in ("hr_bpm", "sbp_mmhg", "spo2_pct", "rr_min",
                                                                   "temp_c")))[0]
    lab = next(e for e in events if e["kind"] == "assay")
    assert lab["reactor_id"] == "p7" and set(lab["values"]) == {"inr", "hb_g_dl"}
    dose = next(e for e in events if e["kind"] == "dose")
    assert (dose["drug"], dose["dose_mg"], dose["taken"], dose["reactor_id"]) == ("warfarin", 5.0, True, "p7")
    assert twin["reactor_id"] == "p7" and twin["advised_weekly_dose_mg"] == 35.0


@needs_chromium
def test_patient_page_shows_cohort_vitals_inr_band_and_sends_a_dose_change(dash, nats_server, lake, chromium_page):
    from playwright.sync_api import expect

    run = _first_run(lake)
    _mark_running(dash.redis_url, "p000000", run)
    watched = chromium_page(extra_http_headers={"Authorization": f"Bearer {dash.tokens['operator']}"})
    page = watched.page
    page.goto(dash.url)
    expect(page.locator("#plant")).to_have_text("plant: patient", timeout=15_000)
    expect(page.locator("#cohort tbody tr")).to_have_count(PATIENTS, timeout=15_000)
    page.click(f'#cohort tr[data-run="{run}"]')
    expect(page.locator("#patient")).to_have_value(run)
    expect(page.locator(f'#cohort tr[data-run="{run}"]')).to_contain_text("●")  # live
    # the body's data attributes say what the plots hold (a function: the page's CSP refuses eval)
    page.wait_for_function("() => Number(document.body.dataset.points || 0) > 1000 && "
                           "Number(document.body.dataset.labs || 0) > 3 && "
                           "Number(document.body.dataset.twin || 0) >= 20", timeout=20_000)
    expect(page.locator("#events")).to_contain_text("major_bleed")
    expect(page.locator("#events")).to_contain_text("drug_interaction")
    expect(page.locator("#card")).to_contain_text("CYP2C9")
    expect(page.locator("#card")).to_contain_text("advises")
    # the outcome model's risk panel: every head (the answers themselves: tests/test_risk_api.py)
    expect(page.locator("#risk [data-head]")).to_have_count(5, timeout=30_000)
    with dash.client("viewer") as c:
        newest = c.get(f"/api/patients/{run}/diagnosis").json()["incidents"][0]
    expect(page.locator("#incidents li[data-id]")).to_have_count(len(delta.read(lake, "incidents", run_ids=[run])))
    expect(page.locator("#diagnosis")).to_contain_text(f"1. {newest['findings']['hypotheses'][0]['fault']}")
    assert page.locator(".plot canvas").count() == 8

    with published_controls(nats_server.url) as got:
        page.fill("#dose-mg", "4.5")
        page.click("#dose-form button")
        expect(page.locator("#control-msg")).to_have_text("warfarin dose sent to p000000", timeout=10_000)
        page.select_option("#comed-drug", "amiodarone")
        page.click("#comed-form button")
        expect(page.locator("#control-msg")).to_have_text("amiodarone start sent to p000000", timeout=10_000)
    assert [json.loads(b) for _, b in got] == [{"type": "dose", "drug": "warfarin", "daily_mg": 4.5},
                                               {"type": "comedication", "drug": "amiodarone", "action": "start"}]
    page.wait_for_timeout(500)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # live: the next hour of vitals and a twin refit reach the open page through the streams
    before = page.evaluate("Number(document.body.dataset.points)")
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _publish_live(nats_server.url, lake, run)).result()
    page.wait_for_function(f"() => Number(document.body.dataset.points) === {before + 12} && "
                           "document.body.dataset.twin === '6'", timeout=15_000)
    assert watched.csp_violations == [] and watched.dialogs == []


async def _publish_live(nats_url: str, lake: Path, run: str) -> None:
    """The hour after the stored run's last vitals (12 readings) and a refit, as the live plant and flow send them."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    vitals = delta.read(lake, "vitals", run_ids=[run]).sort_by("seq")
    last = vitals.slice(vitals.num_rows - 12)
    later = last.set_column(2, "seq", pc.add(last["seq"], 12)).set_column(
        3, "ts", pa.array([t + timedelta(hours=1) for t in last["ts"].to_pylist()], VITALS.field("ts").type))
    await publish_ticks(js, "p000000", later.cast(VITALS))
    await _publish_twin(js, _twin(run, "p000000", datetime(2026, 2, 2, 8, tzinfo=UTC), 3))
    await nc.close()


@needs_chromium
def test_a_viewer_sees_the_controls_disabled(dash, chromium_page):
    from playwright.sync_api import expect

    page = chromium_page(extra_http_headers={"Authorization": f"Bearer {dash.tokens['viewer']}"}).page
    page.goto(dash.url)
    expect(page.locator("#control-note")).to_contain_text("operator role", timeout=15_000)
    expect(page.locator("#dose-form button")).to_be_disabled()
