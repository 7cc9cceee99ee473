"""The reference follows the recipe (issue 24 §1): off-default normal runs, a mid-run setpoint change, a monitor
joining a run mid-batch, the reference cache, and the plant's recipe messages into the monitor.

Plain Python: a run is simulated by the fleet and scored by the flow's own `ReactorMonitor` (fusion, as the
flow runs it), one hour of ticks per call. Runs are 5 days long to keep the module fast; seeds 1 and 2 are
used because seeds 3 and 4 of the default recipe already raise a z-score alarm at the first bolus (a matter
of the fusion's calibration, not of the recipe)."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.codec import encode_arrow
from core.events import LABELS, RUNS, TICKS, Label
from core.plants import PLANTS
from detectors import golden_build
from detectors import recipe as recipes
from detectors.base import DETECTOR_SIGNALS
from detectors.features import features
from detectors.fusion import calibrated_members
from detectors.golden import Golden, GoldenReference
from detectors.golden_build import ENVELOPE_Z, summarise_runs, tail_limit
from detectors.reactor_monitor import ReactorMonitor
from detectors.recipe import BUILD_VERSION, Recipe, cached, pump_levels, reference_for, spread_floor
from detectors.twin_residual import TwinResidual
from detectors.unit_monitor import MonitorConfig, MonitorState, monitor_step
from sources.commands import parse_command
from sources.fleet import Fleet, simulate_run
from sources.jetstream import Message
from sources.plant import PlantFeed
from sources.scenarios import Scenario, load_scenario, parse_scenario
from sources.telemetry import KIND_HEADER, route

CONFIG = MonitorConfig.for_detector("fusion")
DAYS = 5.0
HOUR = 60  # ticks


@pytest.fixture(scope="module", autouse=True)
def reference_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A cache of this module's own: every off-default reference is built here once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(recipes.CACHE_ENV, str(tmp_path_factory.mktemp("references")))
        mp.setattr(recipes, "_MEMORY", type(recipes._MEMORY)())
        yield


def _scenario(process: dict | None = None, feed: dict | None = None, days: float = DAYS) -> Scenario:
    base = load_scenario("normal")
    return base.with_overrides(days=days, process={**base.process.model_dump(), **(process or {})},
                               feed={**base.feed.model_dump(), **(feed or {})})


def _alerts(monitor: ReactorMonitor, ticks: pa.Table | pa.RecordBatch) -> list[dict]:
    table = ticks if isinstance(ticks, pa.Table) else pa.Table.from_batches([ticks])
    alerts = []
    for i in range(0, table.num_rows, HOUR):
        alerts += monitor.on_ticks(table.slice(i, HOUR)).alerts
    return alerts


def _score_run(scenario: Scenario, seed: int, told: bool) -> list[dict]:
    run = simulate_run(scenario, seed)
    monitor = ReactorMonitor("r1", CONFIG)
    if told:
        monitor.set_recipe(Recipe.from_scenario(scenario), run.started, run_id=run.ticks["run_id"][0].as_py(),
                           run_start_ts=run.started)
    return _alerts(monitor, run.ticks)


OFF_DEFAULT = {
    "lower DO setpoint": {"process": {"do_setpoint_pct": 30.0}},
    "other pH setpoint": {"process": {"ph_setpoint": 6.85}},
    "continuous feed": {"feed": {"mode": "continuous"}},
    "earlier shift": {"process": {"temp_shift_day": 3.0}},
    "200 L vessel": {"process": {"working_volume_l": 200.0}},
    # its pumps sized for it (125x the default's): a bolus's first and last tick must not read as a fault
    "200 L vessel, its own pumps": {"process": {"working_volume_l": 200.0, "base_max_ml_min": 31.25},
                                    "feed": {"pump_ml_min": 250.0}},
}


@pytest.mark.parametrize("name", list(OFF_DEFAULT))
def test_an_off_default_normal_recipe_raises_no_alarm_once_the_monitor_has_it(name: str):
    scenario = _scenario(**OFF_DEFAULT[name])
    assert _score_run(scenario, 1, told=True) == []
    assert _score_run(scenario, 2, told=True) == []


def test_the_off_default_recipes_did_raise_alarms_against_the_default_reference():
    raised = {name: len(_score_run(_scenario(**changes), 1, told=False)) for name, changes in OFF_DEFAULT.items()}
    assert all(raised.values()), raised


def _change_run(seed: int, told: bool, fault: tuple | None = None) -> tuple[list[dict], list[dict]]:
    """A normal 5-day run whose DO setpoint an operator lowers from 40 to 30 % at 26 h."""
    scenario = load_scenario("normal").with_overrides(days=DAYS)
    fleet = Fleet(scenario, 1, seed=seed)
    if fault:
        fleet.inject_fault(0, *fault)
    monitor = ReactorMonitor("r1", CONFIG)
    recipe = Recipe.from_scenario(scenario)
    monitor.set_recipe(recipe, fleet.started[0], run_id=fleet.run_ids[0], run_start_ts=fleet.started[0])
    alerts = _alerts(monitor, fleet.step(26 * HOUR).ticks)
    fleet.set_control(0, "do_setpoint_pct", 30.0)
    annotations = []
    if told:  # as the dashboard would say it: the recipe with its new setpoint, not when it changed
        out = monitor.set_recipe(recipe.with_changes(do_setpoint_pct=30.0), fleet.started[0] + timedelta(hours=26),
                                 changed_by="operator@plant")
        annotations = out.tables["annotations"].to_pylist()
    return alerts + _alerts(monitor, fleet.step(fleet.remaining_ticks).ticks), annotations


def test_a_mid_run_do_setpoint_change_raises_nothing_and_is_annotated():
    alerts, annotations = _change_run(1, told=True)
    assert alerts == []
    assert [a["text"] for a in annotations] == ["DO setpoint lowered to 30 % (from 40) at 02:00 by operator@plant"]
    assert annotations[0]["kind"] == "change"
    untold, _ = _change_run(1, told=False)
    assert untold, "the change went unnoticed even against the old recipe's reference"


def test_a_fault_after_the_change_is_still_alarmed():
    alerts, _ = _change_run(1, told=True, fault=("do_limitation", 60.0, 24.0, 1.0))
    hours = [(a["ts"] - load_scenario("normal").start).total_seconds() / 3600 for a in alerts]
    assert any(60.0 <= h <= 84.0 for h in hours), hours


def test_a_monitor_joining_mid_batch_counts_culture_age_from_the_run_start():
    run = simulate_run("normal", 1)
    joined = run.ticks.slice(50 * HOUR)  # the flow (re)starts 50 h into the batch
    assert _alerts(ReactorMonitor("r1", CONFIG), joined) == []  # age from the ticks' seq
    told = ReactorMonitor("r1", CONFIG)
    told.set_recipe(Recipe.default(), run.started + timedelta(hours=50), run_id=run.ticks["run_id"][0].as_py(),
                    run_start_ts=run.started)
    assert _alerts(told, joined) == []


def test_a_reference_is_built_once_then_read_from_memory_or_disk():
    recipe = Recipe.from_scenario(_scenario(process={"do_setpoint_pct": 35.0}, days=2.0))
    assert not cached(recipe)
    built = reference_for(recipe)
    assert cached(recipe) and built.source.name == f"{recipe.hash}.v{BUILD_VERSION}.npz"
    assert reference_for(recipe) is built  # memory
    recipes._MEMORY.clear()
    again = reference_for(recipe)  # disk
    assert again.source == built.source and (again.median == built.median).all()
    assert reference_for(Recipe.default()).source.name == "golden_batch.npz"


def test_a_new_recipe_is_built_in_the_background_while_its_members_hold_then_used():
    scenario = _scenario(process={"do_setpoint_pct": 33.0}, days=1.0)
    recipe = Recipe.from_scenario(scenario)
    assert not cached(recipe)
    run = simulate_run(scenario, 1)
    monitor = ReactorMonitor("r1", MonitorConfig.for_detector("fusion", reference_in_background=True))
    monitor.set_recipe(recipe, run.started, run_id=run.ticks["run_id"][0].as_py(), run_start_ts=run.started)
    monitor.on_ticks(run.ticks.slice(0, HOUR))  # returns at once: the build takes seconds
    golden = monitor.detector.detectors["golden"]
    assert monitor.awaiting == recipe and golden.reference.source.name == "golden_batch.npz"
    assert not monitor.det_state.members["golden"].smooth.any()  # held: not scored against the default's
    recipes._BUILDS[recipe.hash].result(timeout=300)
    monitor.on_ticks(run.ticks.slice(HOUR, HOUR))
    assert monitor.awaiting is None and golden.reference.source.name.startswith(recipe.hash)
    assert monitor.det_state.members["golden"].smooth.any()
    assert pickle.loads(pickle.dumps(monitor)).awaiting is None
    assert _alerts(monitor, run.ticks.slice(2 * HOUR)) == []


def test_a_monitor_with_a_recipe_snapshots_the_reference_by_its_file():
    scenario = _scenario(process={"do_setpoint_pct": 30.0})
    recipe = Recipe.from_scenario(scenario)
    run = simulate_run(scenario.with_overrides(days=0.1), 1)
    monitor = ReactorMonitor("r1", CONFIG)
    monitor.set_recipe(recipe, run.started, run_id=run.ticks["run_id"][0].as_py())
    monitor.on_ticks(run.ticks)
    restored = pickle.loads(pickle.dumps(monitor))
    assert restored.recipe == recipe
    assert len(pickle.dumps(monitor)) < 2_000_000


def test_the_plant_publishes_each_recipe_change_and_the_flow_routes_it_to_the_monitor():
    feed = PlantFeed("nats://127.0.0.1:1", load_scenario("normal").with_overrides(days=1.0), reactors=2)
    fleet = feed._new_sim(0, load_scenario("normal").start)
    started = feed._announcements()
    assert [unit for unit, _, _ in started] == ["r1", "r2"]
    ticks = pa.Table.from_batches([fleet.step(3 * HOUR).ticks])
    feed._control(fleet, "r1", parse_command(
        b'{"type": "setpoint", "name": "do_setpoint_pct", "value": 30, "changed_by": "operator@plant"}'))
    (unit, kind, rows), = feed._announcements()
    assert (unit, kind) == ("r1", "recipe")
    assert Recipe.from_json(rows["recipe_json"][0].as_py()).changes == ((3.0, "do_setpoint_pct", 30.0),)

    def routed(rows: pa.Table) -> list[dict]:
        nonlocal state
        msg = Message("biopilot.assays.r1", encode_arrow(rows), {KIND_HEADER: "recipe"}, 1)
        (item,), dead = route(msg, PLANTS["bioreactor"])
        assert dead is None and item.kind == "recipe"
        state, (out,) = monitor_step(state, item, CONFIG, ReactorMonitor)
        assert out.tables["recipes"]["recipe_hash"].to_pylist() == rows["recipe_hash"].to_pylist()
        return out.tables["annotations"].to_pylist()

    state: MonitorState | None = None
    assert routed(started[0][2])[0]["kind"] == "recipe"
    assert state.monitor.on_ticks(ticks.filter(pc.equal(ticks["reactor_id"], "r1"))).alerts == []
    (change,) = routed(rows)
    assert (change["kind"], change["changed_by"]) == ("change", "operator@plant")
    assert change["text"] == "DO setpoint lowered to 30 % (from 40) at 03:00 by operator@plant"


def test_a_reference_learned_from_the_plants_own_batches_is_used_and_said_and_faulted_runs_refused(tmp_path, capsys):
    from biopilot.cli import main
    from sinks import delta

    scenario = _scenario(process={"do_setpoint_pct": 45.0}, days=1.0)
    runs = [simulate_run(scenario, seed) for seed in (7, 8)]
    fleet = Fleet(scenario, 2, seed=7)
    delta.append(tmp_path, "ticks", pa.concat_tables([run.ticks for run in runs]), TICKS)
    delta.append(tmp_path, "runs", fleet.runs_table().set_column(
        0, "run_id", pa.array([run.ticks["run_id"][0].as_py() for run in runs])), RUNS)
    ids = ",".join(run.ticks["run_id"][0].as_py() for run in runs)
    assert main(["reference", "build", "--runs", ids, "--lake", str(tmp_path), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    recipe = Recipe.from_scenario(scenario)
    assert (built["source"], built["recipe_hash"], built["runs"]) == ("learned", recipe.hash, 2)
    assert built["path"] and Path(built["path"]).is_file()  # where the learned reference went (was null)

    monitor = ReactorMonitor("r1", CONFIG)
    out = monitor.set_recipe(recipe, runs[0].started, run_id="next-run")
    assert out.tables["recipes"]["reference"].to_pylist() == ["learned"]
    assert "learned from the plant's own normal batches" in out.tables["annotations"]["text"][0].as_py()
    assert main(["reference", "build", "--runs", "no-such-run", "--lake", str(tmp_path)]) == 2
    capsys.readouterr()
    label = Label(run_id=runs[1].ticks["run_id"][0].as_py(), reactor_id="r2", fault="overfeed",
                  start_ts=runs[1].started, end_ts=runs[1].started, signals=["osmolality"], magnitude=1.0,
                  root_cause="feed pump overdosed", action="check the pump")
    delta.append(tmp_path, "labels", pa.Table.from_pylist([vars(label)], LABELS), LABELS)
    assert main(["reference", "build", "--runs", ids, "--lake", str(tmp_path)]) == 2
    assert f"{label.run_id} (overfeed) carry fault labels" in capsys.readouterr().err
    assert main(["reference", "build", "--runs", ids, "--lake", str(tmp_path), "--include-faulted"]) == 0


def test_a_tail_limit_from_30_runs_maxima_is_crossed_by_new_runs_about_as_often_as_asked():
    # 2,000 references of 30 runs each (one per column), the runs' maxima Gumbel(2, 0.4): a new run crosses the
    # largest of 30 with probability 1/31 on average, the extrapolated limit with about the 1 % asked
    maxima = np.random.default_rng(3).gumbel(2.0, 0.4, size=(30, 2000))
    limit = tail_limit(maxima, 0.01)
    assert (limit >= maxima.max(axis=0)).all()
    crossed = 1 - np.exp(-np.exp(-(limit - 2.0) / 0.4))
    crossed_worst = 1 - np.exp(-np.exp(-(maxima.max(axis=0) - 2.0) / 0.4))
    assert 0.005 < float(crossed.mean()) < 0.02 < 0.025 < float(crossed_worst.mean()) < 0.04


def test_a_tail_limit_from_one_run_is_its_largest_not_nan():
    # a reference learned from one batch: a NaN limit would never be crossed, a blind spot on the cascade signals
    assert tail_limit(np.array([[2.0, 3.5]]), 0.01).tolist() == [2.0, 3.5]


def test_a_cascade_stage_only_one_reference_run_reached_reads_below_the_golden_level():
    """One of 12 normal runs reaches the cascade's air stage (+20 sccm) for two hours while the others stay at the
    minimum: a new run doing the same must not read z ~100 against the other runs' tight spread. A probe (pH)
    keeps its spread: one run's dip does not blunt it."""
    fleet = Fleet(_scenario(days=2.0), 12, seed=5)
    ticks = pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks])
    day = ticks["seq"].to_numpy() / 1440
    dip = pc.equal(ticks["run_id"], ticks["run_id"][0]).to_numpy(zero_copy_only=False) & (day >= 1.5) & (day < 1.58)
    dipped = ticks
    for name, move in (("air_sccm", 20.0), ("ph", -0.2)):
        x = ticks[name].to_numpy().copy()
        x[dip] += move
        dipped = dipped.set_column(ticks.schema.get_field_index(name), name, pa.array(x))
    before, after = (summarise_runs(t, spread_floor(), pump_levels()) for t in (ticks, dipped))
    bins = np.unique((day[dip] * 1440 // after.bin_min).astype(int))
    air, ph = DETECTOR_SIGNALS.index("air_sccm"), DETECTOR_SIGNALS.index("ph")
    assert (20.0 / before.upper[bins, air]).min() > 2 * ENVELOPE_Z  # the other runs agreed there
    assert (20.0 / after.upper[bins, air]).max() <= ENVELOPE_Z + 1e-9
    np.testing.assert_allclose(after.scale[bins, ph], before.scale[bins, ph], rtol=0.2)


def _shifted(ticks: pa.Table, name: str, where: np.ndarray, move: float) -> pa.Table:
    x = ticks[name].to_numpy().copy()
    x[where] += move
    return ticks.set_column(ticks.schema.get_field_index(name), name, pa.array(x))


def _twin_residual_peak(ref: GoldenReference, ticks: pa.Table, signal: str, late_min: int = 0) -> float:
    """twin_residual's largest ratio on `signal` over one run's `ticks`, its readings `late_min` minutes late
    (the first held meanwhile)."""
    detector = TwinResidual(reference=ref)
    ts = ticks["ts"].cast(pa.int64()).to_numpy()
    X = features(ticks, np.array([np.nan, np.nan]))
    X = X[np.maximum(np.arange(len(X)) - late_min, 0)]  # one tick a minute
    _, _, contrib = detector.score_learn_detail(detector.init_state(DETECTOR_SIGNALS), ts, X)
    return float(np.abs(contrib[:, DETECTOR_SIGNALS.index(signal)]).max())


def test_a_reading_past_the_side_a_controller_pins_alarms_though_the_runs_spread_wide_the_other_way():
    """Where the CO2 sparge pins pH at its top, 4 of 12 normal runs sag 0.1-0.25 below it for a day and the others
    sit at it: a new run reading 0.1 above all of them for that day is a pH fault (twin_residual alarms), which
    the sagging runs' spread would hide; a new normal run raises nothing."""
    scenario = _scenario(days=2.5)
    fleet = Fleet(scenario, 12, seed=5)
    ticks = pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks])
    day, runs = ticks["seq"].to_numpy() / 1440, ticks["run_id"].to_numpy(zero_copy_only=False)
    for k, run in enumerate(np.unique(runs)[::3]):
        ticks = _shifted(ticks, "ph", (runs == run) & (day >= 1.0) & (day < 2.0), -0.05 * (k + 2))
    ref = summarise_runs(ticks, spread_floor(), pump_levels())
    symmetric = replace(ref, scale_up=None)
    new = simulate_run(scenario, 99).ticks
    new_day = new["seq"].to_numpy() / 1440
    high = _shifted(new, "ph", (new_day >= 1.0) & (new_day < 2.0), 0.1)
    level = calibrated_members()["twin_residual"]
    assert _twin_residual_peak(ref, high, "ph") > level > _twin_residual_peak(symmetric, high, "ph")
    assert _twin_residual_peak(ref, new, "ph") < level


