"""`biopilot bench simulate`: the vectorised fleet against a per-reactor `solve_ivp` loop of the same model.

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
from biopilot.simulate import simulate_to_lake
from sources import kinetics as K
from sources import reactor as R
from sources.fleet import Fleet
from sources.scenarios import Scenario, load_scenario

__all__ = ["SimulateBench", "as_json", "baseline_seconds_per_tick", "format_report", "run"]

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


def run(reactors: int = 1000, days: float = 14.0, seed: int = 7, lake: str | None = None,
        baseline_reactors: int = 2, baseline_days: float = 1.0, progress: bool = True) -> SimulateBench:
    scenario = load_scenario("normal").with_overrides(name="bench", days=days, faults=BENCH_FAULTS)
    t = time.perf_counter()
    Fleet(scenario, 2, seed=seed).step(10)  # load (or build) the compiled kernels outside the timing
    jit_s = time.perf_counter() - t
    tmp = None if lake else tempfile.mkdtemp(prefix="biopilot-bench-")
    target = Path(lake or tmp)
    bar = tqdm(total=reactors * days, unit="reactor-day", disable=not progress, desc="fleet")
    try:
        res = simulate_to_lake(scenario, reactors, seed, target, progress=bar.update)
        bar.close()
        rss = _max_rss_mb()
        lake_mb = sum(f.stat().st_size for f in target.rglob("*") if f.is_file()) / 1e6
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
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
