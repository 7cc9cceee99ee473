"""`biopilot bench detectors`: every detector against a labelled suite from the twin.

Suite: each fault archetype's built-in scenario x N seeds (onsets and magnitudes are drawn per seed from the
scenario's ranges), the composite scenario x N seeds, M normal runs, and a separate set of normal runs used
only to calibrate thresholds. A detector's threshold is the highest level its score holds for `persist`
consecutive ticks on the calibration runs (x 1.05): zero false alarms on those runs. Alarms use the same
hysteresis as the flow; the fusion's alarms are its members' own, as in the flow (`MemberAlarms`). Per detector
x fault: detection rate (an alarm opens inside the fault window, which is extended by `grace_h` for effects that
outlast their cause), median detection delay; per detector: false alarms per reactor-day on the normal runs and
event-level precision, recall and F1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

import detectors  # noqa: F401 - registers every detector
from detectors.alarm import AlarmState, Hysteresis, MemberAlarms
from detectors.base import DETECTOR_SIGNALS, REGISTRY, make_detector, plant_of
from detectors.features import features
from detectors.fusion import CALIBRATION
from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from detectors.recipe import Recipe, reference_for
from sources.fleet import SimulatedRun, simulate_run
from sources.scenarios import ARCHETYPE_SCENARIOS, Scenario, load_scenario, parse_scenario

COMPOSITE = "overfeed_then_do_limitation"
# every member compares with the run's recipe reference or watches the sensors themselves: the raw-level zscore
# left (issue 24): its feed score grows with the pump's rate, i.e. the vessel (docs/QUALITY.md, the recipe sweep)
FUSION_MEMBERS = ("golden", "twin_residual", "autoencoder", "flatline", "dropout")
PERSIST, CLEAR = 5, 60


@dataclass
class Run:
    scenario: str
    seed: int
    X: np.ndarray
    minutes: np.ndarray  # minutes since inoculation, per tick
    faults: list[tuple[str, float, float]]  # (fault, start_min, end_min)


@dataclass
class DetectorResult:
    name: str
    threshold: float
    detection_rate: dict[str, float] = field(default_factory=dict)
    median_delay_min: dict[str, float | None] = field(default_factory=dict)
    false_alarms_per_reactor_day: float = 0.0
    precision: float = 0.0
    recall: float = 0.0
    f1: float = 0.0
    ticks_per_s: float | None = None


def simulate(scenario: str, seed: int) -> Run:
    sim = simulate_run(scenario, seed)
    t0 = sim.started
    tag = " (composite)" if scenario == COMPOSITE else ""
    faults = [(lab.fault + tag, (lab.start_ts - t0) / timedelta(minutes=1), (lab.end_ts - t0) / timedelta(minutes=1))
              for lab in sim.labels]
    return Run(scenario, seed, features(sim.ticks, np.array([np.nan, np.nan])), sim.minutes(), faults)


def persistent_max(scores: np.ndarray, persist: int = PERSIST) -> float:
    """The highest level the score holds for `persist` consecutive ticks (what the alarm would need)."""
    if len(scores) < persist:
        return float(scores.max(initial=0.0))
    windows = np.lib.stride_tricks.sliding_window_view(scores, persist)
    return float(windows.min(axis=1).max())


def alarm_openings(scores: np.ndarray, threshold: float) -> np.ndarray:
    _, fired = Hysteresis(threshold, 0.6 * threshold, PERSIST, CLEAR).apply(AlarmState(), scores)
    return np.flatnonzero(fired)


def fusion_openings(members: dict[str, float], run: Run) -> np.ndarray:
    """Ticks where one member's own alarm opens, as the flow raises alerts (`MemberAlarms`)."""
    det = make_detector("fusion", members=members)
    ts_us = (run.minutes * 6e7).astype(np.int64)
    _, R, _ = det.score_learn_members(det.init_state(DETECTOR_SIGNALS), ts_us, run.X)
    _, fired, _ = MemberAlarms(1.0, 0.6, PERSIST, CLEAR).apply(R)
    return np.flatnonzero(fired.any(axis=0))


def score_run(name: str, run: Run, params: dict | None = None) -> np.ndarray:
    det = make_detector(name, **(params or {}))
    ts_us = (run.minutes * 6e7).astype(np.int64)
    _, scores = det.score_learn(det.init_state(DETECTOR_SIGNALS), ts_us, run.X)
    return scores


