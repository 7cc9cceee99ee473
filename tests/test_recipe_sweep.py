"""The recipe sweep of `bench detectors`/`bench agents` (issue 24) and the agents' recipe-relative evidence."""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pytest

from agents.benchmark import AgentResult, LabelOutcome, markdown
from agents.diagnose import diagnose_ticks, evidence_end, previous_end, previous_end_stored, recipe_rows
from agents.evidence import Deviation, Evidence, gather
from agents.incidents import IncidentTracker
from agents.troubleshooting import ABSTAIN_BELOW, rank
from detectors.benchmark import (
    NO_MAGNITUDE,
    SWEEP_COMPOSITES,
    SWEEP_RANGES,
    draw_recipes,
    monitor_run,
    sweep_plan,
)
from detectors.reactor_monitor import ReactorMonitor
from detectors.recipe import Recipe
from detectors.unit_monitor import MonitorConfig
from sources.fleet import simulate_run
from sources.scenarios import ARCHETYPE_SCENARIOS, load_scenario, parse_scenario


def test_the_sweep_draws_valid_distinct_recipes_the_same_for_the_same_seed():
    recipes = draw_recipes(8, seed=3)
    assert list(recipes) == [f"r{i:02d}" for i in range(8)]
    assert {n: r.model_dump() for n, r in recipes.items()} == {n: r.model_dump()
                                                                for n, r in draw_recipes(8, seed=3).items()}
    assert len({Recipe.from_scenario(r).hash for r in recipes.values()}) == 8  # distinct
    assert [r.model_dump() for r in draw_recipes(8, seed=4).values()] != [r.model_dump() for r in recipes.values()]
    for r in recipes.values():
        assert not r.faults
        lo, hi = SWEEP_RANGES["do_setpoint_pct"]
        assert lo <= r.process.do_setpoint_pct <= hi
        assert SWEEP_RANGES["ph_setpoint"][0] <= r.process.ph_setpoint <= SWEEP_RANGES["ph_setpoint"][1]
        assert 1.0 <= r.process.working_volume_l <= 2000.0
        # the pump is sized for the vessel: a bolus still takes as long as at the default 1.6 L
        assert r.feed.pump_ml_min / r.process.working_volume_l == pytest.approx(2.0 / 1.6)
    assert {r.feed.mode for r in recipes.values()} == {"bolus", "continuous"}


def test_the_plan_has_normal_runs_every_archetype_at_built_in_and_half_magnitude_and_composites():
    plan = sweep_plan(2, seed=5)
    one = [c for c in plan if c.recipe == "r00"]
    assert sum(c.kind == "normal" for c in one) == 2
    assert {c.kind for c in one if c.magnitude == "built-in"} == {*ARCHETYPE_SCENARIOS.values(), *SWEEP_COMPOSITES}
    halves = {c.kind: c for c in one if c.magnitude == "half"}
    assert set(halves) == {s for f, s in ARCHETYPE_SCENARIOS.items() if f not in NO_MAGNITUDE}
    built_in = load_scenario("ph_excursion").faults[0].magnitude
    assert halves["ph_excursion"].scenario.faults[0].magnitude == (built_in[0] / 2, built_in[1] / 2)
    assert len({c.seed for c in plan}) == len(plan)  # every run on its own seed
    assert not {c.seed for c in plan} & {c.seed for c in sweep_plan(2, seed=6)}  # tuning and test seeds apart