def test_a_culture_hours_behind_every_reference_run_raises_nothing_on_the_cascade_stages(monkeypatch):
    """A normal culture running 5.5 h behind all 12 reference runs reaches the agitation maximum 5.5 h after all
    of them: judged bin by bin, against their tight spread at the maximum, it alarms (twin_residual); judged
    against the bins within `TIMING_TOLERANCE_MIN` either side it does not."""
    scenario = _scenario(process={"do_setpoint_pct": 56.0, "seed_vcd_e6_per_ml": 0.6}, days=2.5)
    fleet = Fleet(scenario, 12, seed=5)
    ticks = pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks])
    tolerant = summarise_runs(ticks, spread_floor(), pump_levels())
    monkeypatch.setattr(golden_build, "TIMING_TOLERANCE_MIN", 0.0)
    exact = summarise_runs(ticks, spread_floor(), pump_levels())
    new = simulate_run(scenario, 99).ticks
    level = calibrated_members()["twin_residual"]
    assert _twin_residual_peak(exact, new, "agitation_rpm", 330) > level
    assert max(_twin_residual_peak(tolerant, new, name, 330) for name in ("agitation_rpm", "air_sccm")) < level


def test_a_culture_backing_off_the_agitation_maximum_all_reference_runs_hold_is_judged_by_their_free_spread():
    """All 12 reference runs hold agitation at its 220 rpm maximum from day 1 (spread 0.3 rpm, the reading's
    noise): a normal culture whose demand falls earlier backs off it. 10 rpm below for the last half day alarmed
    (twin_residual) against the noise; against the spread the runs show where agitation is free (about 5 rpm) it
    does not, 20 rpm below still does; the side above (a contamination's, a DO limitation's) and air (a missed
    feed backs air off first) keep their spreads."""
    scenario = _scenario(process={"do_setpoint_pct": 56.0, "seed_vcd_e6_per_ml": 0.6}, days=2.5)
    fleet = Fleet(scenario, 12, seed=5)
    ticks = pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks])
    ref = summarise_runs(ticks, spread_floor(), pump_levels(), golden_build.ceilings(scenario))
    noise = summarise_runs(ticks, spread_floor(), pump_levels())
    new = simulate_run(scenario, 99).ticks
    late = new["seq"].to_numpy() / 1440 >= 2.0
    level = calibrated_members()["twin_residual"]
    backed_off = _shifted(new, "agitation_rpm", late, -10.0)
    assert _twin_residual_peak(noise, backed_off, "agitation_rpm") > level > _twin_residual_peak(ref, backed_off,
                                                                                                   "agitation_rpm")
    assert _twin_residual_peak(ref, _shifted(new, "agitation_rpm", late, -20.0), "agitation_rpm") > level
    np.testing.assert_array_equal(ref.upper, noise.upper)
    air = DETECTOR_SIGNALS.index("air_sccm")
    np.testing.assert_array_equal(ref.scale[:, air], noise.scale[:, air])