def evaluate(name: str, threshold: float, openings: dict[tuple[str, int], np.ndarray], runs: list[Run],
             grace_h: float) -> DetectorResult:
    """`openings`: per run, the ticks where an alarm opened."""
    res = DetectorResult(name, threshold)
    detected: dict[str, list[bool]] = {}
    delays: dict[str, list[float]] = {}
    tp = fn = fp = 0
    normal_alarms, normal_days = 0, 0.0
    for run in runs:
        opened = run.minutes[openings[(run.scenario, run.seed)]]
        if not run.faults:
            normal_alarms += len(opened)
            normal_days += (run.minutes[-1] + 1) / 1440.0
            fp += len(opened)
            continue
        explained = np.zeros(len(opened), dtype=bool)
        for fault, start, end in run.faults:
            inside = (opened >= start) & (opened <= end + grace_h * 60)
            explained |= inside
            hit = bool(inside.any())
            detected.setdefault(fault, []).append(hit)
            if hit:
                delays.setdefault(fault, []).append(float(opened[inside][0] - start))
                tp += 1
            else:
                fn += 1
        fp += int((~explained).sum())
    for fault in detected:
        res.detection_rate[fault] = float(np.mean(detected[fault]))
        res.median_delay_min[fault] = float(np.median(delays[fault])) if delays.get(fault) else None
    res.false_alarms_per_reactor_day = normal_alarms / normal_days if normal_days else 0.0
    res.precision = tp / (tp + fp) if tp + fp else 0.0
    res.recall = tp / (tp + fn) if tp + fn else 0.0
    res.f1 = 2 * res.precision * res.recall / (res.precision + res.recall) if res.precision + res.recall else 0.0
    return res


def speed(name: str, ticks: int = 20_000) -> float:
    """Ticks per second at 12 signals, one reactor, scored in batches of 1,000."""
    X = np.random.default_rng(0).normal(size=(ticks, len(DETECTOR_SIGNALS))) + 10.0
    det = make_detector(name, **({"reference_ticks": 1440} if name in ("pca", "iforest") else {}))
    state = det.init_state(DETECTOR_SIGNALS)
    state, _ = det.score_learn(state, np.arange(1000), X[:1000])  # warm up (JIT, fits)
    t = time.perf_counter()
    for i in range(1000, ticks, 1000):
        state, _ = det.score_learn(state, np.arange(i, i + 1000), X[i : i + 1000])
    return (ticks - 1000) / (time.perf_counter() - t)


def run(seeds: int = 5, normal_runs: int = 20, calibration_runs: int = 10, grace_h: float = 2.0,
        with_speed: bool = False, write_calibration: bool = True, only: list[str] | None = None,
        progress: Callable[[str], None] | None = None) -> list[DetectorResult]:
    say = progress or (lambda _msg: None)
    plan = [(s, 100 + i) for s in ARCHETYPE_SCENARIOS.values() for i in range(seeds)]
    plan += [(COMPOSITE, 100 + i) for i in range(seeds)] + [("normal", 200 + i) for i in range(normal_runs)]
    calib = [("normal", 300 + i) for i in range(calibration_runs)]
    say(f"simulating {len(plan) + len(calib)} runs")
    runs = [simulate(s, seed) for s, seed in plan]
    cal_runs = [simulate(s, seed) for s, seed in calib]
    # the patient monitor's detectors read vitals: `detectors.patient_benchmark` scores them
    names = sorted(n for n in (only or REGISTRY) if n != "fusion" and plant_of(n) == "bioreactor")
    missing = [n for n in FUSION_MEMBERS if n not in names]
    if missing:
        raise ValueError(f"the fusion needs its members scored too: add {', '.join(missing)}")
    thresholds: dict[str, float] = {}
    openings: dict[str, dict[tuple[str, int], np.ndarray]] = {}
    for name in names:
        say(f"scoring {name}")
        # a detector may never fire on normal runs (a dropout counter stays at 0): its own floor then applies
        floor = getattr(REGISTRY[name], "min_threshold", 1e-6)
        thresholds[name] = max(1.05 * max(persistent_max(score_run(name, r)) for r in cal_runs), floor)
        openings[name] = {(r.scenario, r.seed): alarm_openings(score_run(name, r), thresholds[name]) for r in runs}
    members = {n: thresholds[n] for n in FUSION_MEMBERS}
    say("scoring fusion")
    thresholds["fusion"] = 1.0  # each member alarms at its own calibrated threshold
    openings["fusion"] = {(r.scenario, r.seed): fusion_openings(members, r) for r in runs}
    if write_calibration:
        CALIBRATION.write_text(json.dumps({"fusion_members": members, "fusion_threshold": thresholds["fusion"],
                                           "thresholds": thresholds}, indent=2) + "\n")
    results = [evaluate(n, thresholds[n], openings[n], runs, grace_h) for n in [*names, "fusion"]]
    if with_speed:
        for r in results:
            say(f"timing {r.name}")
            r.ticks_per_s = speed(r.name)
    return results


