"""The reactor page's reference band, operator annotations and fleet overview over a real dashboard, broker,
cache and Delta lake: the band is the recipe's golden trajectory with the detectors' alarm limits at the run's
culture age, a changed recipe bends it, and the fleet lists the worst reactor first."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta

import nats
import numpy as np
import pyarrow as pa
import pytest
import redis

from agents.reference_band import alarm_levels
from biopilot.simulate import simulate_to_lake
from core.events import ANNOTATIONS, INCIDENTS, RECIPES
from dashboard.relay import REACTORS_KEY
from detectors.base import DETECTOR_SIGNALS
from detectors.golden import load_reference
from sinks import delta
from sources.recipe import Recipe
from sources.scenarios import load_scenario
from sources.telemetry import KIND_HEADER
from tests.dashboard_helpers import Dashboard, Events, read_events

pytestmark = pytest.mark.integration  # a dashboard with its nats-server and redis-server
CHANGE_H = 1.0


@pytest.fixture(scope="module")
def fleet_dash(start_module_dashboard) -> tuple[Dashboard, dict[str, str], dict]:
    """A lake with two short normal runs (r1, r2), both live; r1 has an open critical incident (and a resolved
    one), r2 had its DO setpoint lowered at `CHANGE_H` hours."""
    dash = start_module_dashboard()
    result = simulate_to_lake(load_scenario("normal").with_overrides(days=0.1), 2, 7, dash.lake)
    ticks = delta.read(dash.lake, "ticks", columns=["run_id", "reactor_id", "ts"])
    runs = dict(zip(ticks["reactor_id"].to_pylist(), ticks["run_id"].to_pylist(), strict=True))
    start = min(ticks["ts"].to_pylist())
    cache = redis.Redis.from_url(dash.redis_url)
    cache.hset(REACTORS_KEY, mapping={r: json.dumps({"run_id": run, "t": start.timestamp() + 7200.0})
                                      for r, run in runs.items()})
    cache.close()

    def incident(k: str, version: int, status: str, severity: str) -> dict:
        return {"incident_id": k, "version": version, "event": status, "run_id": runs["r1"], "reactor_id": "r1",
                "status": status, "start_ts": start + timedelta(hours=1), "end_ts": None, "severity": severity,
                "alert_count": 3, "signals": ["do_pct"], "emitted_at": start}
    delta.append(dash.lake, "incidents", pa.Table.from_pylist([
        incident("i1", 0, "open", "critical"), incident("i0", 0, "open", "warning"),
        incident("i0", 1, "resolved", "warning")], INCIDENTS), INCIDENTS)
    base = Recipe.default()
    changed = base.changed_at(CHANGE_H, "do_setpoint_pct", 30.0)
    at = start + timedelta(hours=CHANGE_H)
    delta.append(dash.lake, "recipes", pa.Table.from_pylist([
        {"run_id": runs["r2"], "reactor_id": "r2", "ts": start, "recipe_hash": base.hash,
         "recipe_json": base.to_json(), "reference": "default", "changed_by": None},
        {"run_id": runs["r2"], "reactor_id": "r2", "ts": at, "recipe_hash": changed.hash,
         "recipe_json": changed.to_json(), "reference": "twin", "changed_by": "operator@plant"}], RECIPES), RECIPES)
    delta.append(dash.lake, "annotations", pa.Table.from_pylist([
        {"run_id": runs["r2"], "reactor_id": "r2", "ts": at, "kind": "recipe_change",
         "text": "DO setpoint lowered to 30 % (from 40)", "changed_by": "operator@plant",
         "recipe_hash": changed.hash}], ANNOTATIONS), ANNOTATIONS)
    assert sorted(result.run_ids) == sorted(runs.values())
    return dash, runs, {"start": start.timestamp(), "changed": changed}


def test_the_band_is_the_golden_trajectory_with_the_alarm_limits_from_the_runs_first_tick(fleet_dash):
    dash, runs, facts = fleet_dash
    with dash.client("viewer") as c:
        ref = c.get("/api/reactors/r1/reference", params={"max_points": 1000}).json()
    golden = load_reference()
    step = -(-golden.median.shape[0] // 1000)
    assert ref["run_id"] == runs["r1"] and ref["run_start_t"] == facts["start"]
    assert ref["age_min"][:3] == [0.0, step * 10.0, 2 * step * 10.0]
    assert ref["recipe"] == "default recipe" and ref["recipes"] == [] and ref["source"] == "default"
    golden_z, drift_ratio = alarm_levels()
    assert ref["golden_z"] == pytest.approx(golden_z)
    do = ref["signals"]["do_pct"]
    j = DETECTOR_SIGNALS.index("do_pct")
    bins = np.arange(0, golden.median.shape[0], step)
    np.testing.assert_allclose(do["median"], golden.median[bins, j], rtol=1e-4)
    np.testing.assert_allclose(np.array(do["upper"]) - do["median"], golden_z * golden.scale[bins, j], rtol=1e-3)
    np.testing.assert_allclose(np.array(do["median"]) - do["sustained_lower"],
                               drift_ratio * golden.drift_limit[j] * golden.scale[bins, j], rtol=1e-3)
    # the per-tick increments the detectors see are not the totals the page draws: no band for those
    assert set(ref["signals"]) == set(DETECTOR_SIGNALS) - {"base_ml_per_tick", "feed_ml_per_tick"}
    assert {"feed_ml", "base_ml", "volume_l"} <= set(ref["without_band"])


def test_a_changed_recipe_bends_the_band_from_the_change_and_is_annotated(fleet_dash):
    dash, runs, facts = fleet_dash
    with dash.client("viewer") as c:
        ref = c.get("/api/reactors/r2/reference").json()
        plain = c.get("/api/reactors/r1/reference").json()
        notes = c.get("/api/reactors/r2/annotations").json()
    assert ref["recipe_hash"] == facts["changed"].hash
    assert "DO setpoint lowered to 30 %" in ref["recipe"] and ref["source"] == "twin"
    assert [r["changed_by"] for r in ref["recipes"]] == [None, "operator@plant"]
    age_h = np.array(ref["age_min"]) / 60.0
    do, do_default = np.array(ref["signals"]["do_pct"]["median"]), np.array(plain["signals"]["do_pct"]["median"])
    before, after = age_h < CHANGE_H, (age_h > CHANGE_H + 6) & (age_h < 48)
    np.testing.assert_allclose(do[before], do_default[before], atol=0.5)
    assert abs(np.median(do[after]) - 30.0) < 2.0 < abs(np.median(do_default[after]) - 30.0)
    assert notes == [{"run_id": runs["r2"], "reactor_id": "r2", "t": facts["start"] + CHANGE_H * 3600,
                      "kind": "recipe_change", "text": "DO setpoint lowered to 30 % (from 40)",
                      "changed_by": "operator@plant", "recipe_hash": facts["changed"].hash}]


def test_the_fleet_lists_the_worst_reactor_first_with_its_open_incident_recipe_and_age(fleet_dash):
    dash, runs, facts = fleet_dash
    with dash.client("viewer") as c:
        rows = c.get("/api/fleet").json()
    assert [r["reactor_id"] for r in rows] == ["r1", "r2"]
    r1, r2 = rows
    assert r1["status"] == "critical" and r1["open_incidents"] == 1  # the resolved one is not open
    assert r1["open_incident"]["incident_id"] == "i1" and r1["open_incident"]["signals"] == ["do_pct"]
    assert r1["recipe"] == "default recipe" and r1["recipe_hash"] is None
    assert r1["culture_age_h"] == pytest.approx(2.0)
    assert r2["status"] == "normal" and r2["open_incident"] is None
    assert r2["recipe_hash"] == facts["changed"].hash and "DO setpoint lowered to 30 %" in r2["recipe"]


def test_unknown_reactors_and_bad_run_ids_are_refused_in_one_clear_line(fleet_dash):
    dash, _, _ = fleet_dash
    with dash.client("viewer") as c:
        missing = c.get("/api/reactors/r9/reference")
        bad = c.get("/api/reactors/r1/annotations", params={"run_id": "../x"})
        unauth = c.get("/api/fleet", headers={"Authorization": ""})
    assert missing.status_code == 404 and "no live or stored run of reactor 'r9'" in missing.json()["detail"]
    assert bad.status_code == 422 and "run_id" in bad.json()["message"]
    assert unauth.status_code == 401


def test_a_recipe_message_reaches_the_page_as_a_recipe_event(fleet_dash):
    dash, _, _ = fleet_dash

    heard = threading.Event()

    async def publish() -> None:  # a few times: the stream starts at the live edge once it is subscribed
        nc = await nats.connect(dash.nats_url)
        for _ in range(60):
            if heard.is_set():
                break
            await nc.publish("biopilot.assays.r2", b"{}", headers={KIND_HEADER: "recipe"})
            await nc.flush()
            await asyncio.sleep(0.25)
        await nc.close()

    with dash.client("viewer") as c, c.stream("GET", "/api/stream/telemetry", params={"reactor": "r2"}) as response:
        publisher = threading.Thread(target=asyncio.run, args=(publish(),), daemon=True)
        publisher.start()
        got = read_events(Events(response), 1, {"recipe"}, timeout_s=15)
        heard.set()
        publisher.join()
    assert json.loads(got[0]["data"]) == {"kind": "recipe", "reactor_id": "r2"}