def test_the_sweep_json_keeps_the_suite_keys_and_adds_per_recipe_and_half_magnitude():
    res = AgentResult(sweep={"recipes": 2, "seed": 1, "runs": 6, "recipe_blind": False}, normal_runs=4,
                      incidents_on_normal_runs=1, incidents_on_normal_runs_by_recipe={"r00": 1, "r01": 0},
                      recipes={n: {"do_setpoint_pct": 30.0, "ph_setpoint": 7.0, "feed_mode": "bolus",
                                   "temp_shift_day": None, "working_volume_l": 200.0, "seed_vcd_e6_per_ml": 0.4}
                               for n in ("r00", "r01")})
    res.outcomes = [LabelOutcome("overfeed", "overfeed", 1, True, True, True, False, "overfeed", "r00"),
                    LabelOutcome("overfeed", "overfeed", 2, True, False, True, False, "underfeed", "r01"),
                    LabelOutcome("overfeed", "overfeed", 3, False, False, False, False, None, "r00", "half")]
    j = res.as_json()
    assert (j["top1"], j["top3"], j["incidents_on_normal_runs"]) == (0.5, 1.0, 1)  # built-in magnitudes only
    assert j["incidents_on_normal_runs_by_recipe"] == {"r00": 1, "r01": 0}
    assert j["per_archetype"]["overfeed"]["detected"] == 1.0
    assert j["half_magnitude"]["per_archetype"]["overfeed"] == {"labels": 1, "detected": 0.0, "top1": 0.0,
                                                                "top3": 0.0}
    assert "| r00 | 30 | 7 | bolus | none | 200 | 0.4 | 1 |" in markdown(res)
    assert "| **all** | 2 | 100% | 50% | 100% |" in markdown(res)  # the half-magnitude label is in its own table


@pytest.fixture(scope="module")
def low_do_run():
    """A normal run at DO setpoint 25 % (the default is 40 %) and its recipe."""
    normal = load_scenario("normal")
    scenario = normal.with_overrides(process={**normal.process.model_dump(), "do_setpoint_pct": 25.0})
    return simulate_run(scenario, 3), Recipe.from_scenario(scenario)


def test_a_normal_run_at_a_low_do_setpoint_is_not_do_limitation_against_its_own_recipe(low_do_run):
    sim, recipe = low_do_run
    start = sim.started + timedelta(days=5)
    blind = rank(gather(sim.ticks, start, start + timedelta(hours=2), sim.assays))
    assert blind.top is not None and blind.top.fault == "do_limitation"  # what the default recipe made of it
    own = rank(gather(sim.ticks, start, start + timedelta(hours=2), sim.assays, recipe=recipe))
    assert {h.fault: h.match for h in own.hypotheses}["do_limitation"] < ABSTAIN_BELOW
    assert own.top is None or own.top.fault != "do_limitation"


def test_the_agent_cites_the_operators_change_as_evidence():
    sim = simulate_run("do_limitation", 7)
    fault = sim.labels[0]
    change = {"ts": fault.start_ts - timedelta(hours=3), "kind": "recipe", "changed_by": "operator@plant",
              "text": "DO setpoint lowered to 30 % (from 40)", "recipe_hash": "0" * 16}
    too_old = {**change, "ts": fault.start_ts - timedelta(days=2), "text": "pH setpoint raised to 7.1 (from 7)"}
    findings = diagnose_ticks(sim.ticks, sim.assays, recipes=recipe_rows(Recipe.default(), sim.started),
                              annotations=[too_old, change])
    first = next(f for f in findings if f.incident["start_ts"] >= fault.start_ts)
    cited = (f"operator change: DO setpoint lowered to 30 % (from 40) at {change['ts']:%Y-%m-%d %H:%M} UTC "
             "by operator@plant")
    assert first.diagnosis.facts[0] == cited
    assert first.diagnosis.top.fault == "do_limitation" and cited in first.diagnosis.top.evidence
    assert not any("pH setpoint" in fact for fact in first.diagnosis.facts)  # two days before: not its context


def test_a_fault_after_another_fault_opens_its_own_incident_while_the_first_alarm_is_still_on():
    t0 = load_scenario("normal").start
    tracker = IncidentTracker()

    def alert(alert_id: str, hours: float, *signals: tuple[str, float]) -> list[dict]:
        return tracker.on_alert({"alert_id": alert_id, "run_id": "run", "reactor_id": "r1", "severity": "warning",
                                 "ts": t0 + timedelta(hours=hours),
                                 "signals": [{"name": n, "contribution": c} for n, c in signals]})

    first = alert("overfeed", 120.0, ("feed_ml_per_tick", 0.7), ("do_pct", 0.2))[0]
    # the overfeed's own consequences (led by the feed again) stay in its incident
    assert alert("aftermath", 125.0, ("feed_ml_per_tick", 0.5), ("ph", 0.4))[0]["incident_id"] == first["incident_id"]
    # a day later, still in alarm: a DO limitation led by do_pct, a signal that only took part before, is news
    events = alert("do_limitation", 144.0, ("do_pct", 0.8), ("o2_sccm", 0.1))
    assert [e["event"] for e in events] == ["resolve", "open"]
    assert events[1]["incident_id"] != first["incident_id"]


