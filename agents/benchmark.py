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

from agents.diagnose import diagnose_ticks
from agents.incidents import incident_id_for
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


@dataclass
class AgentResult:
    outcomes: list[LabelOutcome] = field(default_factory=list)
    incidents_on_normal_runs: int = 0
    normal_runs: int = 0
    spurious_incidents_on_fault_runs: int = 0
    first_chunk_ms: list[float] = field(default_factory=list)

    def rate(self, key: str, fault: str | None = None, detected_only: bool = False) -> float:
        rows = [o for o in self.outcomes if (fault is None or o.fault == fault) and (o.detected or not detected_only)]
        return float(np.mean([getattr(o, key) for o in rows])) if rows else float("nan")

    def as_json(self) -> dict:
        faults = sorted({o.fault for o in self.outcomes})
        lat = np.array(self.first_chunk_ms)
        return {
            "top1": self.rate("top1"), "top3": self.rate("top3"),
            "top1_detected": self.rate("top1", detected_only=True),
            "top3_detected": self.rate("top3", detected_only=True),
            "detection_rate": self.rate("detected"), "abstention_rate": self.rate("abstained", detected_only=True),
            "incidents_on_normal_runs": self.incidents_on_normal_runs, "normal_runs": self.normal_runs,
            "spurious_incidents_on_fault_runs": self.spurious_incidents_on_fault_runs,
            "per_archetype": {f: {"labels": sum(o.fault == f for o in self.outcomes),
                                  "detected": self.rate("detected", f), "top1": self.rate("top1", f),
                                  "top3": self.rate("top3", f), "abstained": self.rate("abstained", f, True)}
                              for f in faults},
            "first_chunk_ms": {"n": len(lat), "p50": float(np.percentile(lat, 50)) if len(lat) else None,
                               "p99": float(np.percentile(lat, 99)) if len(lat) else None},
        }


def evaluate_suite(seeds: int = 5, normal_runs: int = 10, grace_h: float = 2.0,
                   progress: Callable[[str], None] | None = None) -> AgentResult:
    say = progress or (lambda _m: None)
    res = AgentResult(normal_runs=normal_runs)
    plan = [(s, 500 + i) for s in [*ARCHETYPE_SCENARIOS.values(), COMPOSITE] for i in range(seeds)]
    plan += [("normal", 700 + i) for i in range(normal_runs)]
    for k, (scenario, seed) in enumerate(plan, 1):
        say(f"[{k}/{len(plan)}] {scenario} seed {seed}")
        sim = simulate_run(scenario, seed)
        labels = sim.labels
        findings = diagnose_ticks(sim.ticks, sim.assays)
        if scenario == "normal":
            res.incidents_on_normal_runs += len(findings)
            continue
        explained = set()
        for lab in labels:
            hits = [f for f in findings if lab.start_ts <= f.incident["start_ts"] <= lab.end_ts + timedelta(hours=grace_h)]
            explained |= {f.incident["incident_id"] for f in hits}
            name = lab.fault + (" (composite)" if scenario == COMPOSITE else "")
            if not hits:
                res.outcomes.append(LabelOutcome(name, scenario, seed, False, False, False, False, None))
                continue
            d = hits[0].diagnosis
            best3 = [h.fault for h in d.ranked(3)]
            res.outcomes.append(LabelOutcome(name, scenario, seed, True, d.top is not None and d.top.fault == lab.fault,
                                             lab.fault in best3, d.abstained, d.top.fault if d.top else None))
        res.spurious_incidents_on_fault_runs += sum(f.incident["incident_id"] not in explained for f in findings)
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
    lines.append(f"| **all** | {len(res.outcomes)} | {j['detection_rate']:.0%} | {j['top1']:.0%} | {j['top3']:.0%} | "
                 f"{j['abstention_rate']:.0%} |")
    lines += ["", f"Over detected faults only: top-1 {j['top1_detected']:.0%}, top-3 {j['top3_detected']:.0%}. "
              f"Incidents on {res.normal_runs} normal runs: {res.incidents_on_normal_runs}. Incidents on fault runs "
              f"that match no label: {res.spurious_incidents_on_fault_runs}."]
    lat = j["first_chunk_ms"]
    if lat["n"]:
        lines.append(f"Alert → first chunk ({lat['n']} alerts, offline backend): p50 {lat['p50']:.1f} ms, "
                     f"p99 {lat['p99']:.1f} ms.")
    return "\n".join(lines)