def test_a_small_vessels_steady_feed_is_judged_against_its_rate_and_a_three_hour_overfeed_alarms():
    """Seed 7 r10's feed (1.3 L, continuous at 0.036 mL a tick, a totaliser of 0.01 mL steps): the runs' median
    increment is a whole step, 0.04, and twin_residual integrated the gap to the rate, z -0.26, for as long as
    the feed ran; an overfeed of two days' feed in 3 h (z 42, clipped at 10) then peaked at 1.37 against a level
    of 1.42 and was missed. Against the runs' mean, a normal run's feed residual stays near 0 and the overfeed
    alarms."""
    scenario = _scenario(process={"working_volume_l": 1.3}, feed={"mode": "continuous", "pump_ml_min": 1.625},
                         days=4.0)
    fleet = Fleet(scenario, 12, seed=5)
    ref = summarise_runs(pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks]), spread_floor(),
                         pump_levels())
    overfed = parse_scenario({**scenario.model_dump(), "name": "small_overfeed", "faults": [
        {"fault": "overfeed", "start_day": 3.2, "duration_h": 3.0, "magnitude": 2.0}]})
    level = calibrated_members()["twin_residual"]
    assert _twin_residual_peak(ref, simulate_run(scenario, 99).ticks, "feed_ml_per_tick") < 0.1
    assert _twin_residual_peak(ref, simulate_run(overfed, 99).ticks, "feed_ml_per_tick") > level
    # a bolus's edge, where the runs disagree, keeps the median: a bolus reads the pump's rate, not a share of it
    bolus = summarise_runs(pa.Table.from_batches([Fleet(_scenario(days=3.0), 12, seed=5).step(4320).ticks]),
                           spread_floor(), pump_levels())
    feed = DETECTOR_SIGNALS.index("feed_ml_per_tick")
    on = bolus.median[:, feed][bolus.median[:, feed] > 0]
    np.testing.assert_allclose(on, on.max(), rtol=0.02)