def test_a_news_alarm_opens_its_own_incident_though_its_signal_led_one_of_the_earlier_incidents_alerts():
    """Seed 7 r12: the spike's twin_residual alarm, led by pH (the culture the spike left), stays on over the pH
    probe's drift; the drift's news alarm (`twin_residual:ph`), led by pH too, joined the spike's incident and the
    drift was never diagnosed. The same news again is the same incident."""
    t0 = load_scenario("normal").start
    tracker = IncidentTracker()

    def alert(alert_id: str, hours: float, member: str, signal: str) -> list[dict]:
        return tracker.on_alert({"alert_id": alert_id, "run_id": "run", "reactor_id": "r1", "severity": "warning",
                                 "ts": t0 + timedelta(hours=hours), "member": member,
                                 "signals": [{"name": signal, "contribution": 1.0}]})

    spike = alert("golden", 100.0, "golden", "temp_c")[0]
    assert alert("residual", 100.5, "twin_residual", "ph")[0]["incident_id"] == spike["incident_id"]
    assert alert("residual-again", 130.0, "twin_residual", "ph")[0]["incident_id"] == spike["incident_id"]
    events = alert("news", 150.0, "twin_residual:ph", "ph")
    assert [e["event"] for e in events] == ["resolve", "open"] and events[1]["incident_id"] != spike["incident_id"]
    assert [e["event"] for e in alert("news-again", 170.0, "twin_residual:ph", "ph")] == ["update"]


def test_an_incident_superseded_at_its_first_alert_has_evidence_until_the_next_began():
    t0 = load_scenario("normal").start
    hours = [t0 + timedelta(hours=h) for h in (0.0, 0.5, 10.0)]
    first, second, third = ({"start_ts": t, "end_ts": t} for t in hours)  # each resolved at once by the next
    starts = [i["start_ts"] for i in (first, second, third)]
    assert evidence_end(first, starts) == hours[1]
    assert evidence_end(second, starts) == hours[1] + timedelta(hours=2)  # no more than the horizon
    assert evidence_end({"start_ts": t0, "end_ts": t0 + timedelta(hours=1)}, starts) == t0 + timedelta(hours=1)
    assert evidence_end({"start_ts": t0, "end_ts": None}, starts) == t0 + timedelta(hours=2)


def test_a_ph_probe_drifting_after_a_temperature_spike_gets_its_own_alert_while_the_spike_alarm_is_still_on():
    base = load_scenario("normal").model_dump()
    faults = [{"fault": "temperature_spike", "start_day": 4.5, "duration_h": 8.0, "magnitude": 3.0},
              {"fault": "sensor_drift", "signal": "ph", "start_day": 6.5, "duration_h": 72.0, "magnitude": 0.08}]
    sim = simulate_run(parse_scenario({**base, "name": "spike_then_drift", "faults": faults, "days": 10.0}), 5)
    monitor = ReactorMonitor("r1", MonitorConfig.for_detector("fusion"))
    alerts = [*monitor.on_ticks(sim.ticks).alerts, *monitor.on_watermark(2**62).alerts]
    spike, drift = sim.labels
    residual = [a for a in alerts if a["member"] == "twin_residual"]
    assert len(residual) == 1 and spike.start_ts <= residual[0]["ts"] <= spike.end_ts + timedelta(hours=6)
    assert monitor.open_alerts.get("twin_residual") is not None  # the spike's alarm never closed
    news = [a for a in alerts if a["member"] == "twin_residual:ph"]
    assert news and drift.start_ts <= news[0]["ts"] <= drift.end_ts
    assert news[0]["signals"] == [{"name": "ph", "contribution": 1.0}]
    # the spike's own aftermath is not news: nothing else of the member before the drift began
    assert not [a for a in alerts if a["member"].startswith("twin_residual:") and a["ts"] < drift.start_ts]


