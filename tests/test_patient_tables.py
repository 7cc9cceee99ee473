"""The patient plant's tables: schemas, run ids, the event plan, lab and dose rows, labels; and (integration)
`biopilot simulate --plant patient` into a real lake."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from core.events import DOSES, LABS, PATIENTS, SCHEMAS, VITAL_SIGNALS, VITALS
from sinks import delta
from sources.patient import cohort_sim as cs
from sources.patient.scenarios import load_patient_scenario, parse_patient_scenario, patient_scenario_names

START = datetime(2026, 1, 5, tzinfo=UTC)


def test_patient_schemas_key_on_run_and_patient_with_units_in_names():
    for name, schema in (("patients", PATIENTS), ("vitals", VITALS), ("labs", LABS), ("doses", DOSES)):
        assert SCHEMAS[name] is schema
        assert schema.names[:2] == ["run_id", "patient_id"]
        assert not schema.field("run_id").nullable and not schema.field("patient_id").nullable
    assert VITALS.names[2:] == ["seq", "ts", *VITAL_SIGNALS]
    assert LABS.names[2:] == ["sample_ts", "reported_ts", "inr", "hb_g_dl"]
    assert DOSES.names[2:] == ["ts", "drug", "dose_mg", "taken"]
    for column in ("age_years", "sex", "height_cm", "weight_kg", "ancestry", "cyp2c9", "vkorc1_1639", "cyp2d6",
                   "amiodarone", "enzyme_inducer", "warfarin_cl_l_h", "warfarin_ec50_mg_l", "metoprolol_cl_l_h"):
        assert column in PATIENTS.names


def test_run_ids_are_deterministic_and_change_with_scenario_seed_and_patient():
    sc = load_patient_scenario("warfarin_fixed_5mg")
    ids = {cs.patient_run_id(sc, seed, i) for seed in (0, 1) for i in range(50)}
    assert len(ids) == 100
    assert cs.patient_run_id(sc, 3, 7) == cs.patient_run_id(load_patient_scenario("warfarin_fixed_5mg"), 3, 7)
    assert cs.patient_run_id(sc.with_overrides(days=10), 3, 7) != cs.patient_run_id(sc, 3, 7)


def test_event_plan_draws_per_patient_within_ranges_and_share():
    sc = parse_patient_scenario({"name": "x", "events": [
        {"event": "sepsis", "onset_day": [2, 4], "duration_h": [10, 20], "magnitude": 1.5, "share": 0.5}]})
    rngs = [np.random.default_rng([9, k]) for k in range(400)]
    plan = cs.plan_events(sc.events, rngs)
    assert 150 < len(plan) < 250  # about half the patients
    assert np.all((plan.onset_h >= 48) & (plan.onset_h <= 96)) and np.all(plan.magnitude == 1.5)
    assert np.all((plan.duration_h >= 10) & (plan.duration_h <= 20)) and len(set(plan.patient)) == len(plan)
    again = cs.plan_events(sc.events, [np.random.default_rng([9, k]) for k in range(400)])
    assert np.array_equal(plan.onset_h, again.onset_h)


def test_active_mask_covers_the_window_only():
    plan = cs.EventPlan(np.array([1]), np.array(["sepsis"], object), np.array([10.0]), np.array([5.0]),
                        np.array([2.0]), np.array([None], object))
    t = np.arange(0.0, 20.0, 1.0)
    active, since, magnitude = cs.active_mask(plan, 2, t)
    assert not active[0].any() and active[1].tolist() == [10 <= x < 15 for x in t]
    assert since[1, 12] == 2.0 and np.isnan(since[1, 3]) and magnitude.tolist() == [0.0, 2.0]


def test_active_mask_keeps_the_later_events_magnitude_when_its_window_misses_the_ticks():
    plan = cs.EventPlan(np.array([0, 0]), np.array(["sepsis", "sepsis"], object), np.array([1.0, 50.0]),
                        np.array([5.0, 5.0]), np.array([2.0, 3.0]), np.array([None, None], object))
    active, _, magnitude = cs.active_mask(plan, 1, np.arange(0.0, 10.0, 1.0))
    assert active[0].tolist() == [1 <= x < 6 for x in range(10)] and magnitude.tolist() == [3.0]


def test_inr_episodes_scanned_chunk_by_chunk_equal_the_whole_trajectorys():
    from sources.patient.inr_events import OVER_INR, OpenEpisodes, hysteresis, scan_episodes

    rng = np.random.default_rng(5)
    inr = np.round(3.5 + np.cumsum(rng.normal(0.0, 0.2, (6, 400)), axis=1), 2)
    t = np.arange(400) * 0.25
    for extreme in (np.maximum, np.minimum):
        on = hysteresis(inr >= OVER_INR, inr < OVER_INR - 0.25, np.zeros(6, bool))
        whole, end = scan_episodes(on, inr, t, OpenEpisodes.none(6), extreme)
        assert whole  # the walk crosses the limit
        cuts = [0, *sorted(rng.choice(np.arange(1, 400), 12, replace=False)), 400]
        parts, open_, was_on, ons = [], OpenEpisodes.none(6), np.zeros(6, bool), []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            ons.append(hysteresis(inr[:, a:b] >= OVER_INR, inr[:, a:b] < OVER_INR - 0.25, was_on))
            was_on = ons[-1][:, -1]
            closed, open_ = scan_episodes(ons[-1], inr[:, a:b], t[a:b], open_, extreme)
            parts += closed
        assert np.array_equal(np.hstack(ons), on) and sorted(parts) == sorted(whole)
        assert np.array_equal(open_.start_h, end.start_h, equal_nan=True)
        assert np.array_equal(open_.extreme, end.extreme, equal_nan=True)


def test_clearance_falls_after_amiodarone_starts_and_over_anticoagulation_window_only():
    t = np.arange(0.0, 60 * 24.0, 24.0)
    plan = cs.EventPlan(np.array([0, 1]), np.array(["drug_interaction", "over_anticoagulation"], object),
                        np.array([240.0, 240.0]), np.array([24.0, 48.0]), np.array([1.0, 1.0]),
                        np.array([None, None], object))
    f = cs.clearance_factors(t, np.zeros(2, bool), np.zeros(2, bool), plan)
    assert np.all(f[0, :11] == 1.0) and f[0, 20] < f[0, 12] < 1.0 and f[0, -1] < 0.6  # stays after the label
    assert f[1, 11] < 0.6 and f[1, 12] == 1.0 and f[1, 9] == 1.0  # builds up within the window, ends with it


def test_lab_and_dose_times_follow_the_scenario():
    sc = load_patient_scenario("warfarin_fixed_5mg").with_overrides(days=14)
    assert cs.lab_times_h(sc).tolist() == [d * 24 + 8 for d in (3, 5, 7, 10)]
    doses = cs.dose_times_h(sc)
    assert len(doses) == 14 and doses[0] == 18.0 and np.all(np.diff(doses) == 24.0)


def test_measured_inr_is_rounded_with_the_assay_error():
    rng = np.random.default_rng(0)
    inr = cs.measured_inr(np.full(4000, 2.5), rng)
    assert np.allclose(inr * 10, np.round(inr * 10))
    assert 2.4 < np.median(inr) < 2.6 and 0.025 < np.std(np.log(inr)) < 0.06  # ~4 % CV (inr_variability)


def test_tables_from_arrays_have_the_schemas_and_times():
    labs = cs.labs_table(["r0", "r1"], ["p0", "p1"], START, np.array([1, 0]), np.array([80.0, 128.0]),
                         np.array([86.0, 134.5]), np.array([2.1, np.nan]), np.array([13.0, 12.5]))
    assert labs.schema == LABS and labs["run_id"].to_pylist() == ["r1", "r0"] and labs["inr"].null_count == 1
    assert (labs["reported_ts"][1].as_py() - labs["sample_ts"][1].as_py()) == timedelta(hours=6.5)
    assert labs["sample_ts"][0].as_py() == START + timedelta(hours=80)
    doses = cs.doses_table(["r0", "r1"], ["p0", "p1"], START, 18.0, "warfarin", np.array([5.0, 5.0]),
                           np.array([True, False]))
    assert doses.schema == DOSES and doses["taken"].to_pylist() == [True, False]
    vit = {name: np.arange(6.0).reshape(2, 3) for name in VITAL_SIGNALS}
    batch = cs.vitals_batch(["r0", "r1"], ["p0", "p1"], START, 5 / 60, 0, vit)
    assert batch.schema == VITALS and batch["hr_bpm"].to_pylist() == [0, 1, 2, 3, 4, 5]
    assert batch["ts"][4].as_py() == START + timedelta(minutes=5)


def test_event_labels_take_the_catalogue_and_name_the_faulty_vital():
    class Info:
        signals, root_cause, action = ("hb_g_dl", "hr_bpm"), "a bleed", "stop warfarin"

    plan = cs.EventPlan(np.array([0, 1]), np.array(["major_bleed", "sensor_stuck"], object),
                        np.array([24.0, 48.0]), np.array([12.0, 6.0]), np.array([1.2, 1.0]),
                        np.array([None, "hr_bpm"], object))
    labels = cs.event_labels(plan, ["r0", "r1"], ["p0", "p1"], START,
                             {"major_bleed": Info, "sensor_stuck": Info})
    assert labels[0].signals == ["hb_g_dl", "hr_bpm"] and labels[1].signals == ["hr_bpm"]
    assert labels[0].end_ts - labels[0].start_ts == timedelta(hours=12) and labels[0].reactor_id == "p0"
    table = cs.labels_table(labels)
    assert table.num_rows == 2 and table["fault"].to_pylist() == ["major_bleed", "sensor_stuck"]


def test_runs_table_marks_the_patient_plant():
    sc = load_patient_scenario("warfarin_fixed_5mg")
    runs = cs.runs_table(["r0"], ["p0"], sc, 4, 42 * 24.0)
    assert runs["plant"].to_pylist() == ["patient"] and runs["seed"].to_pylist() == [4]
    assert runs["ended_ts"][0].as_py() == sc.start + timedelta(days=42)
    assert pa.types.is_string(runs.schema.field("config_json").type)


# ---- end to end: the CLI into a real lake (needs the physiology modules) -----------------------------------
BIOPILOT = [sys.executable, "-m", "biopilot.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BIOPILOT, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def patient_lake(tmp_path_factory):
    path = tmp_path_factory.mktemp("patient_lake")
    out = _cli("simulate", "--plant", "patient", "--scenario", "warfarin_fixed_5mg", "--patients", "20", "--days",
               "14", "--seed", "1", "--lake", str(path), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    return path, out.stdout.split()


@pytest.mark.integration
def test_simulate_patient_writes_the_six_tables_readable_by_polars_and_duckdb(patient_lake):
    path, ids = patient_lake
    assert len(ids) == 20 == len(set(ids))
    for name in ("patients", "vitals", "labs", "doses", "runs"):
        assert pa.schema(DeltaTable(str(path / name)).schema().to_arrow()).names == SCHEMAS[name].names, name
    vitals = pl.read_delta(str(path / "vitals"))
    assert vitals.height == 20 * 14 * 288 and vitals["run_id"].n_unique() == 20
    assert sorted(vitals.group_by("run_id").agg(pl.col("seq").max())["seq"].to_list()) == [14 * 288 - 1] * 20
    hr = vitals["hr_bpm"].drop_nulls()
    assert 40 < hr.mean() < 110 and hr.std() > 1
    labs = pl.read_delta(str(path / "labs"))
    assert labs.height == 20 * 4  # days 3, 5, 7, 10 of 14
    assert (labs["reported_ts"] > labs["sample_ts"]).all()
    assert labs.filter(pl.col("sample_ts") == labs["sample_ts"].max())["inr"].mean() > 1.3  # warfarin acts
    doses = pl.read_delta(str(path / "doses"))
    assert doses.height == 20 * 14 and set(doses["dose_mg"].to_list()) == {5.0} and doses["taken"].all()
    patients = pl.read_delta(str(path / "patients"))
    assert patients.height == 20 and set(patients["run_id"].to_list()) == set(ids)
    assert (patients["warfarin_cl_l_h"] > 0).all()
    runs = pl.read_delta(str(path / "runs"))
    relation = runs.to_arrow()  # noqa: F841 - duckdb scans the local variable by name
    assert duckdb.sql("select count(*), min(plant), max(plant) from relation").fetchall()[0] == (20, "patient",
                                                                                                "patient")
    # no injected events in this scenario; only INR episodes of the true INR (a sensitive genotype on a fixed
    # 5 mg can pass 4 within 14 days) may be labelled (an empty commit writes nothing)
    labels = delta.read(path, "labels")
    assert labels is None or set(labels.column("fault").to_pylist()) <= set(cs.INR_EVENTS)


@pytest.mark.integration
def test_simulate_patient_twice_skips_the_second_time(patient_lake):
    path, ids = patient_lake
    out = _cli("simulate", "--plant", "patient", "--scenario", "warfarin_fixed_5mg", "--patients", "20", "--days",
               "14", "--seed", "1", "--lake", str(path), "--quiet")
    assert out.returncode == 0 and out.stdout.split() == ids and "20 run(s) already" in out.stderr
    assert pl.read_delta(str(path / "vitals")).height == 20 * 14 * 288


@pytest.mark.integration
def test_adverse_event_scenario_writes_its_labels(tmp_path):
    out = _cli("simulate", "--plant", "patient", "--scenario", "major_bleed", "--patients", "3", "--days", "30",
               "--seed", "2", "--lake", str(tmp_path), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    labels = pl.read_delta(str(tmp_path / "labels"))
    # beside the bleeds, the INR episodes the true INR reaches by itself (tests/test_patient_labels.py)
    assert labels.filter(pl.col("fault") == "major_bleed").height == 3
    assert set(labels["fault"].to_list()) <= {"major_bleed", *cs.INR_EVENTS}
    assert labels["root_cause"].null_count() == 0 and labels["action"].null_count() == 0


@pytest.mark.integration
@pytest.mark.parametrize(("args", "says"), [
    (["simulate", "--plant", "patient", "--scenario", "normal"], "is a bioreactor scenario"),
    (["simulate", "--scenario", "warfarin_fixed_5mg"], "is a patient scenario: pass --plant patient"),
    (["simulate", "--plant", "patient", "--reactors", "3"], "--reactors is for the bioreactor"),
    (["simulate", "--patients", "3"], "--patients is for --plant patient"),
    (["simulate", "--plant", "patient", "--scenario", "no_such"], "unknown patient scenario 'no_such'"),
])
def test_the_wrong_kind_of_scenario_or_option_is_one_line_exit_2(tmp_path, args, says):
    out = _cli(*args, "--lake", str(tmp_path / "lake"))
    assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "lake").exists()


def test_a_malformed_patient_scenario_file_is_reported_as_invalid_toml_not_as_a_bioreactor_one(tmp_path, capsys):
    from biopilot.cli import main

    broken = tmp_path / "my_warfarin.toml"
    broken.write_text('drug = "warfarin"\ndays = [\n')  # a patient scenario with a typo
    assert main(["simulate", "--plant", "patient", "--scenario", str(broken), "--lake", str(tmp_path / "lake")]) == 2
    err = capsys.readouterr().err
    assert "my_warfarin.toml: invalid TOML" in err and "bioreactor" not in err
    assert not (tmp_path / "lake").exists()


def test_overview_of_a_patient_lake_says_it_summarises_reactors_not_that_the_lake_is_empty(tmp_path, capsys):
    from biopilot.cli import main

    lake = str(tmp_path / "lake")
    assert main(["simulate", "--plant", "patient", "--patients", "1", "--days", "1", "--lake", lake, "--quiet"]) == 0
    capsys.readouterr()
    assert main(["overview", "--lake", lake]) == 2
    err = capsys.readouterr().err
    assert "overview summarises bioreactor runs" in err and "1 run(s)" in err and "biopilot report RUN_ID" in err
    assert "run `biopilot simulate` first" not in err
    assert main(["overview", "--lake", lake, "--run", "no-such-run"]) == 2
    assert "no run no-such-run in" in capsys.readouterr().err


def test_a_lake_that_is_a_file_is_one_line_not_a_traceback(tmp_path, capsys):
    from biopilot.cli import main

    not_a_folder = tmp_path / "lake"
    not_a_folder.write_text("a file where the lake should be")
    for args in (["simulate", "--plant", "patient", "--patients", "1", "--days", "1"],
                 ["trial", "run", "--design", "eu_pact", "--patients-per-arm", "2"]):
        assert main([*args, "--lake", str(not_a_folder)]) == 2
        err = capsys.readouterr().err
        assert f"the lake {not_a_folder} is a file" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.integration
def test_scenarios_plant_patient_lists_the_patient_builtins():
    out = _cli("scenarios", "--plant", "patient")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert "warfarin_fixed_5mg" in names and "normal" not in names and "major_bleed" in names


def test_plant_kinds_name_their_tables_and_the_bioreactor_keeps_its_own():
    from biopilot.simulate import BIOREACTOR, DATA_TABLES, PATIENT, PLANT_KINDS

    assert DATA_TABLES == BIOREACTOR.data_tables == ("ticks", "assays", "labels")
    assert PATIENT.data_tables == ("vitals", "labs", "doses", "patients", "labels")
    assert set(PLANT_KINDS) == {"bioreactor", "patient"}
    sc = load_patient_scenario("warfarin_fixed_5mg")
    assert PATIENT.run_id(sc, 1, 2) == cs.patient_run_id(sc, 1, 2)
    assert PATIENT.load_scenario("warfarin_fixed_5mg") == sc


# ---- the cohort simulator (needs the physiology modules) ---------------------------------------------------
def _run(name: str, n: int = 6, seed: int = 3, **overrides) -> tuple[cs.PatientCohortSim, dict[str, pl.DataFrame]]:
    sc = load_patient_scenario(name)
    if overrides:
        sc = sc.with_overrides(**overrides)
    sim = cs.PatientCohortSim(sc, n, seed=seed)
    parts: dict[str, list] = {"vitals": [], "labs": [], "doses": []}
    while not sim.done:
        chunk = sim.step(288)
        parts["vitals"].append(pa.Table.from_batches([chunk.vitals]))
        parts["labs"].append(chunk.labs)
        parts["doses"].append(chunk.doses)
    return sim, {k: pl.from_arrow(pa.concat_tables(v)) for k, v in parts.items()}


def test_a_patient_is_the_same_whatever_block_it_is_simulated_in():
    sc = load_patient_scenario("warfarin_fixed_5mg")
    whole = cs.PatientCohortSim(sc, 4, seed=5).patients_table()
    part = cs.PatientCohortSim(sc, 2, seed=5, first_index=2).patients_table()
    assert whole.slice(2).equals(part)
    assert whole["patient_id"].to_pylist() == ["p000000", "p000001", "p000002", "p000003"]


def test_fixed_dose_cohort_takes_5mg_daily_and_its_inr_rises_by_the_lab_days():
    sim, t = _run("warfarin_fixed_5mg", n=8, days=21)
    assert t["doses"].height == 8 * 21 and t["doses"]["dose_mg"].unique().to_list() == [5.0]
    assert t["vitals"].height == 8 * 21 * 288
    labs = t["labs"].sort("sample_ts")
    assert labs.height == 8 * 5  # days 3, 5, 7, 10, 14 (day 21 is the end of the run)
    first, last = labs["inr"].head(8).mean(), labs["inr"].tail(8).mean()
    assert 1.0 <= first < last and last > 1.5
    assert ((labs["reported_ts"] - labs["sample_ts"]).dt.total_hours() == 6).all()


def test_nonadherence_misses_doses_only_in_its_window_and_lowers_the_inr():
    sim, t = _run("nonadherence", n=6, protocol="fixed", days=28)
    base, b = _run("nonadherence", n=6, protocol="fixed", days=28, events=[])
    missed = t["doses"].filter(~pl.col("taken"))
    assert missed.height > 6 and b["doses"]["taken"].all()
    labels = pl.from_arrow(sim.labels_table())
    for pid, group in missed.group_by("patient_id"):
        window = labels.filter(pl.col("reactor_id") == pid[0])
        assert group["ts"].min() >= window["start_ts"][0] and group["ts"].max() <= window["end_ts"][0]
    assert sim.last_true["inr"][:, -1].mean() < base.last_true["inr"][:, -1].mean()


def test_amiodarone_started_mid_run_raises_the_inr_against_the_same_seed_without_it():
    sim, _ = _run("drug_interaction", n=6, protocol="fixed", days=42)
    base, _ = _run("drug_interaction", n=6, protocol="fixed", days=42, events=[])
    assert np.all(sim.last_true["inr"][:, -1] > base.last_true["inr"][:, -1])


def test_sensor_dropout_blanks_only_its_vital_inside_its_window():
    sim, t = _run("sensor_dropout", n=3, days=16, protocol="fixed")
    v = t["vitals"]
    assert v["hr_bpm"].null_count() == 0 and v["spo2_pct"].null_count() > 0
    label = pl.from_arrow(sim.labels_table()).row(0, named=True)
    blank = v.filter(pl.col("spo2_pct").is_null() & (pl.col("patient_id") == label["reactor_id"]))
    assert blank["ts"].min() >= label["start_ts"] and blank["ts"].max() <= label["end_ts"]
    assert label["signals"] == ["spo2_pct"]


def test_major_bleed_lowers_hb_and_raises_heart_rate_against_the_same_seed_without_it():
    sim, t = _run("major_bleed", n=4, protocol="fixed", days=30, seed=8)
    base, b = _run("major_bleed", n=4, protocol="fixed", days=30, seed=8, events=[])
    labels = pl.from_arrow(sim.labels_table()).filter(pl.col("fault") == "major_bleed")
    assert labels.height == 4 and labels["root_cause"].null_count() == 0
    row = labels.row(0, named=True)
    pid = row["reactor_id"]
    during = (pl.col("patient_id") == pid) & (pl.col("ts") >= row["start_ts"]) & (pl.col("ts") < row["end_ts"])
    assert t["vitals"].filter(during)["hr_bpm"].mean() > b["vitals"].filter(during)["hr_bpm"].mean() + 3
    after = (pl.col("patient_id") == pid) & (pl.col("sample_ts") > row["start_ts"])
    if t["labs"].filter(after).height:
        assert t["labs"].filter(after)["hb_g_dl"].min() < b["labs"].filter(after)["hb_g_dl"].min() - 1.0


def test_standard_protocol_loads_then_titrates_from_reported_inrs():
    sim, t = _run("warfarin_standard", n=8, days=28)
    doses = t["doses"].sort("ts")
    day0 = doses.head(8)
    young = sim.cohort.age_years <= 75
    assert day0["dose_mg"].to_list() == np.where(young, 10.0, 5.0).tolist()
    assert doses["dose_mg"].n_unique() > 2  # titrated


@pytest.mark.parametrize("name", patient_scenario_names())
def test_every_builtin_scenario_runs_to_its_end_with_one_label_per_event_and_patient(name):
    sim, t = _run(name, n=3, seed=11)
    sc = sim.scenario
    assert t["vitals"].height == 3 * sim.total_ticks
    assert t["labs"].height == 3 * len(sc.labs.check_days(sc.days))
    per_day = sc.takes_warfarin + sc.takes_metoprolol
    drugs = t["doses"]["drug"]
    assert drugs.is_in(["warfarin", "metoprolol"]).sum() == 3 * per_day * int(sc.days)
    # co-medications are dose rows too, one a day from amiodarone's start (a drug_interaction event) on
    started = [e for e in sc.events if e.event == "drug_interaction"]
    first_day = np.min(started[0].onset_day) if started else sc.days  # onsets drawn in [lo, hi] days
    assert 0 < (drugs == "amiodarone").sum() <= 3 * (sc.days - first_day + 1) if started else \
        (drugs == "amiodarone").sum() == 0
    # every built-in event has share 1; the INR events are labelled from the true INR (tests/test_patient_labels.py)
    injected = [e for e in sc.events if e.event not in cs.INR_EVENTS]
    assert len([lab for lab in sim.labels if lab.fault not in cs.INR_EVENTS]) == 3 * len(injected)
    for field_ in ("hr_bpm", "sbp_mmhg", "temp_c"):
        values = t["vitals"][field_].drop_nulls()
        assert values.is_finite().all() and values.min() > 20
    assert np.isfinite(sim.last_true["inr"]).all()


@pytest.mark.integration
def test_bench_simulate_plant_patient_reports_its_rate_beside_the_solve_ivp_baseline():
    out = _cli("bench", "simulate", "--plant", "patient", "--patients", "3", "--days", "1", "--baseline-patients",
               "1", "--baseline-days", "0.5", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["patients"] == 3 and result["days"] == 1
    assert result["patient_days_per_s"] > 0 and result["baseline_patient_days_per_s"] > 0
    assert result["speedup"] == pytest.approx(result["patient_days_per_s"] / result["baseline_patient_days_per_s"])


@pytest.mark.integration
@pytest.mark.parametrize(("plant", "data_table"), [(["--reactors", "1", "--days", "2"], "ticks"),
                                                  (["--plant", "patient", "--patients", "2", "--days", "16"], "vitals")])
def test_a_scenario_name_both_kinds_have_is_the_given_kinds(tmp_path, plant, data_table):
    # the patient scenario's cuff drift starts on day 5-15: a shorter run may end before it (no label then)
    out = _cli("simulate", "--scenario", "sensor_drift", *plant, "--seed", "1", "--lake", str(tmp_path), "--quiet")
    assert out.returncode == 0, out.stderr[-3000:]
    labels = pl.read_delta(str(tmp_path / "labels"))
    assert "sensor_drift" in labels["fault"].to_list()
    assert (tmp_path / data_table).exists()