def as_json(results: list[DetectorResult]) -> dict:
    return {r.name: {"threshold": r.threshold, "detection_rate": r.detection_rate,
                     "median_delay_min": r.median_delay_min,
                     "false_alarms_per_reactor_day": r.false_alarms_per_reactor_day, "precision": r.precision,
                     "recall": r.recall, "f1": r.f1, "ticks_per_s": r.ticks_per_s} for r in results}


def markdown(results: list[DetectorResult]) -> str:
    faults = sorted({f for r in results for f in r.detection_rate})
    head = "| detector | " + " | ".join(faults) + " | FA / reactor-day | precision | recall | F1 |" + (
        " ticks/s |" if any(r.ticks_per_s for r in results) else "")
    lines = [head, "|" + "---|" * (len(faults) + 5 + (1 if "ticks/s" in head else 0))]
    for r in results:
        cells = []
        for f in faults:
            rate, delay = r.detection_rate.get(f), r.median_delay_min.get(f)
            cells.append("–" if rate is None else f"{rate:.0%}" + (f" ({delay:.0f} min)" if delay is not None else ""))
        row = f"| {r.name} | " + " | ".join(cells) + (
            f" | {r.false_alarms_per_reactor_day:.2f} | {r.precision:.2f} | {r.recall:.2f} | {r.f1:.2f} |")
        if "ticks/s" in head:
            row += f" {r.ticks_per_s:,.0f} |" if r.ticks_per_s else " – |"
        lines.append(row)
    return "\n".join(lines)


