"""The latency phase of `biopilot bench pipeline`, at a fixed live rate over `LIVE_REACTORS` reactors:
publish -> Delta commit (row counts polled) and publish -> alert (alerts received on `biopilot.alerts.>`, timed
from the publish of the tick that fired them), over all alerts and over each run's first.

The reactors run twin batches, each with three faults (a jacket failure, a stuck CO2 valve, an O2 supply loss),
the fleet's faults spread evenly over the window: alerts come at independent times rather than in one burst,
and enough of them that the p99 is not just the second-worst. Three modes, each with a fresh flow: the
reactors' messages staggered evenly over each round (independent plants, each on its own clock: the headline
figures), in bursts (every reactor's message in the same instant, as the simulated fleet steps in lockstep:
the last waits for all before it), and staggered with a Bytewax recovery store (as `biopilot up` runs the flow:
epochs that each end with a snapshot of every reactor's monitor).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import numpy as np
import pyarrow as pa
from nats.aio.msg import Msg

from biopilot.bench.pipeline_probes import CommittedRows, wait_for_consumer
from core.codec import encode_arrow
from core.processes import stop_process_group
from flows.launch import start_flow
from sources.fleet import Fleet
from sources.publish import ARROW_HEADERS, split_by_reactor
from sources.scenarios import load_scenario

LIVE_FAULTS = (("temperature_spike", 3.0), ("ph_excursion", 0.5), ("do_limitation", 0.7))
LIVE_REACTORS = 40
LIVE_ROWS_PER_MESSAGE = 50
COMMIT_POLL_S = 0.05
LIVE_LATENESS_S = 0.0  # an in-order source: the latency is the pipeline's, not the lateness setting's


@dataclass
class Percentiles:
    p50_ms: float
    p99_ms: float
    count: int  # latencies measured

    @classmethod
    def of(cls, seconds: list[float]) -> Percentiles:
        """The median and 99th percentile of `seconds`, in ms (NaN with none)."""
        def pct(q: float) -> float:
            return float(np.percentile(np.array(seconds) * 1000, q)) if seconds else float("nan")
        return cls(p50_ms=pct(50), p99_ms=pct(99), count=len(seconds))


@dataclass
class Latency:
    rate_ticks_per_s: float  # the live publishing rate
    lateness_s: float  # the flow's allowed lateness
    publish_to_commit: Percentiles  # per round of messages
    publish_to_alert: Percentiles  # staggered, every alert
    # each run's first alert (its fault's detection); the later ones include consequences that the identically
    # scheduled runs raise at the same culture age, in bursts of dozens within a second
    publish_to_first_alert: Percentiles
    publish_to_alert_burst: Percentiles  # every reactor's message published in the same instant
    publish_to_alert_recovery: Percentiles  # staggered, with a recovery store (as `biopilot up` runs the flow)


def live_ticks(reactors: int, per_reactor: int) -> pa.Table:
    """Twin runs (what the flow's golden-batch member expects), each with the three `LIVE_FAULTS` of 4 h, the
    fleet's faults spread evenly over the window."""
    scenario = load_scenario("normal").with_overrides(days=per_reactor * 60.0 / 86400.0)
    fleet = Fleet(scenario, reactors, seed=11)
    hours = per_reactor / 60.0
    slots = reactors * len(LIVE_FAULTS)
    for f, (fault, magnitude) in enumerate(LIVE_FAULTS):
        for k in range(reactors):
            fleet.inject_fault(k, fault, hours * (0.1 + 0.8 * (f * reactors + k) / slots), 4.0, magnitude)
    return pa.Table.from_batches([fleet.step(per_reactor).ticks])


async def publish_live(url: str, lake: Path, ticks: pa.Table, rate: float, rows_per_msg: int,
                       staggered: bool = True) -> tuple[list[float], list[tuple[str, float]]]:
    """Publish -> commit latencies, and (run, publish -> alert latency) per alert in arrival order. Each round
    sends one message per reactor; `staggered` spreads them evenly over the round, else they go at once."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    published: dict[tuple[str, int], float] = {}
    alerts: list[tuple[str, float]] = []

    async def on_alert(msg: Msg) -> None:
        alert = json.loads(msg.data)
        if alert.get("type") == "clear":
            return
        key = (alert["run_id"], int(alert["seq"]))
        if key in published:
            alerts.append((alert["run_id"], time.monotonic() - published[key]))

    sub = await nc.subscribe("biopilot.alerts.>", cb=on_alert)
    per_reactor = split_by_reactor(ticks)
    n_per = min(t.num_rows for t in per_reactor.values())
    commit_samples: list[tuple[float, int]] = []
    publish_marks: list[tuple[float, int]] = []
    sent = 0
    t0 = time.monotonic()
    stop = asyncio.Event()

    async def poll_commits() -> None:
        # on a thread: a poll on this loop held up the publishing and stamped the alerts that arrived meanwhile late
        committed = CommittedRows(lake / "ticks")
        while not stop.is_set():
            t = time.monotonic()
            commit_samples.append((t, await asyncio.to_thread(committed)))
            await asyncio.sleep(COMMIT_POLL_S)

    poller = asyncio.create_task(poll_commits())
    round_s = rows_per_msg * len(per_reactor) / rate
    for r, offset in enumerate(range(0, n_per, rows_per_msg)):
        for k, (reactor, rows) in enumerate(per_reactor.items()):
            due = t0 + round_s * (r + (k / len(per_reactor) if staggered else 0.0))
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            chunk = rows.slice(offset, rows_per_msg)
            now = time.monotonic()
            for seq in chunk["seq"].to_pylist():
                published[(chunk["run_id"][0].as_py(), seq)] = now
            await js.publish(f"biopilot.telemetry.{reactor}", encode_arrow(chunk), headers=ARROW_HEADERS)
            sent += chunk.num_rows
        publish_marks.append((time.monotonic(), sent))
    await asyncio.sleep(3.0)
    stop.set()
    await poller
    await sub.unsubscribe()
    await nc.close()
    commit_lat = []
    times = np.array([t for t, _ in commit_samples])
    counts = np.array([c for _, c in commit_samples])
    for t_pub, k in publish_marks:
        idx = np.searchsorted(counts, k)
        if idx < len(times):
            commit_lat.append(times[idx] - t_pub)
    return commit_lat, alerts


def measure_latency(broker: Callable[[str], str], root: Path, rate: float, duration_s: float,
                    detector: str) -> Latency:
    """The three modes, each with a fresh flow on a fresh broker from `broker(name)`, its lake under `root`."""
    live = live_ticks(LIVE_REACTORS, int(rate * duration_s / LIVE_REACTORS))
    measured = {}
    for mode in ("staggered", "burst", "recovery"):
        url = broker(f"live-{mode}")
        recovery = root / f"live-{mode}-recovery" if mode == "recovery" else None
        proc = start_flow(url, str(root / f"live-{mode}"), recovery, LIVE_LATENESS_S, durable="bench-live",
                          log_path=root / f"live-{mode}.log", extra_env={"BIOPILOT_DETECTOR": detector})
        try:
            wait_for_consumer(url, "bench-live")  # the flow warms its models up before it subscribes
            measured[mode] = asyncio.run(publish_live(url, root / f"live-{mode}", live, rate,
                                                      LIVE_ROWS_PER_MESSAGE, staggered=mode != "burst"))
        finally:
            stop_process_group(proc)
    commit_lat, alerts = measured["staggered"]
    first: dict[str, float] = {}
    for run, lat in alerts:
        first.setdefault(run, lat)
    return Latency(rate_ticks_per_s=rate, lateness_s=LIVE_LATENESS_S, publish_to_commit=Percentiles.of(commit_lat),
                   publish_to_alert=Percentiles.of([lat for _, lat in alerts]),
                   publish_to_first_alert=Percentiles.of(list(first.values())),
                   publish_to_alert_burst=Percentiles.of([lat for _, lat in measured["burst"][1]]),
                   publish_to_alert_recovery=Percentiles.of([lat for _, lat in measured["recovery"][1]]))
