"""`biopilot bench simulate`: the vectorised fleet against a per-reactor `solve_ivp` loop of the same model
(`--plant patient`: the vectorised cohort against a per-patient `solve_ivp` loop of the same warfarin and
metoprolol ODEs, at the end of this file).

Ours: N reactors x D days with noise, assays and faults, streamed into Delta (end to end, wall clock).
Baseline: the same physics and controllers (`derivatives`, `_control`), one reactor at a time, integrated by
`scipy.integrate.solve_ivp` (LSODA) between control actions, on a sample of reactors for a sample of days;
its rate is extrapolated linearly to whole runs (cost per tick is flat) and it writes nothing (which only
flatters it).
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp
from tqdm import tqdm

from biopilot.bench.results import as_json
from biopilot.simulate import BIOREACTOR, PATIENT, PlantKind, SimulationResult, simulate_to_lake
from sources import kinetics as K
from sources import reactor as R
from sources.fleet import Fleet
from sources.scenarios import Scenario, load_scenario

__all__ = ["PatientSimulateBench", "SimulateBench", "as_json", "baseline_seconds_per_tick", "format_patient_report",
           "format_report", "run", "run_patient"]

BENCH_FAULTS = [  # a sprinkle of faults so the fault paths are exercised, as in real fleets
    {"fault": "overfeed", "start_day": [4, 9], "duration_h": 3, "magnitude": 1.0, "reactors": list(range(1, 1001, 7))},
    {"fault": "contamination", "start_day": [5, 10], "duration_h": 96, "magnitude": 1.0,
     "reactors": list(range(3, 1001, 11))},
    {"fault": "sensor_drift", "start_day": [3, 8], "duration_h": 72, "magnitude": 0.05, "signal": "ph",
     "reactors": list(range(5, 1001, 13))},
]


@dataclass
class SimulateBench:
    reactors: int
    days: float
    tick_s: float
    seconds: float
    reactor_runs_per_s: float
    ticks_per_s: float
    max_rss_mb: float
    jit_warmup_s: float
    lake_mb: float
    baseline_reactors: int
    baseline_days: float
    baseline_seconds: float
    baseline_reactor_runs_per_s: float
    speedup: float


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _baseline_reactor(scenario: Scenario, index: int, seed: int, n_ticks: int) -> np.ndarray:
    """One reactor, the textbook way: solve_ivp between the control actions of each tick."""
    fleet = Fleet(scenario, 1, seed=seed, first_index=index)
    y, p = fleet.y[0].copy(), fleet.p[0]
    u, dydt, flux = np.zeros(K.N_INPUT), np.zeros(K.N_STATE), np.zeros(K.N_FLUX)
    out = np.empty((n_ticks, R.N_SIGNAL))
    dt_h = scenario.tick_s / 3600.0

    def rhs(_t: float, state: np.ndarray) -> np.ndarray:
        K.derivatives(state, u, p, dydt, flux)
        return dydt.copy()

    t_h = 0.0
    for i in range(n_ticks):
        R._control(0, y, fleet.c, fleet.mem, p, fleet.bolus, fleet.faults, t_h, dt_h, u)
        sol = solve_ivp(rhs, (t_h, t_h + dt_h), y, method="LSODA", rtol=1e-6, atol=1e-9)
        y = np.maximum(sol.y[:, -1], 0.0)
        t_h += dt_h
        out[i, R.O_DO] = y[K.S_DO] / p[K.P_DO_SAT] * 100.0
        out[i, R.O_PH] = K.ph_of(p, y[K.S_HCO3], y[K.S_DCO2])
        out[i, R.O_OUR], out[i, R.O_CER] = flux[K.F_OUR], flux[K.F_CER]
    return out + np.random.default_rng(index).standard_normal(out.shape) * 0.01  # noise, vectorised


def baseline_seconds_per_tick(scenario: Scenario, reactors: int, days: float, seed: int) -> float:
    """Time the per-reactor solve_ivp loop; returns wall seconds per reactor-tick."""
    n_ticks = max(1, int(days * 86400 / scenario.tick_s))
    start = time.perf_counter()
    for index in range(reactors):
        _baseline_reactor(scenario, index, seed, n_ticks)
    return (time.perf_counter() - start) / (reactors * n_ticks)


def _timed_simulation(scenario: object, units: int, days: float, seed: int, lake: str | None, progress: bool,
                      kind: PlantKind) -> tuple[SimulationResult, float, float]:
    """`simulate_to_lake` into `lake` (a temporary one, removed after, if None): the result, the peak RSS (MB)
    and the lake's size (MB)."""
    tmp = None if lake else tempfile.mkdtemp(prefix="biopilot-bench-")
    target = Path(lake or tmp)
    bar = tqdm(total=units * days, unit=f"{kind.unit}-day", disable=not progress, desc=kind.name)
    try:
        res = simulate_to_lake(scenario, units, seed, target, progress=bar.update, kind=kind)
        bar.close()
        return res, _max_rss_mb(), sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 1e6
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def run(reactors: int = 1000, days: float = 14.0, seed: int = 7, lake: str | None = None,
        baseline_reactors: int = 2, baseline_days: float = 1.0, progress: bool = True) -> SimulateBench:
    scenario = load_scenario("normal").with_overrides(name="bench", days=days, faults=BENCH_FAULTS)
    t = time.perf_counter()
    Fleet(scenario, 2, seed=seed).step(10)  # load (or build) the compiled kernels outside the timing
    jit_s = time.perf_counter() - t
    res, rss, lake_mb = _timed_simulation(scenario, reactors, days, seed, lake, progress, BIOREACTOR)
    ticks_per_run = days * 86400 / scenario.tick_s
    t = time.perf_counter()
    per_tick = baseline_seconds_per_tick(scenario, baseline_reactors, baseline_days, seed)
    base_s = time.perf_counter() - t
    ours_rate = len(res.written) / res.seconds
    base_rate = 1.0 / (per_tick * ticks_per_run)
    return SimulateBench(reactors, days, scenario.tick_s, res.seconds, ours_rate, res.ticks / res.seconds, rss,
                         jit_s, lake_mb, baseline_reactors, baseline_days, base_s, base_rate, ours_rate / base_rate)


