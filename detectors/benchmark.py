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

import detectors  # noqa: F401 - registers every detector
from detectors.alarm import AlarmState, Hysteresis, MemberAlarms
from detectors.base import DETECTOR_SIGNALS, REGISTRY, make_detector, plant_of
from detectors.features import features
from detectors.fusion import CALIBRATION
from sources.fleet import simulate_run
from sources.scenarios import ARCHETYPE_SCENARIOS

COMPOSITE = "overfeed_then_do_limitation"
FUSION_MEMBERS = ("golden", "twin_residual", "autoencoder", "zscore", "flatline", "dropout")
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