def test_a_ph_drift_up_from_where_the_spikes_aftermath_left_the_reading_low_is_news():
    """Sweep seed 24's r13 (pH setpoint 7.12): the spike leaves the reading 0.05 below the median (twin_residual
    ratio -1.1 when its levels are taken), and the probe then drifts 0.14 up. The drift's residual only reaches
    +0.95 by the window's end: as a magnitude it first falls to 0, and only the signed move (2.0) is news."""
    case = next(c for c in sweep_plan(16, 24) if c.recipe == "r13" and c.kind == "temperature_spike_then_ph_drift")
    sim, alerts = monitor_run(case)
    drift = sim.labels[1]
    news = [a for a in alerts if a["member"] == "twin_residual:ph"]
    assert news and drift.start_ts <= news[0]["ts"] <= drift.end_ts


def _slumped_culture_with_a_high_ph(t0: datetime) -> Evidence:
    """A culture a temperature spike left slower (respiration and the CO2 it needs for pH down), and a pH reading
    that has since climbed on its own: the drift's incident, led by pH."""
    def dev(signal: str, z: float, onset_min: float = 0.0) -> Deviation:
        return Deviation(signal, z, t0, None, 0.0, onset_min)

    ev = Evidence("run", "r1", t0, t0 + timedelta(hours=2), contributions={"ph": 1.0})
    ev.deviations = {d.signal: d for d in (dev("ph", 7.2, 2300.0), dev("co2_sccm", -5.6), dev("o2_sccm", -5.7),
                                           dev("our_mmol_l_h", -5.9), dev("cer_mmol_l_h", -6.1))}
    return ev


def test_a_ph_drift_after_a_closed_incident_is_judged_by_what_moved_since_the_reading_left_normal():
    t0 = load_scenario("normal").start + timedelta(days=9)
    ev = _slumped_culture_with_a_high_ph(t0)
    alone = rank(ev)  # no earlier incident: the slump is this incident's, and no reading is alone
    assert alone.top is None or alone.top.fault != "sensor_drift"
    # the spike's incident had closed before pH left normal, when the culture was already as slow as now
    ev.lead, ev.aftermath = "ph", ["o2_sccm", "our_mmol_l_h", "cer_mmol_l_h"]
    ev.onset_z = {"ph": {"co2_sccm": -4.8, "o2_sccm": -5.4, "our_mmol_l_h": -6.3, "cer_mmol_l_h": -6.4}}
    after = rank(ev)
    assert after.top is not None and after.top.fault == "sensor_drift"
    assert {h.fault: h.match for h in after.hypotheses}["do_limitation"] < ABSTAIN_BELOW
    # a signal back towards normal since then is recovery, not a move: it counts for nothing
    assert ev.move("our_mmol_l_h") == 0.0 and ev.move("o2_sccm") == pytest.approx(-0.3)
    assert ev.move("co2_sccm") == -5.6  # not left off normal by the spike: all of it is this incident's


def test_a_controllers_answer_before_the_reading_moved_is_still_an_echo():
    """A cascade holds DO by raising O2 before DO falls: O2 already up when DO left normal is the process, not an
    earlier fault's aftermath, so a falling DO with O2 up is no lone reading even after an earlier incident."""
    t0 = load_scenario("normal").start + timedelta(days=6)
    ev = Evidence("run", "r1", t0, t0 + timedelta(hours=2), contributions={"do_pct": 1.0})
    ev.deviations = {"do_pct": Deviation("do_pct", -9.0, t0, None, 0.0, 1500.0),
                     "o2_sccm": Deviation("o2_sccm", 9.0, t0, None, 0.0)}
    ev.lead, ev.onset_z = "do_pct", {"do_pct": {"o2_sccm": 8.0}}
    assert {h.fault: h.match for h in rank(ev).hypotheses}["sensor_drift"] < 0.1


