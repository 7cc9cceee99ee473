"""`biopilot bench pipeline`: throughput and latency of the streaming path, each beside its baselines, and the
flow's memory over a soak. Each phase runs on its own broker, in its own module:

- throughput (`pipeline_throughput`): ticks/s through a bare NATS -> Delta copy, our flow and a naive flow;
- latency (`pipeline_latency`): publish -> commit and publish -> alert at a fixed live rate, three ways;
- soak (`pipeline_soak`): the flow's RSS at full rate, and how much it rose.

docs/PERFORMANCE.md has the figures and the commands that reproduce them.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from biopilot.bench.pipeline_latency import Latency, measure_latency
from biopilot.bench.pipeline_probes import FreshBrokers
from biopilot.bench.pipeline_soak import Soak, measure_soak
from biopilot.bench.pipeline_throughput import Throughput, measure_throughput
from biopilot.bench.results import as_json
from sources.fleet import Fleet
from sources.scenarios import load_scenario

__all__ = ["PipelineBench", "as_json", "fleet_ticks", "format_report", "run"]


@dataclass
class PipelineBench:
    detector: str  # what our flow ran: the calibrated fusion, or the z-score alone
    throughput: Throughput
    latency: Latency
    soak: Soak


def fleet_ticks(n_ticks: int, seed: int = 3) -> pa.Table:
    """Realistic ticks from the twin: enough reactors for whole 14-day runs."""
    reactors = max(1, n_ticks // 20160 + (n_ticks % 20160 > 0))
    fleet = Fleet(load_scenario("normal"), reactors, seed=seed)
    batches = []
    while not fleet.done:
        batches.append(fleet.step(1440).ticks)
    return pa.Table.from_batches(batches).slice(0, n_ticks)


def run(ticks: int = 2_000_000, naive_ticks: int = 20_000, live_rate: float = 10_000.0, live_s: float = 60.0,
        soak_s: float = 300.0, keep: str | None = None, detector: str = "fusion", repeats: int = 3,
        ) -> PipelineBench:
    """Every phase in turn, its brokers, lakes and logs under `keep` (kept) or a temporary directory."""
    root = Path(keep or tempfile.mkdtemp(prefix="biopilot-bench-pipeline-"))
    try:
        with FreshBrokers(root) as broker:
            data = fleet_ticks(ticks)
            throughput = measure_throughput(broker, root, data, naive_ticks, repeats, detector)
            latency = measure_latency(broker, root, live_rate, live_s, detector)
            soak = measure_soak(broker("soak"), root, data, soak_s, detector)
        return PipelineBench(detector=detector, throughput=throughput, latency=latency, soak=soak)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def format_report(b: PipelineBench) -> str:
    t, lat, soak = b.throughput, b.latency, b.soak

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{x:,.0f}" for x in rates)

    return "\n".join([
        f"(a) floor  NATS -> Delta copy          {t.floor.ticks_per_s:12,.0f} ticks/s steady, "
        f"{t.floor.drain_ticks_per_s:,.0f} drained ({t.ticks:,} ticks; median of {t.repeats}: "
        f"{runs(t.floor.runs_ticks_per_s)})",
        f"(b) ours   flow + {b.detector:<8} + alarms {t.ours.ticks_per_s:12,.0f} ticks/s steady, "
        f"{t.ours.drain_ticks_per_s:,.0f} drained ({t.ticks:,} ticks; median of {t.repeats}: "
        f"{runs(t.ours.runs_ticks_per_s)})",
        f"(c) naive  JSON/tick, per-event, HST    {t.naive.ticks_per_s:12,.0f} ticks/s steady, "
        f"{t.naive.drain_ticks_per_s:,.0f} drained ({t.naive_ticks:,} ticks)",
        f"ratios     ours/naive {t.ours_vs_naive:.0f}x, floor/ours {t.floor_vs_ours:.2f}x",
        f"live       {lat.rate_ticks_per_s:,.0f} ticks/s, lateness {lat.lateness_s:g} s: publish->commit p50 "
        f"{lat.publish_to_commit.p50_ms:.0f} ms p99 {lat.publish_to_commit.p99_ms:.0f} ms; publish->alert p50 "
        f"{lat.publish_to_alert.p50_ms:.1f} ms p99 {lat.publish_to_alert.p99_ms:.1f} ms "
        f"({lat.publish_to_alert.count} alerts); each run's first alert p50 {lat.publish_to_first_alert.p50_ms:.1f} "
        f"ms p99 {lat.publish_to_first_alert.p99_ms:.1f} ms ({lat.publish_to_first_alert.count}); in bursts (every "
        f"reactor at once) p50 {lat.publish_to_alert_burst.p50_ms:.1f} ms p99 {lat.publish_to_alert_burst.p99_ms:.1f}"
        f" ms ({lat.publish_to_alert_burst.count}); with a recovery store p50 "
        f"{lat.publish_to_alert_recovery.p50_ms:.1f} ms p99 {lat.publish_to_alert_recovery.p99_ms:.1f} ms",
        f"soak       {soak.duration_s:.0f} s at full rate ({soak.ticks_per_s:,.0f} ticks/s committed): flow RSS "
        f"{', '.join(f'{x:.0f}' for x in soak.rss_mb)} MB (max {soak.max_rss_mb:.0f}; last minute's median "
        f"less the second's {soak.rss_rise_mb:+.0f} MB; {soak.lost_messages} messages lost)",
    ])