def test_one_reference_runs_early_excursion_does_not_blunt_a_probe_drift_found_days_later(monkeypatch):
    """One of 12 normal runs reads pH 0.15 high for 8 hours on day 1 (seed 7 r02's reference run skipping the pH
    dip): with one drift limit per signal, that run's residual set pH's limit for the whole batch and a pH probe
    drifting 0.08 per day from day 3.5 stayed under the alarm level; with a limit per culture age it is found,
    and a new normal run still raises nothing. Near the excursion the limit stays as high as before; away from it,
    it is the other runs' largest."""
    scenario = _scenario(days=5.0)
    fleet = Fleet(scenario, 12, seed=5)
    ticks = pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks])
    day, runs = ticks["seq"].to_numpy() / 1440, ticks["run_id"].to_numpy(zero_copy_only=False)
    ticks = _shifted(ticks, "ph", (runs == runs[0]) & (day >= 1.0) & (day < 1.33), 0.15)
    per_age = summarise_runs(ticks, spread_floor(), pump_levels())
    monkeypatch.setattr(golden_build, "LIMIT_REACH_MIN", 1e9)  # within reach of every age: one limit per signal
    whole_run = summarise_runs(ticks, spread_floor(), pump_levels())
    ph = DETECTOR_SIGNALS.index("ph")
    assert per_age.drift_limit.shape == per_age.median.shape
    near = int(1.2 * 1440 // per_age.bin_min)
    assert per_age.drift_limit[near, ph] == pytest.approx(whole_run.drift_limit[:, ph].max())
    assert per_age.drift_limit[-1, ph] < 0.7 * whole_run.drift_limit[-1, ph]
    new = simulate_run(scenario, 99).ticks
    new_day = new["seq"].to_numpy() / 1440
    ph_x = new["ph"].to_numpy().copy()
    ph_x += 0.08 * np.maximum(new_day - 3.5, 0.0)
    drifting = new.set_column(new.schema.get_field_index("ph"), "ph", pa.array(ph_x))
    level = calibrated_members()["twin_residual"]
    assert _twin_residual_peak(per_age, drifting, "ph") > level > _twin_residual_peak(whole_run, drifting, "ph")
    assert max(_twin_residual_peak(per_age, new, name) for name in DETECTOR_SIGNALS) < level


def _golden_peak(ref: GoldenReference, ticks: pa.Table, signal: str) -> float:
    """The golden detector's largest |contribution| on `signal` over one run's `ticks` (alarms at the fusion's
    golden level)."""
    detector = Golden(reference=ref)
    _, _, contrib = detector.score_learn_detail(detector.init_state(DETECTOR_SIGNALS),
                                                ticks["ts"].cast(pa.int64()).to_numpy(),
                                                features(ticks, np.array([np.nan, np.nan])))
    return float(np.abs(contrib[:, DETECTOR_SIGNALS.index(signal)]).max())


def test_a_jacket_failure_two_degrees_high_alarms_on_a_recipe_whose_temperature_stays_quiet():
    """Seed 3 r06's temperature spike, +2 C for 8 h, read golden z 65.8 against its recipe's 0.03 C spread: under
    the fusion's one golden level (66, set by the loudest signal of the default recipe's runs), missed. Here +1 C
    reads z 59. The normal runs' temperature never reads more than z ~2: against a level of its own (3 times
    that, at least 10) the step alarms, and a new normal run raises nothing on the probes that have one."""
    scenario = _scenario(days=3.0)
    fleet = Fleet(scenario, 12, seed=5)
    ref = summarise_runs(pa.Table.from_batches([fleet.step(fleet.remaining_ticks).ticks]), spread_floor(),
                         pump_levels())
    one_level = replace(ref, z_limit=None)
    level = calibrated_members()["golden"]
    new = simulate_run(scenario, 99).ticks
    new_day = new["seq"].to_numpy() / 1440
    spike = _shifted(new, "temp_c", (new_day >= 2.0) & (new_day < 2.33), 1.0)
    assert _golden_peak(ref, spike, "temp_c") > level > _golden_peak(one_level, spike, "temp_c")
    assert max(_golden_peak(ref, new, name) for name in golden_build.OWN_GOLDEN_Z) < level
    others = [j for j, name in enumerate(DETECTOR_SIGNALS) if name not in golden_build.OWN_GOLDEN_Z]
    np.testing.assert_array_equal(ref.z_limit[others], 1.0)