def test_a_falling_viable_capacitance_with_acid_and_respiration_holding_points_to_a_contamination():
    """Sweep seed 3's r06 contamination, its first incident: the contaminant has killed CHO cells (capacitance
    down for days) and made acid (pH down), while respiration held. A capacitance probe drifting alone looks the
    same but for the acid: the two stay the first two hypotheses (without the capacitance and the acid in the
    contamination's signature it ranked fourth, behind a pH excursion and a temperature spike)."""
    t0 = load_scenario("normal").start + timedelta(days=6)
    ev = Evidence("run", "r1", t0, t0 + timedelta(hours=2), contributions={"capacitance_pf_cm": 1.0})
    ev.deviations = {d.signal: d for d in (
        Deviation("capacitance_pf_cm", -13.4, t0, None, 0.0, 4478.0), Deviation("ph", -9.9, t0, None, 0.0, 725.0),
        Deviation("co2_sccm", -3.7, t0, None, 0.0, 2414.0), Deviation("our_mmol_l_h", 2.9, t0, None, 0.0, 750.0),
        Deviation("cer_mmol_l_h", 3.3, t0, None, 0.0, 745.0), Deviation("o2_sccm", 2.3, t0, None, 0.0, 759.0),
        Deviation("temp_c", 1.9, t0, None, 0.0, 239.0))}
    assert {h.fault for h in rank(ev).ranked(2)} == {"sensor_drift", "contamination"}
    with_acid = {h.fault: h.match for h in rank(ev).hypotheses}["contamination"]
    ev.deviations["ph"] = Deviation("ph", 0.0, t0, None, 0.0)
    assert {h.fault: h.match for h in rank(ev).hypotheses}["contamination"] < with_acid - 0.1


def test_a_probe_drift_caught_early_is_timed_from_where_the_reading_left_normal():
    """Sweep seed 11's r08 sensor drift: the probe wanders for hours before it crosses |z| 3 and alarms. Timed
    from |z| < 3 the deviation built within the horizon (a process step); from |z| < 1, over hours: the drift."""
    case = next(c for c in sweep_plan(16, 11) if c.recipe == "r08" and c.kind == "sensor_drift"
                and c.magnitude == "built-in")
    sim = simulate_run(case.scenario, case.seed)
    findings = diagnose_ticks(sim.ticks, sim.assays, recipes=recipe_rows(Recipe.from_scenario(case.scenario),
                                                                         sim.started))
    label = sim.labels[0]
    first = next(f for f in findings if label.start_ts <= f.incident["start_ts"] <= label.end_ts)
    lead = first.evidence.deviations[first.evidence.lead]
    assert lead.onset_min >= 6 * 60
    assert first.diagnosis.top is not None and first.diagnosis.top.fault == "sensor_drift"


def test_the_previous_incident_is_the_latest_other_one_closed_by_the_start():
    t0 = load_scenario("normal").start
    incidents = [{"incident_id": "spike", "start_ts": t0, "end_ts": t0 + timedelta(hours=9)},
                 {"incident_id": "blip", "start_ts": t0 + timedelta(hours=20), "end_ts": t0 + timedelta(hours=20)},
                 {"incident_id": "open", "start_ts": t0 + timedelta(hours=30), "end_ts": None}]
    assert previous_end(incidents, incidents[1]) == t0 + timedelta(hours=9)  # not its own end
    assert previous_end(incidents, incidents[2]) == t0 + timedelta(hours=20)
    assert previous_end(incidents, incidents[0]) is None


def test_the_live_worker_finds_the_previous_incident_in_the_lake(tmp_path):
    from core.events import INCIDENTS
    from sinks import delta

    t0 = load_scenario("normal").start
    lake = str(tmp_path / "lake")
    assert previous_end_stored(lake, {"incident_id": "new", "run_id": "run", "start_ts": t0}) is None  # no table
    rows = [{"incident_id": "spike", "version": v, "event": e, "run_id": run, "reactor_id": "r1", "status": e,
             "start_ts": t0, "end_ts": end, "severity": "warning", "alert_count": 1, "signals": ["temp_c"],
             "emitted_at": t0} for v, e, end, run in ((1, "open", None, "run"),
                                                      (2, "resolve", t0 + timedelta(hours=9), "run"),
                                                      (1, "resolve", t0 + timedelta(hours=30), "other run"))]
    delta.append(lake, "incidents", pa.Table.from_pylist(rows, INCIDENTS), INCIDENTS)
    drift = {"incident_id": "drift", "run_id": "run", "start_ts": t0 + timedelta(days=2)}
    assert previous_end_stored(lake, drift) == t0 + timedelta(hours=9)
