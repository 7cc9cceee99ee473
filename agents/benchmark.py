"""`biopilot bench agents`: root-cause quality over a labelled suite, and alert -> first chunk latency.

Suite: every archetype's built-in scenario and the composite x `seeds` (seeds 500+, distinct from the tests'
and from the detector benchmark's), plus `normal_runs` normal runs (seeds 700+). Each run goes through
monitoring + troubleshooting as `biopilot diagnose` does. A label is *detected* when an incident opens inside
its window (+ `grace_h`); top-1 counts when the first such incident's leading (not abstained) cause is the
label's fault, top-3 when the fault is among its three best matches. Accuracies are over all labels (a missed
fault counts as wrong) and, separately, over the detected ones.
Latency: the workers run on an embedded broker and cache; alerts are published at a steady rate and the time
from publish to the first explanation chunk on `biopilot.agent.<incident>` is recorded.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from agents.diagnose import IncidentFinding, diagnose_ticks, recipe_rows
from agents.incidents import incident_id_for
from detectors.benchmark import recipe_settings, recipes_table, sweep_plan
from detectors.recipe import Recipe
from sources.fleet import simulate_run
from sources.scenarios import ARCHETYPE_SCENARIOS

COMPOSITE = "overfeed_then_do_limitation"


@dataclass
class LabelOutcome:
    fault: str
    scenario: str
    seed: int
    detected: bool
    top1: bool
    top3: bool
    abstained: bool
    predicted: str | None
    recipe: str = ""  # the sweep's recipe name
    magnitude: str = "built-in"  # or "half" (the sweep)


@dataclass
class AgentResult:
    outcomes: list[LabelOutcome] = field(default_factory=list)
    incidents_on_normal_runs: int = 0
    normal_runs: int = 0
    spurious_incidents_on_fault_runs: int = 0
    first_chunk_ms: list[float] = field(default_factory=list)
    # the recipe sweep: incidents on each recipe's normal runs, each recipe's settings, how the sweep was made
    incidents_on_normal_runs_by_recipe: dict[str, int] = field(default_factory=dict)
    recipes: dict[str, dict] = field(default_factory=dict)
    sweep: dict | None = None

    def rate(self, key: str, fault: str | None = None, detected_only: bool = False,
             magnitude: str = "built-in") -> float:
        rows = [o for o in self.outcomes if (fault is None or o.fault == fault) and (o.detected or not detected_only)
                and o.magnitude == magnitude]
        return float(np.mean([getattr(o, key) for o in rows])) if rows else float("nan")

    def as_json(self) -> dict:
        faults = sorted({o.fault for o in self.outcomes})
        lat = np.array(self.first_chunk_ms)
        sweep = {} if self.sweep is None else {
            "sweep": self.sweep, "recipes": self.recipes,
            "incidents_on_normal_runs_by_recipe": self.incidents_on_normal_runs_by_recipe,
            "half_magnitude": {"detection_rate": self.rate("detected", magnitude="half"),
                               "top1": self.rate("top1", magnitude="half"), "top3": self.rate("top3", magnitude="half"),
                               "per_archetype": {f: {"labels": sum(o.fault == f and o.magnitude == "half"
                                                                   for o in self.outcomes),
                                                     "detected": self.rate("detected", f, magnitude="half"),
                                                     "top1": self.rate("top1", f, magnitude="half"),
                                                     "top3": self.rate("top3", f, magnitude="half")}
                                                 for f in faults if any(o.fault == f and o.magnitude == "half"
                                                                        for o in self.outcomes)}}}
        return {
            "top1": self.rate("top1"), "top3": self.rate("top3"),
            "top1_detected": self.rate("top1", detected_only=True),
            "top3_detected": self.rate("top3", detected_only=True),
            "detection_rate": self.rate("detected"), "abstention_rate": self.rate("abstained", detected_only=True),
            "incidents_on_normal_runs": self.incidents_on_normal_runs, "normal_runs": self.normal_runs,
            "spurious_incidents_on_fault_runs": self.spurious_incidents_on_fault_runs,
            "per_archetype": {f: {"labels": sum(o.fault == f and o.magnitude == "built-in" for o in self.outcomes),
                                  "detected": self.rate("detected", f), "top1": self.rate("top1", f),
                                  "top3": self.rate("top3", f), "abstained": self.rate("abstained", f, True)}
                              for f in faults},
            "first_chunk_ms": {"n": len(lat), "p50": float(np.percentile(lat, 50)) if len(lat) else None,
                               "p99": float(np.percentile(lat, 99)) if len(lat) else None},
        } | sweep


def evaluate_suite(seeds: int = 5, normal_runs: int = 10, grace_h: float = 2.0,
                   progress: Callable[[str], None] | None = None) -> AgentResult:
    say = progress or (lambda _m: None)
    res = AgentResult(normal_runs=normal_runs)
    plan = [(s, 500 + i) for s in [*ARCHETYPE_SCENARIOS.values(), COMPOSITE] for i in range(seeds)]
    plan += [("normal", 700 + i) for i in range(normal_runs)]
    for k, (scenario, seed) in enumerate(plan, 1):
        say(f"[{k}/{len(plan)}] {scenario} seed {seed}")
        sim = simulate_run(scenario, seed)
        findings = diagnose_ticks(sim.ticks, sim.assays)
        if scenario == "normal":
            res.incidents_on_normal_runs += len(findings)
            continue
        res.spurious_incidents_on_fault_runs += _score_labels(res, scenario, seed, sim.labels, findings,
                                                              scenario == COMPOSITE, grace_h)
    return res


def _score_labels(res: AgentResult, scenario: str, seed: int, labels: tuple, findings: list[IncidentFinding],
                  composite: bool, grace_h: float, **tags: str) -> int:
    """Adds one outcome per label to `res`; returns how many incidents matched no label."""
    explained = set()
    for lab in labels:
        hits = [f for f in findings if lab.start_ts <= f.incident["start_ts"] <= lab.end_ts + timedelta(hours=grace_h)]
        explained |= {f.incident["incident_id"] for f in hits}
        name = lab.fault + (" (composite)" if composite else "")
        if not hits:
            res.outcomes.append(LabelOutcome(name, scenario, seed, False, False, False, False, None, **tags))
            continue
        d = hits[0].diagnosis
        best3 = [h.fault for h in d.ranked(3)]
        res.outcomes.append(LabelOutcome(name, scenario, seed, True, d.top is not None and d.top.fault == lab.fault,
                                         lab.fault in best3, d.abstained, d.top.fault if d.top else None, **tags))
    return sum(f.incident["incident_id"] not in explained for f in findings)


def evaluate_sweep(recipes: int, seed: int, grace_h: float = 2.0, recipe_blind: bool = False,
                   progress: Callable[[str], None] | None = None) -> AgentResult:
    """The recipe sweep (`detectors.benchmark.sweep_plan`): each run's recipe handed to the monitor and the
    evidence, as the flow does (`recipe_blind`: judged against the default recipe, the baseline)."""
    say = progress or (lambda _m: None)
    plan = sweep_plan(recipes, seed)
    res = AgentResult(sweep={"recipes": recipes, "seed": seed, "runs": len(plan), "recipe_blind": recipe_blind})
    for k, case in enumerate(plan, 1):
        say(f"[{k}/{len(plan)}] {case.recipe} {case.kind} {case.magnitude}".rstrip())
        if case.recipe not in res.recipes:
            res.recipes[case.recipe] = recipe_settings(case.scenario)
            res.incidents_on_normal_runs_by_recipe[case.recipe] = 0
        sim = simulate_run(case.scenario, case.seed)
        recipes = None if recipe_blind else recipe_rows(Recipe.from_scenario(case.scenario), sim.started)
        findings = diagnose_ticks(sim.ticks, sim.assays, recipes=recipes)
        if case.kind == "normal":
            res.normal_runs += 1
            res.incidents_on_normal_runs += len(findings)
            res.incidents_on_normal_runs_by_recipe[case.recipe] += len(findings)
            continue
        res.spurious_incidents_on_fault_runs += _score_labels(
            res, case.kind, case.seed, sim.labels, findings, case.composite, grace_h, recipe=case.recipe,
            magnitude=case.magnitude)
    return res


def latency(alerts: int, rate_per_s: float, say: Callable[[str], None]) -> list[float]:
    from core.services import start_services
    from sinks import delta

    with tempfile.TemporaryDirectory() as tmp:
        lake = str(Path(tmp) / "lake")
        sim = simulate_run("normal", 42)
        delta.append(lake, "ticks", sim.ticks, sim.ticks.schema)
        with start_services(lake) as services:
            return asyncio.run(_latency(services, lake, sim.ticks["run_id"][0].as_py(), sim.started, alerts,
                                        rate_per_s, say))


async def _latency(services, lake: str, run_id: str, t0: datetime, alerts: int, rate_per_s: float,  # noqa: ANN001
                   say: Callable[[str], None]) -> list[float]:
    import nats

    from agents.llm import OfflineBackend
    from agents.workers import Workers

    workers = Workers(services.nats_url, services.redis_url, lake, OfflineBackend())
    await workers.start()
    nc = await nats.connect(services.nats_url)
    js = nc.jetstream()
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def on_chunk(msg) -> None:  # noqa: ANN001
        chunk = json.loads(msg.data)
        if chunk["seq"] == 0 and chunk["incident_id"] in sent:
            latencies.append((time.perf_counter() - sent.pop(chunk["incident_id"])) * 1e3)

    await nc.subscribe("biopilot.agent.>", cb=on_chunk)
    await nc.flush()
    say(f"publishing {alerts} alerts at {rate_per_s:g}/s")
    for k in range(alerts):
        alert = {"alert_id": f"bench-{k}", "run_id": run_id, "reactor_id": f"bench{k}", "seq": 100 + k,
                 "ts": (t0 + timedelta(hours=2, minutes=k)).isoformat(), "detector": "fusion",
                 "score": 2.0, "threshold": 1.0, "severity": "warning",
                 "signals": [{"name": "do_pct", "contribution": 0.9}],
                 "emitted_at": datetime.now(UTC).isoformat()}
        sent[incident_id_for(run_id, f"bench-{k}")] = time.perf_counter()
        await js.publish(f"biopilot.alerts.bench{k}", json.dumps(alert).encode())
        await asyncio.sleep(1.0 / rate_per_s)
    deadline = time.perf_counter() + 10
    while sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await nc.close()
    await workers.stop()
    return latencies


def run(seeds: int = 5, normal_runs: int = 10, latency_alerts: int = 200,
        progress: Callable[[str], None] | None = None) -> AgentResult:
    say = progress or (lambda _m: None)
    res = evaluate_suite(seeds, normal_runs, progress=say)
    if latency_alerts:
        res.first_chunk_ms = latency(latency_alerts, 20.0, say)
    return res


def markdown(res: AgentResult) -> str:
    j = res.as_json()
    lines = ["| archetype | labels | detected | top-1 | top-3 | abstained (of detected) |", "|---|---|---|---|---|---|"]
    for f, r in j["per_archetype"].items():
        lines.append(f"| {f} | {r['labels']} | {r['detected']:.0%} | {r['top1']:.0%} | {r['top3']:.0%} | "
                     f"{r['abstained']:.0%} |" if r["detected"] else
                     f"| {f} | {r['labels']} | 0% | 0% | 0% | – |")
    built_in = sum(o.magnitude == "built-in" for o in res.outcomes)  # the rates' labels: the sweep's halves apart
    lines.append(f"| **all** | {built_in} | {j['detection_rate']:.0%} | {j['top1']:.0%} | {j['top3']:.0%} | "
                 f"{j['abstention_rate']:.0%} |")
    lines += ["", f"Over detected faults only: top-1 {j['top1_detected']:.0%}, top-3 {j['top3_detected']:.0%}. "
              f"Incidents on {res.normal_runs} normal runs: {res.incidents_on_normal_runs}. Incidents on fault runs "
              f"that match no label: {res.spurious_incidents_on_fault_runs}."]
    if res.sweep is not None:
        lines += _sweep_lines(j)
    lat = j["first_chunk_ms"]
    if lat["n"]:
        lines.append(f"Alert → first chunk ({lat['n']} alerts, offline backend): p50 {lat['p50']:.1f} ms, "
                     f"p99 {lat['p99']:.1f} ms.")
    return "\n".join(lines)


def _sweep_lines(j: dict) -> list[str]:
    """The sweep's half-magnitude rates and its incidents on normal runs per recipe."""
    half = j["half_magnitude"]
    lines = ["", f"Sweep: {j['sweep']['recipes']} recipes, seed {j['sweep']['seed']}, {j['sweep']['runs']} runs"
             + (" (recipe-blind: every run against the default recipe's reference)" if j["sweep"]["recipe_blind"]
                else "") + "; the table above is the built-in magnitudes and the composites.", "",
             "| half magnitude | labels | detected | top-1 | top-3 |", "|---|---|---|---|---|"]
    lines += [f"| {f} | {r['labels']} | {r['detected']:.0%} | {r['top1']:.0%} | {r['top3']:.0%} |"
              for f, r in half["per_archetype"].items()]
    lines += [f"| **all** | {sum(r['labels'] for r in half['per_archetype'].values())} | "
              f"{half['detection_rate']:.0%} | {half['top1']:.0%} | {half['top3']:.0%} |", ""]
    return lines + recipes_table(j["recipes"], j["incidents_on_normal_runs_by_recipe"], "incidents")