def format_report(b: SimulateBench) -> str:
    return "\n".join([
        f"fleet     {b.reactors} reactors x {b.days:g} days at {b.tick_s:g} s ticks -> Delta: {b.seconds:.1f} s "
        f"({b.reactor_runs_per_s:.1f} runs/s, {b.ticks_per_s / 1e6:.2f} M ticks/s, lake {b.lake_mb:.0f} MB, "
        f"peak RSS {b.max_rss_mb:.0f} MB; JIT load {b.jit_warmup_s:.1f} s not counted)",
        f"baseline  per-reactor solve_ivp (LSODA) loop, {b.baseline_reactors} reactors x {b.baseline_days:g} days: "
        f"{b.baseline_reactor_runs_per_s:.4f} runs/s (extrapolated to whole runs)",
        f"speedup   {b.speedup:.0f}x",
    ])


# ---- the patient plant ------------------------------------------------------------------------------------
@dataclass
class PatientSimulateBench:
    patients: int
    days: float
    vitals_every_min: float
    seconds: float
    patient_days_per_s: float
    vitals_rows_per_s: float
    max_rss_mb: float
    jit_warmup_s: float
    lake_mb: float
    baseline_patients: int
    baseline_days: float
    baseline_seconds: float
    baseline_patient_days_per_s: float
    speedup: float


def _patient_bench_scenario(days: float) -> object:
    from sources.patient.scenarios import parse_patient_scenario

    # both drugs, so both ODE systems run; a fixed dose, so the baseline needs no dosing logic
    return parse_patient_scenario({"name": "bench_patient", "drug": "both", "protocol": "fixed", "days": days,
                                   "events": [{"event": "major_bleed", "onset_day": [5, 20], "duration_h": 48,
                                               "share": 0.1},
                                              {"event": "sensor_dropout", "onset_day": [3, 10], "duration_h": 4,
                                               "signal": "spo2_pct", "share": 0.1}]})