def chart(results: list[DetectorResult], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faults = sorted({f for r in results for f in r.detection_rate})
    M = np.array([[r.detection_rate.get(f, np.nan) for f in faults] for r in results])
    fig, ax = plt.subplots(figsize=(1.0 * len(faults) + 2.5, 0.45 * len(results) + 1.5))
    im = ax.imshow(M, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(faults)), faults, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(results)), [r.name for r in results], fontsize=8)
    for i in range(len(results)):
        for j in range(len(faults)):
            if not np.isnan(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.0%}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="detection rate")
    ax.set_title("detection rate per detector and fault (labelled twin suite)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ---- the recipe sweep (issue 24): normal and faulty runs at off-default recipes ---------------------------
# Ranges of the recipe settings a plant changes, within the scenario model's (sources/scenarios.py).
SWEEP_RANGES = {"do_setpoint_pct": (25.0, 60.0), "ph_setpoint": (6.85, 7.15), "temp_shift_day": (4.0, 8.0),
                "working_volume_l": (1.0, 2000.0), "seed_vcd_e6_per_ml": (0.25, 0.7),
                "continuous_start_day": (2.0, 4.0), "bolus_hour": (6.0, 18.0)}
DEFAULT_VOLUME_L = 1.6
# a fault after another fault: the first one's traces are still in the signals when the second begins
SWEEP_COMPOSITES: dict[str, list[dict]] = {
    COMPOSITE: [{"fault": "overfeed", "start_day": 5.0, "duration_h": 3.0, "magnitude": 2.0},
                {"fault": "do_limitation", "start_day": 6.0, "duration_h": 24.0, "magnitude": 0.8}],
    "temperature_spike_then_ph_drift": [
        {"fault": "temperature_spike", "start_day": [4.5, 5.5], "duration_h": 8.0, "magnitude": [2.0, 4.0]},
        {"fault": "sensor_drift", "signal": "ph", "start_day": [6.0, 7.5], "duration_h": 72.0,
         "magnitude": [0.04, 0.08]}],
}
# faults whose size is their duration, not a magnitude: no half-magnitude variant
NO_MAGNITUDE = ("sensor_stuck", "sensor_dropout")
SWEEP_NORMAL_RUNS = 2  # per recipe


@dataclass(frozen=True)
class SweepCase:
    recipe: str  # the recipe's name in the sweep, e.g. "r07"
    kind: str  # "normal", an archetype's scenario, or a composite's name
    magnitude: str  # "built-in", "half" or "" (normal runs)
    scenario: Scenario
    seed: int

    @property
    def composite(self) -> bool:
        return self.kind in SWEEP_COMPOSITES


def draw_recipes(n: int, seed: int) -> dict[str, Scenario]:
    """`n` distinct normal scenarios at recipes drawn (seeded) from `SWEEP_RANGES`: DO and pH setpoints, bolus or
    continuous feed, temperature-shift day (or none), working volume (log-uniform) and seeding density. Pumps
    scale with the volume (a 200 L vessel has a pump sized for it), so feeds stay a share of the volume."""
    rng = np.random.default_rng(seed)
    base = load_scenario("normal").model_dump()
    out: dict[str, Scenario] = {}
    seen: set[str] = set()
    while len(out) < n:
        r = SWEEP_RANGES
        volume_l = float(np.round(np.exp(rng.uniform(*np.log(r["working_volume_l"]))), 1))
        process = {**base["process"], "do_setpoint_pct": round(rng.uniform(*r["do_setpoint_pct"])),
                   "ph_setpoint": round(rng.uniform(*r["ph_setpoint"]), 2),
                   "temp_shift_day": None if rng.random() < 0.15 else round(rng.uniform(*r["temp_shift_day"]) * 2) / 2,
                   "working_volume_l": volume_l,
                   "seed_vcd_e6_per_ml": round(rng.uniform(*r["seed_vcd_e6_per_ml"]), 2),
                   "base_max_ml_min": base["process"]["base_max_ml_min"] * volume_l / DEFAULT_VOLUME_L}
        feed = {**base["feed"], "mode": "continuous" if rng.random() < 0.5 else "bolus",
                "continuous_start_day": round(rng.uniform(*r["continuous_start_day"]) * 2) / 2,
                "hour": float(round(rng.uniform(*r["bolus_hour"]))),
                "pump_ml_min": base["feed"]["pump_ml_min"] * volume_l / DEFAULT_VOLUME_L}
        name = f"r{len(out):02d}"
        scenario = parse_scenario({**base, "name": f"sweep_{name}", "process": process, "feed": feed})
        key = json.dumps([process, feed], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out[name] = scenario
    return out


def _scaled(spec: dict, factor: float) -> dict:
    m = spec.get("magnitude", 1.0)
    return {**spec, "magnitude": [v * factor for v in m] if isinstance(m, (list, tuple)) else m * factor}


def sweep_plan(n_recipes: int, seed: int) -> list[SweepCase]:
    """Per recipe: `SWEEP_NORMAL_RUNS` normal runs, every archetype at its built-in magnitudes and at half of
    them, and the composites. Run seeds follow from `seed`, so two sweeps on other seeds share no run."""
    cases: list[SweepCase] = []
    k = 0
    for name, recipe in draw_recipes(n_recipes, seed).items():
        base = recipe.model_dump()
        variants: list[tuple[str, str, list[dict]]] = [("normal", "", [])] * SWEEP_NORMAL_RUNS
        for scenario in ARCHETYPE_SCENARIOS.values():
            specs = [f.model_dump(exclude_none=True) for f in load_scenario(scenario).faults]
            variants.append((scenario, "built-in", specs))
            if specs[0]["fault"] not in NO_MAGNITUDE:
                variants.append((scenario, "half", [_scaled(s, 0.5) for s in specs]))
        variants += [(c, "built-in", specs) for c, specs in SWEEP_COMPOSITES.items()]
        for kind, magnitude, specs in variants:
            scenario = parse_scenario({**base, "name": f"sweep_{name}_{kind}", "faults": specs})
            cases.append(SweepCase(name, kind, magnitude, scenario, seed * 10_000 + k))
            k += 1
    return cases


def recipe_settings(scenario: Scenario) -> dict:
    """The swept settings of a sweep recipe, for the reports."""
    pr, feed = scenario.process, scenario.feed
    return {"do_setpoint_pct": pr.do_setpoint_pct, "ph_setpoint": pr.ph_setpoint, "feed_mode": feed.mode,
            "temp_shift_day": pr.temp_shift_day, "working_volume_l": pr.working_volume_l,
            "seed_vcd_e6_per_ml": pr.seed_vcd_e6_per_ml}


def volume_class(volume_l: float) -> str:
    return "bench (<= 10 L)" if volume_l <= 10 else "pilot (10-200 L)" if volume_l <= 200 else "production (> 200 L)"


def recipe_family(scenario: Scenario) -> str:
    """What the fusion's calibration is checked per: feed mode x vessel scale."""
    return f"{scenario.feed.mode}, {volume_class(scenario.process.working_volume_l)}"


@dataclass
class SweepResult:
    """The fusion, as the flow runs it (`ReactorMonitor` with each run's recipe), over a recipe sweep."""

    sweep: dict
    recipes: dict[str, dict] = field(default_factory=dict)
    normal_runs: int = 0
    alerts_on_normal_runs: int = 0
    alerts_on_normal_runs_by_recipe: dict[str, int] = field(default_factory=dict)
    alerts_on_normal_runs_by_member: dict[str, int] = field(default_factory=dict)
    detected: dict[str, dict[str, list[bool]]] = field(default_factory=dict)  # magnitude -> fault -> hits
    delays_min: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # per recipe family and fusion member: the highest score over its threshold held `PERSIST` ticks on the
    # family's normal runs (1.0: where the member alarms), i.e. the calibration checked per recipe family
    normal_peak_by_family: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_json(self) -> dict:
        def rates(magnitude: str) -> dict:
            return {f: {"runs": len(h), "detected": float(np.mean(h)),
                        "median_delay_min": float(np.median(self.delays_min[magnitude][f]))
                        if self.delays_min[magnitude].get(f) else None}
                    for f, h in sorted(self.detected.get(magnitude, {}).items())}

        return {"sweep": self.sweep, "recipes": self.recipes, "normal_runs": self.normal_runs,
                "alerts_on_normal_runs": self.alerts_on_normal_runs,
                "alerts_on_normal_runs_by_recipe": self.alerts_on_normal_runs_by_recipe,
                "alerts_on_normal_runs_by_member": self.alerts_on_normal_runs_by_member,
                "detection_rate": {m: rates(m) for m in ("built-in", "half")},
                "normal_peak_by_family": self.normal_peak_by_family}


def monitor_run(case: SweepCase, recipe_blind: bool = False) -> tuple[SimulatedRun, list[dict]]:
    """One sweep run through the flow's monitor (the shipped fusion) with its recipe: the run and its alerts."""
    sim = simulate_run(case.scenario, case.seed)
    monitor = ReactorMonitor(sim.ticks["reactor_id"][0].as_py(), MonitorConfig.for_detector("fusion"))
    if not recipe_blind:
        monitor.set_recipe(Recipe.from_scenario(case.scenario), sim.started, run_start_ts=sim.started,
                           run_id=sim.ticks["run_id"][0].as_py())
    out, end = monitor.on_ticks(sim.ticks), monitor.on_watermark(2**62)
    return sim, [*out.alerts, *end.alerts]


def member_peaks(sim: SimulatedRun, recipe: Recipe | None) -> dict[str, float]:
    """Each shipped fusion member's highest score over its threshold held `PERSIST` ticks on a run, with the
    members that compare with a reference given `recipe`'s (as the monitor's `set_recipe` does)."""
    fusion = make_detector("fusion")
    if recipe is not None:
        reference = reference_for(recipe)
        for det in fusion.detectors.values():
            if hasattr(det, "reference"):
                det.reference = reference
    ts_us = sim.ticks["ts"].cast(pa.int64()).to_numpy()
    _, R, _ = fusion.score_learn_members(fusion.init_state(DETECTOR_SIGNALS), ts_us,
                                          features(sim.ticks, np.array([np.nan, np.nan])))
    return {name: persistent_max(np.nan_to_num(r)) for name, r in zip(fusion.thresholds, R, strict=True)}


def run_sweep(recipes: int, seed: int, grace_h: float = 2.0, recipe_blind: bool = False,
              progress: Callable[[str], None] | None = None) -> SweepResult:
    say = progress or (lambda _msg: None)
    plan = sweep_plan(recipes, seed)
    res = SweepResult({"recipes": recipes, "seed": seed, "runs": len(plan), "recipe_blind": recipe_blind})
    for k, case in enumerate(plan, 1):
        say(f"[{k}/{len(plan)}] {case.recipe} {case.kind} {case.magnitude}".rstrip())
        if case.recipe not in res.recipes:
            res.recipes[case.recipe] = recipe_settings(case.scenario) | {"family": recipe_family(case.scenario)}
            res.alerts_on_normal_runs_by_recipe[case.recipe] = 0
        sim, alerts = monitor_run(case, recipe_blind)
        if case.kind == "normal":
            family = res.normal_peak_by_family.setdefault(recipe_family(case.scenario), {})
            peaks = member_peaks(sim, None if recipe_blind else Recipe.from_scenario(case.scenario))
            for member, peak in peaks.items():
                family[member] = max(family.get(member, 0.0), peak)
            res.normal_runs += 1
            res.alerts_on_normal_runs += len(alerts)
            res.alerts_on_normal_runs_by_recipe[case.recipe] += len(alerts)
            for a in alerts:
                res.alerts_on_normal_runs_by_member[a["member"]] = res.alerts_on_normal_runs_by_member.get(
                    a["member"], 0) + 1
            continue
        opened = sorted(a["ts"] for a in alerts)
        for lab in sim.labels:
            name = lab.fault + (" (composite)" if case.composite else "")
            inside = [t for t in opened if lab.start_ts <= t <= lab.end_ts + timedelta(hours=grace_h)]
            res.detected.setdefault(case.magnitude, {}).setdefault(name, []).append(bool(inside))
            if inside:
                res.delays_min.setdefault(case.magnitude, {}).setdefault(name, []).append(
                    (inside[0] - lab.start_ts) / timedelta(minutes=1))
    return res


def sweep_markdown(res: SweepResult) -> str:
    j = res.as_json()
    faults = sorted(set(j["detection_rate"]["built-in"]) | set(j["detection_rate"]["half"]))
    lines = ["| fault | built-in: detected (median delay) | half magnitude: detected (median delay) |",
             "|---|---|---|"]
    for f in faults:
        cells = []
        for m in ("built-in", "half"):
            r = j["detection_rate"][m].get(f)
            delay = "" if not r or r["median_delay_min"] is None else f" ({r['median_delay_min']:.0f} min)"
            cells.append("–" if r is None else f"{r['detected']:.0%} of {r['runs']}{delay}")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    by_member = ", ".join(f"{m}: {n}" for m, n in sorted(res.alerts_on_normal_runs_by_member.items()))
    lines += ["", f"Alerts on {res.normal_runs} normal runs over {len(res.recipes)} recipes: "
              f"{res.alerts_on_normal_runs}" + (f" (by member: {by_member})" if by_member else "") + ".",
              "", "Calibration per recipe family: each member's highest score over its threshold held 5 ticks on "
              "the family's normal runs (it alarms at 1.00).", ""]
    members = sorted({m for peaks in res.normal_peak_by_family.values() for m in peaks})
    lines += ["| recipe family | " + " | ".join(members) + " |", "|---" * (len(members) + 1) + "|"]
    lines += [f"| {fam} | " + " | ".join(f"{peaks.get(m, 0.0):.2f}" for m in members) + " |"
              for fam, peaks in sorted(res.normal_peak_by_family.items())]
    return "\n".join(lines + ["", *recipes_table(res.recipes, res.alerts_on_normal_runs_by_recipe, "alerts")])


def recipes_table(recipes: dict[str, dict], on_normal_runs: dict[str, int], what: str) -> list[str]:
    """A sweep's recipes, one row each, with how many `what` (alerts, incidents) its normal runs raised."""
    lines = [f"| recipe | DO setpoint % | pH setpoint | feed | shift day | volume L | seed e6/mL | {what} on its "
             "normal runs |", "|---|---|---|---|---|---|---|---|"]
    for name, r in recipes.items():
        shift = "none" if r["temp_shift_day"] is None else f"{r['temp_shift_day']:g}"
        lines.append(f"| {name} | {r['do_setpoint_pct']:g} | {r['ph_setpoint']:g} | {r['feed_mode']} | {shift} | "
                     f"{r['working_volume_l']:g} | {r['seed_vcd_e6_per_ml']:g} | {on_normal_runs[name]} |")
    return lines