def _baseline_patient(scenario: object, cohort: object, k: int, n_ticks: int) -> np.ndarray:
    """One patient, the textbook way: the same warfarin (S in two compartments, R in one, two transit chains)
    and metoprolol (lagged depot, one compartment) ODEs in a Python right-hand side, solve_ivp (LSODA) between
    dose events, sampled at every vitals tick; INR, concentrations and the heart-rate effect per tick."""
    from sources.patient import metoprolol
    from sources.patient.warfarin import (
        CHAIN1_COMPARTMENTS,
        INR_EXPONENT,
        INR_MAX_RISE,
        R_FRACTION,
        R_POTENCY,
        S_FRACTION,
    )

    w = {key: float(v[k]) for key, v in cohort.warfarin.items()}
    m = {key: float(v[k]) for key, v in cohort.metoprolol.items()}
    n1 = CHAIN1_COMPARTMENTS
    k1, k2, mk = n1 / w["mtt1_h"], 1.0 / w["mtt2_h"], m["cl_l_h"] / m["v_l"]

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        dy = np.empty_like(y)
        cs = max(y[1], 0.0) / w["v1_l"]
        c = cs + R_POTENCY * max(y[6 + n1], 0.0) / w["r_v_l"]  # the S-equivalent concentration
        cg = c ** w["gamma"]
        inflow = 1.0 - cg / (w["ec50_mg_l"] ** w["gamma"] + cg)
        dy[0] = -w["ka_per_h"] * y[0]
        dy[1] = w["ka_per_h"] * y[0] - (w["cl_l_h"] + w["q_l_h"]) * cs + w["q_l_h"] * y[2] / w["v2_l"]
        dy[2] = w["q_l_h"] * cs - w["q_l_h"] * y[2] / w["v2_l"]
        dy[3] = k1 * (inflow - y[3])
        dy[4 : 3 + n1] = k1 * (y[3 : 2 + n1] - y[4 : 3 + n1])
        dy[3 + n1] = k2 * (inflow - y[3 + n1])
        dy[4 + n1] = -m["ka_per_h"] * y[4 + n1]
        dy[5 + n1] = m["ka_per_h"] * y[4 + n1] - mk * y[5 + n1]
        dy[6 + n1] = R_FRACTION / S_FRACTION * w["ka_per_h"] * y[0] - w["r_cl_l_h"] * y[6 + n1] / w["r_v_l"]
        return dy

    dt_h = scenario.vitals_every_min / 60.0
    t_ticks = dt_h * np.arange(1, n_ticks + 1)
    end_h = t_ticks[-1]
    events = []  # (time, compartment, amount)
    for d in range(int(np.ceil(end_h / 24.0)) + 1):
        events.append((d * 24.0 + scenario.dose_hour, 0, S_FRACTION * w["bioavailability"] * scenario.fixed_dose_mg))
        events.append((d * 24.0 + scenario.dose_hour + m["lag_h"], 4 + n1, scenario.metoprolol_dose_mg))
    events = sorted(e for e in events if e[0] < end_h)
    y = np.zeros(7 + n1)
    y[3 : 4 + n1] = 1.0
    out = np.empty((3, n_ticks))
    t0, i = 0.0, 0
    for t1, comp, amount in [*events, (end_h, None, 0.0)]:
        if t1 > t0:
            inside = (t_ticks > t0) & (t_ticks <= t1)
            sol = solve_ivp(rhs, (t0, t1), y, method="LSODA", rtol=1e-6, atol=1e-9, t_eval=t_ticks[inside])
            ys = sol.y
            j = ys.shape[1]
            rem = np.clip(1.0 - ys[2 + n1] * ys[3 + n1], 0.0, None)
            out[0, i : i + j] = 1.0 + INR_MAX_RISE * rem**INR_EXPONENT
            out[1, i : i + j] = ys[5 + n1] / m["v_l"]
            i += j
            y = solve_ivp(rhs, (t0, t1), y, method="LSODA", rtol=1e-6, atol=1e-9).y[:, -1] if j == 0 else ys[:, -1]
            t0 = t1
        if comp is not None:
            y[comp] += amount
    out[2] = metoprolol.hr_effect_bpm(out[1], m)
    return out


def patient_baseline_seconds_per_tick(scenario: object, patients: int, days: float, seed: int) -> float:
    """Time the per-patient solve_ivp loop; wall seconds per patient-tick (vitals ticks)."""
    from sources.patient.cohort import draw_cohort

    cohort = draw_cohort(patients, np.random.default_rng(seed))
    n_ticks = max(1, int(round(days * 24 * 60 / scenario.vitals_every_min)))
    start = time.perf_counter()
    for k in range(patients):
        out = _baseline_patient(scenario, cohort, k, n_ticks)
        # the vitals on top, vectorised over the ticks (flatters the baseline: no OU process, no faults)
        _ = out[2] + np.random.default_rng(k).standard_normal((6, n_ticks))
    return (time.perf_counter() - start) / (patients * n_ticks)


def run_patient(patients: int = 1000, days: float = 84.0, seed: int = 7, lake: str | None = None,
                baseline_patients: int = 8, baseline_days: float = 28.0, progress: bool = True,
                ) -> PatientSimulateBench:
    from sources.patient.cohort_sim import PatientCohortSim

    scenario = _patient_bench_scenario(days)
    t = time.perf_counter()
    PatientCohortSim(scenario, 2, seed=seed + 1).step(300)  # load (or build) the compiled kernels outside the timing
    jit_s = time.perf_counter() - t
    res, rss, lake_mb = _timed_simulation(scenario, patients, days, seed, lake, progress, PATIENT)
    t = time.perf_counter()
    per_tick = patient_baseline_seconds_per_tick(scenario, baseline_patients, baseline_days, seed)
    base_s = time.perf_counter() - t
    ticks_per_day = 24 * 60 / scenario.vitals_every_min
    ours_rate = len(res.written) * days / res.seconds
    base_rate = 1.0 / (per_tick * ticks_per_day)
    return PatientSimulateBench(patients, days, scenario.vitals_every_min, res.seconds, ours_rate,
                                res.ticks / res.seconds, rss, jit_s, lake_mb, baseline_patients, baseline_days,
                                base_s, base_rate, ours_rate / base_rate)


def format_patient_report(b: PatientSimulateBench) -> str:
    return "\n".join([
        f"cohort    {b.patients} patients x {b.days:g} days at {b.vitals_every_min:g}-min vitals -> Delta: "
        f"{b.seconds:.1f} s ({b.patient_days_per_s:,.0f} patient-days/s, {b.vitals_rows_per_s / 1e6:.2f} M vitals "
        f"rows/s, lake {b.lake_mb:.0f} MB, peak RSS {b.max_rss_mb:.0f} MB; JIT load {b.jit_warmup_s:.1f} s not "
        "counted)",
        f"baseline  per-patient solve_ivp (LSODA) loop, {b.baseline_patients} patients x {b.baseline_days:g} days: "
        f"{b.baseline_patient_days_per_s:.2f} patient-days/s (extrapolated)",
        f"speedup   {b.speedup:.0f}x",
    ])
