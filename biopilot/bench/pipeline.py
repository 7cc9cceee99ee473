"""`biopilot bench pipeline`: throughput and latency of the streaming path, each beside its baselines.

Throughput (ticks/s in steady state, from each table's own commit log: see `steady_rate`; the drain rate, all
rows over the time from the first delivery to the last commit, is reported beside it) for: (a) the floor, a
bare NATS -> Delta copy with no engine and no detectors; (b) our flow (`flows.monitor` with `--detector`: the calibrated fusion by default, or the z-score alone; alarms;
idempotent Delta sink); (c) the naive baseline (`flows.naive`: one JSON message per tick, per-event
operators, River HalfSpaceTrees per event). The data is published to JetStream before each consumer starts,
so the publisher is not what is measured. The floor and our flow run `repeats` times (3 by default), in turns; the
medians are reported, each run beside them.

Latency at a fixed live rate (default 10k ticks/s over 40 reactors in 50-tick messages): publish -> Delta
commit (row counts polled every 50 ms) and publish -> alert (alerts received on `biopilot.alerts.>`, timed
from the publish of the tick that fired them; 40 twin runs, each with three faults — a jacket failure, a stuck
CO2 valve, an O2 supply loss — the fleet's 120 spread evenly over the window, so a 60 s phase measures ~250
alerts with the fusion and its p99 is not just its second-worst alert), over all alerts and over each run's
first. Three times, with a fresh flow each time: with the reactors' messages staggered evenly over each 0.2 s
round (independent plants, each on its own clock: the headline figures), in bursts (every reactor's message
in the same instant, as our simulated fleet steps in lockstep: the last of 40 waits for the 39 before it),
and staggered with a Bytewax recovery store (as `biopilot up` runs the flow: 5 s epochs, each ending with a
snapshot of every reactor's monitor). Memory: the flow's RSS sampled every 5 s during a soak at full rate (the
publisher held at most `SOAK_BACKLOG_BYTES` ahead of the flow by `sources.backpressure`, so the broker never
discards what the flow has not read: `soak_lost_messages` counts what it did), and its rise (`rss_rise_mb`: the
last minute's median less the second's).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nats
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from biopilot.codec import encode_arrow
from biopilot.events import TICKS
from biopilot.services import ManagedServer, ensure_streams, start_flow, start_nats
from sinks.delta import Appender
from sinks.lake_sink import MAX_ROWS
from sources.backpressure import Backpressure
from sources.fleet import Fleet
from sources.publish import ARROW_HEADERS, publish_watermark, split_by_reactor
from sources.scenarios import load_scenario

ROWS_PER_MESSAGE = 10_000


@dataclass
class PipelineBench:
    ticks: int
    naive_ticks: int
    floor_ticks_per_s: float
    ours_ticks_per_s: float
    naive_ticks_per_s: float
    ours_vs_naive: float
    floor_vs_ours: float
    live_rate_ticks_per_s: float
    live_lateness_s: float
    p50_publish_to_commit_ms: float
    p99_publish_to_commit_ms: float
    p50_publish_to_alert_ms: float
    p99_publish_to_alert_ms: float
    alerts_measured: int
    # each run's first alert (its fault's detection); the later ones include consequences that the
    # identically scheduled runs raise at the same culture age, in bursts of dozens within a second
    p50_publish_to_first_alert_ms: float
    p99_publish_to_first_alert_ms: float
    first_alerts_measured: int
    # the same with every reactor's message published in the same instant, 5 bursts a second
    p50_publish_to_alert_burst_ms: float
    p99_publish_to_alert_burst_ms: float
    alerts_measured_burst: int
    # staggered again, with a Bytewax recovery store (as `biopilot up` runs the flow)
    p50_publish_to_alert_recovery_ms: float
    p99_publish_to_alert_recovery_ms: float
    flow_max_rss_mb: float
    soak_s: float
    soak_rss_mb: list[float] = field(default_factory=list)
    soak_ticks_per_s: float = 0.0
    detector: str = "fusion"  # what our flow ran: the calibrated fusion, or the z-score alone
    # all rows over the time from the first delivery to the last commit, start-up and the last batch's wait
    floor_drain_ticks_per_s: float = 0.0
    ours_drain_ticks_per_s: float = 0.0
    naive_drain_ticks_per_s: float = 0.0
    # the floor's and our flow's throughput is measured `repeats` times, in turns: the figures above are medians
    repeats: int = 1
    floor_runs_ticks_per_s: list[float] = field(default_factory=list)
    ours_runs_ticks_per_s: list[float] = field(default_factory=list)
    # the soak's RSS rise: the last minute's median less the second minute's (see `rss_rise_mb`)
    soak_rss_rise_mb: float = float("nan")
    # messages the broker discarded (the stream's size limit) before the flow read them: 0, or the soak was lossy
    soak_lost_messages: int = 0


SOAK_SAMPLE_S = 5.0
# the soak's publisher waits while this much (~200 messages) is published and not yet delivered: enough to
# keep the flow busy, far below the stream's limit. Unchecked, it ran ahead of the flow until the stream was
# full (4 GB, after ~30 s) and the broker discarded the oldest messages before the flow had read them
SOAK_BACKLOG_BYTES = 300_000_000


def rss_rise_mb(samples: list[float], sample_s: float = SOAK_SAMPLE_S, window_s: float = 60.0) -> float:
    """How much the flow's memory rose over a soak: the median of the last `window_s` of RSS samples less the
    median of the window after the first (the first is start-up: models loading, arenas and caches filling).
    Medians, because single samples swing by ±50 MB with the micro-batch in hand. NaN for fewer than three
    windows.

    >>> rss_rise_mb([500.0] * 12 + [900.0, 950.0] * 6 + [900.0] * 12 + [960.0, 990.0] * 6)
    50.0
    >>> rss_rise_mb([900.0] * 20)
    nan
    """
    k = int(window_s // sample_s)
    if len(samples) < 3 * k:
        return float("nan")
    return float(np.median(samples[-k:]) - np.median(samples[k:2 * k]))


def fleet_ticks(n_ticks: int, seed: int = 3) -> pa.Table:
    """Realistic ticks from the twin: enough reactors for whole 14-day runs."""
    reactors = max(1, n_ticks // 20160 + (n_ticks % 20160 > 0))
    fleet = Fleet(load_scenario("normal"), reactors, seed=seed)
    batches = []
    while not fleet.done:
        batches.append(fleet.step(1440).ticks)
    return pa.Table.from_batches(batches).slice(0, n_ticks)


class _CommittedRows:
    """Rows committed to a Delta table so far. The polling shares the two cores with what it measures, so it
    keeps the table open and reads only the new log entries: re-opening the table every 10 ms took ~3 CPU
    seconds of a 6-second run, a third of the machine."""

    def __init__(self, path: Path) -> None:
        self.path, self.table = path, None

    def __call__(self) -> int:
        try:
            if self.table is None:
                self.table = DeltaTable(str(self.path))
            else:
                self.table.update_incremental()
        except Exception:  # noqa: BLE001 - not created yet
            return 0
        return int(pc.sum(pa.table(self.table.get_add_actions(flatten=True))["num_records"]).as_py() or 0)


def steady_rate(path: Path, target: int, share: float = 0.9) -> float | None:
    """Ticks/s in steady state, from the table's own commit log: the rows committed after the first commit up
    to the one that brings the total to `share` of `target`, over the time between those two commits (None
    with too few commits). What the run's start (the first micro-batch filling) and its end (the last, partial
    micro-batch waiting for its age limit once the input stops, up to 1 s) add is latency, measured apart;
    counted in, it moved the drain rate of 2M ticks by up to ±25 % between runs of the same code."""
    history = sorted(DeltaTable(str(path)).history(), key=lambda h: h["version"])
    if not history or history[0]["version"] != 0:  # a run longer than the log's retention: early commits gone
        return None
    times = [h["timestamp"] / 1000.0 for h in history]
    totals = np.cumsum([h.get("operationMetrics", {}).get("num_added_rows", 0) for h in history])
    last = int(np.searchsorted(totals, share * target))
    if last >= len(totals) or last < 2 or times[last] <= times[0]:
        return None
    return float(totals[last] - totals[0]) / (times[last] - times[0])


async def _prepublish_arrow(url: str, table: pa.Table) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for reactor, rows in split_by_reactor(table).items():
        for offset in range(0, rows.num_rows, ROWS_PER_MESSAGE):
            await js.publish(f"biopilot.telemetry.{reactor}", encode_arrow(rows.slice(offset, ROWS_PER_MESSAGE)),
                             headers=ARROW_HEADERS, timeout=30)
        # just past the last tick: releases them all (one far ahead is refused, beyond the event-time horizon)
        await publish_watermark(js, reactor, int(rows["ts"].cast(pa.int64()).to_numpy().max()) + 1)
    await nc.close()


async def _prepublish_json(url: str, table: pa.Table) -> None:
    nc = await nats.connect(url)
    for i, row in enumerate(table.to_pylist()):
        row["ts"] = row["ts"].isoformat()
        await nc.publish(f"biopilot.telemetry.{row['reactor_id']}", json.dumps(row).encode())
        if i % 5000 == 4999:
            await nc.flush()
    await nc.flush()
    await nc.close()


def _delivered(url: str, durable: str) -> int:
    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().consumer_info("TELEMETRY", durable)).delivered.stream_seq
        except Exception:  # noqa: BLE001 - consumer not created yet
            return 0
        finally:
            await nc.close()
    return asyncio.run(ask())


def _wait_throughput(url: str, durable: str, path: Path, target: int, proc, timeout_s: float) -> float:
    """Rows committed / time from the consumer's first delivery to the last commit."""
    t_start = None
    deadline = time.monotonic() + timeout_s
    n = 0
    committed = _CommittedRows(path)
    while time.monotonic() < deadline:
        if t_start is None and _delivered(url, durable) > 0:
            t_start = time.monotonic()
        n = committed()
        if n >= target:
            return n / (time.monotonic() - (t_start or time.monotonic() - 1e-6))
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("flow process died during the benchmark")
        time.sleep(0.05)  # ~1 % of a run: finer polling takes CPU from what it measures
    return n / timeout_s


def floor_copy(url: str, lake: Path, target: int) -> float:
    """(a) NATS -> Delta with nothing in between: fetch, decode Arrow, write micro-batches of our flow's size
    (through the same kept-open table handle as its sink). Returns the drain rate."""
    async def run() -> float:
        nc = await nats.connect(url)
        js = nc.jetstream()
        sub = await js.pull_subscribe("biopilot.telemetry.>", durable="bench-floor", stream="TELEMETRY")
        appender = Appender(lake)
        buffer: list[pa.Table] = []
        rows = written = 0
        t_start = None
        while written < target:
            try:
                msgs = await sub.fetch(32, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            t_start = t_start or time.monotonic()
            for m in msgs:
                if m.headers and m.headers.get("BioPilot-Kind") == "watermark":
                    continue
                table = pa.ipc.open_stream(m.data).read_all()
                buffer.append(table)
                rows += table.num_rows
                if rows >= MAX_ROWS:
                    appender.append("ticks", pa.concat_tables(buffer), TICKS)
                    written += rows
                    buffer, rows = [], 0
            if buffer and written + rows >= target:
                appender.append("ticks", pa.concat_tables(buffer), TICKS)
                written += rows
                buffer, rows = [], 0
            if msgs:
                await msgs[-1].ack()
        await nc.close()
        return written / (time.monotonic() - t_start)
    return asyncio.run(run())


def _flow_throughput(url: str, lake: Path, target: int, module: str, durable: str, log: Path,
                     timeout_s: float, detector: str = "fusion") -> tuple[float, float]:
    """(drain rate, RSS in MB)."""
    env = {"BIOPILOT_DETECTOR": detector}
    proc = start_flow(url, str(lake), None, 300.0, durable=durable, log_path=log,
                      extra_env=env) if module == "monitor" else _start_naive(url, lake, durable, log)
    ps = psutil.Process(proc.pid)
    try:
        _wait_for_consumer(url, durable, timeout_s)  # not polling the broker while the flow starts up
        rate = _wait_throughput(url, durable, lake / "ticks", target, proc, timeout_s)
        rss = ps.memory_info().rss / 1e6
        return rate, rss
    finally:
        _stop(proc)


def _start_naive(url: str, lake: Path, durable: str, log: Path):
    import subprocess
    import sys

    env = {**os.environ, "BIOPILOT_NATS_URL": url, "BIOPILOT_LAKE": str(lake), "BIOPILOT_FLOW_DURABLE": durable}
    return subprocess.Popen([sys.executable, "-m", "bytewax.run", "flows.naive:build_flow()", "-s", "1"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except Exception:  # noqa: BLE001
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_consumer(url: str, durable: str, timeout_s: float = 60.0) -> None:
    """Until the flow's durable consumer exists: it is created after the flow has loaded its models, so
    publishing before would time the start-up backlog, not the pipeline."""
    async def poll() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    await js.consumer_info("TELEMETRY", durable)
                    return
                except nats.js.errors.NotFoundError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the flow's consumer {durable} did not appear in {timeout_s:.0f} s") from None
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()
    asyncio.run(poll())
    time.sleep(0.5)  # its first pull is on its way


# ---- live latency ----------------------------------------------------------------------------------------
LIVE_FAULTS = (("temperature_spike", 3.0), ("ph_excursion", 0.5), ("do_limitation", 0.7))


def _live_ticks(reactors: int, per_reactor: int) -> pa.Table:
    """Twin runs (what the flow's golden-batch member expects), each with three faults (a jacket failure, a
    stuck CO2 valve, an O2 supply loss) of 4 h, the fleet's faults spread evenly over the window: each alarm
    the flow raises is timed from the publish of the tick that fired it, at independent times rather than in
    one burst, and ~250 (fusion) to ~525 (z-score) alerts in 60 s make a p99 that is not just the second-worst."""
    scenario = load_scenario("normal").with_overrides(days=per_reactor * 60.0 / 86400.0)
    fleet = Fleet(scenario, reactors, seed=11)
    hours = per_reactor / 60.0
    slots = reactors * len(LIVE_FAULTS)
    for f, (fault, magnitude) in enumerate(LIVE_FAULTS):
        for k in range(reactors):
            fleet.inject_fault(k, fault, hours * (0.1 + 0.8 * (f * reactors + k) / slots), 4.0, magnitude)
    return pa.Table.from_batches([fleet.step(per_reactor).ticks])


async def _live(url: str, lake: Path, ticks: pa.Table, rate: float, rows_per_msg: int, staggered: bool = True,
                ) -> tuple[list[float], list[tuple[str, float]]]:
    """Publish -> commit latencies, and (run, publish -> alert latency) per alert in arrival order. Each round
    sends one message per reactor; `staggered` spreads them evenly over the round, else they go at once."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    published: dict[tuple[str, int], float] = {}
    alerts: list[tuple[str, float]] = []

    async def on_alert(msg) -> None:
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
        # on a thread: a poll takes ~4 ms (up to 20), which on this loop held up the publishing and stamped
        # the alerts that arrived meanwhile late
        committed = _CommittedRows(lake / "ticks")
        while not stop.is_set():
            t = time.monotonic()
            commit_samples.append((t, await asyncio.to_thread(committed)))
            await asyncio.sleep(0.05)

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


def run(ticks: int = 2_000_000, naive_ticks: int = 20_000, live_rate: float = 10_000.0, live_s: float = 60.0,
        soak_s: float = 300.0, keep: str | None = None, detector: str = "fusion", repeats: int = 3,
        ) -> PipelineBench:
    root = Path(keep or tempfile.mkdtemp(prefix="biopilot-bench-pipeline-"))
    server: ManagedServer | None = None
    try:
        data = fleet_ticks(ticks)

        def fresh_broker(name: str) -> str:
            nonlocal server
            if server:
                server.stop()
            server = start_nats(root / f"nats-{name}")
            asyncio.run(ensure_streams(server.url))
            return server.url

        # floor and ours in turns, so that a slow spell of the machine falls on both; medians are reported
        floors, floor_drains, ours_runs, ours_drains = [], [], [], []
        for k in range(repeats):
            url = fresh_broker(f"floor-{k}")
            asyncio.run(_prepublish_arrow(url, data))
            floor_drains.append(floor_copy(url, root / f"floor-{k}", data.num_rows))
            floors.append(steady_rate(root / f"floor-{k}" / "ticks", data.num_rows) or floor_drains[-1])
            url = fresh_broker(f"ours-{k}")
            asyncio.run(_prepublish_arrow(url, data))
            drain, _ = _flow_throughput(url, root / f"ours-{k}", data.num_rows, "monitor", "bench-ours",
                                        root / f"ours-{k}.log", 600, detector)
            ours_drains.append(drain)
            ours_runs.append(steady_rate(root / f"ours-{k}" / "ticks", data.num_rows) or drain)
        floor, floor_drain = float(np.median(floors)), float(np.median(floor_drains))
        ours, ours_drain = float(np.median(ours_runs)), float(np.median(ours_drains))

        url = fresh_broker("naive")
        small = data.slice(0, naive_ticks)
        asyncio.run(_prepublish_json(url, small))
        naive_drain, _ = _flow_throughput(url, root / "naive", small.num_rows, "naive", "bench-naive",
                                          root / "naive.log", 600)
        naive = steady_rate(root / "naive" / "ticks", small.num_rows) or naive_drain

        # live latency: lateness 0 here (in-order source), so latency is the pipeline's, not the lateness knob
        reactors = 40
        live = _live_ticks(reactors, int(live_rate * live_s / reactors))
        measured = {}
        for mode in ("staggered", "burst", "recovery"):  # recovery: staggered, with a recovery store (`biopilot up`)
            url = fresh_broker(f"live-{mode}")
            recovery = root / f"live-{mode}-recovery" if mode == "recovery" else None
            proc = start_flow(url, str(root / f"live-{mode}"), recovery, 0.0, durable="bench-live",
                              log_path=root / f"live-{mode}.log", extra_env={"BIOPILOT_DETECTOR": detector})
            try:
                _wait_for_consumer(url, "bench-live")  # the flow warms its models up before it subscribes
                measured[mode] = asyncio.run(_live(url, root / f"live-{mode}", live, live_rate, 50,
                                                   staggered=mode != "burst"))
            finally:
                _stop(proc)
        commit_lat, alerts = measured["staggered"]
        burst_lat = [lat for _, lat in measured["burst"][1]]
        recovery_lat = [lat for _, lat in measured["recovery"][1]]

        # soak: full rate for soak_s, flow RSS sampled
        url = fresh_broker("soak")
        rss, soak_rate, soak_lost = _soak(url, root, data, soak_s, detector)

        alert_lat = [lat for _, lat in alerts]
        first: dict[str, float] = {}
        for run, lat in alerts:
            first.setdefault(run, lat)
        first_lat = list(first.values())

        def pct(values: list[float], q: float) -> float:
            return float(np.percentile(np.array(values) * 1000, q)) if values else float("nan")

        return PipelineBench(
            data.num_rows, small.num_rows, floor, ours, naive, ours / naive, floor / ours, live_rate, 0.0,
            pct(commit_lat, 50), pct(commit_lat, 99), pct(alert_lat, 50), pct(alert_lat, 99), len(alert_lat),
            pct(first_lat, 50), pct(first_lat, 99), len(first_lat),
            pct(burst_lat, 50), pct(burst_lat, 99), len(burst_lat), pct(recovery_lat, 50), pct(recovery_lat, 99),
            max(rss) if rss else float("nan"), soak_s, rss, soak_rate, detector,
            floor_drain, ours_drain, naive_drain, repeats, floors, ours_runs, rss_rise_mb(rss), soak_lost)
    finally:
        if server:
            server.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _soak(url: str, root: Path, data: pa.Table, soak_s: float, detector: str) -> tuple[list[float], float, int]:
    """The flow at full rate for `soak_s`: its RSS every `SOAK_SAMPLE_S`, its committed ticks/s, and how many
    messages the broker discarded unread (0 unless the flow fell a whole stream behind)."""
    proc = start_flow(url, str(root / "soak"), None, 300.0, durable="bench-soak", log_path=root / "soak.log",
                      extra_env={"BIOPILOT_DETECTOR": detector})
    ps = psutil.Process(proc.pid)
    samples: list[float] = []
    messages, lost = 0, 0

    async def pump() -> None:
        nonlocal messages, lost
        nc = await nats.connect(url)
        js = nc.jetstream()

        # asked after every message, and never given up on: a stalled soak flow shows as a low rate
        backpressure = Backpressure(js, "bench-soak", max_bytes=SOAK_BACKLOG_BYTES, check_every_s=0.0,
                                    stall_s=float("inf"))
        per_reactor = split_by_reactor(data)
        ts = data["ts"].cast(pa.int64())
        span_us = int(pc.max(ts).as_py() - pc.min(ts).as_py()) + 86_400_000_000
        t_end = time.monotonic() + soak_s
        t_sample = 0.0
        generation = 0
        while time.monotonic() < t_end:
            for reactor, rows in per_reactor.items():
                # a new run per generation, later in event time, as the plant's next batch would be
                renamed = rows.set_column(0, "run_id", pa.array([f"soak{generation}-{reactor}"] * rows.num_rows))
                shifted = pc.add(renamed["ts"].cast(pa.int64()), generation * span_us).cast(TICKS.field("ts").type)
                renamed = renamed.set_column(3, "ts", shifted)
                for offset in range(0, renamed.num_rows, ROWS_PER_MESSAGE):
                    payload = encode_arrow(renamed.slice(offset, ROWS_PER_MESSAGE))
                    await js.publish(f"biopilot.telemetry.{reactor}", payload, headers=ARROW_HEADERS, timeout=30)
                    messages += 1
                    await backpressure.published(len(payload))
                    if time.monotonic() - t_sample >= SOAK_SAMPLE_S:
                        samples.append(ps.memory_info().rss / 1e6)
                        t_sample = time.monotonic()
                    if time.monotonic() >= t_end:
                        break
            generation += 1
        # the stream keeps its last 4 GB whether read or not: what it dropped unread was never delivered
        consumer = await js.consumer_info("TELEMETRY", "bench-soak")
        lost = max(0, messages - consumer.delivered.consumer_seq - consumer.num_pending)
        await nc.close()

    try:
        _wait_for_consumer(url, "bench-soak")
        start = time.monotonic()
        asyncio.run(pump())
        committed = _CommittedRows(root / "soak" / "ticks")()
        return samples, committed / (time.monotonic() - start), lost
    finally:
        _stop(proc)


def format_report(b: PipelineBench) -> str:
    return "\n".join([
        f"(a) floor  NATS -> Delta copy          {b.floor_ticks_per_s:12,.0f} ticks/s steady, "
        f"{b.floor_drain_ticks_per_s:,.0f} drained ({b.ticks:,} ticks; median of {b.repeats}: "
        f"{', '.join(f'{x:,.0f}' for x in b.floor_runs_ticks_per_s)})",
        f"(b) ours   flow + {b.detector:<8} + alarms {b.ours_ticks_per_s:12,.0f} ticks/s steady, "
        f"{b.ours_drain_ticks_per_s:,.0f} drained ({b.ticks:,} ticks; median of {b.repeats}: "
        f"{', '.join(f'{x:,.0f}' for x in b.ours_runs_ticks_per_s)})",
        f"(c) naive  JSON/tick, per-event, HST    {b.naive_ticks_per_s:12,.0f} ticks/s steady, "
        f"{b.naive_drain_ticks_per_s:,.0f} drained ({b.naive_ticks:,} ticks)",
        f"ratios     ours/naive {b.ours_vs_naive:.0f}x, floor/ours {b.floor_vs_ours:.2f}x",
        f"live       {b.live_rate_ticks_per_s:,.0f} ticks/s, lateness {b.live_lateness_s:g} s: publish->commit p50 "
        f"{b.p50_publish_to_commit_ms:.0f} ms p99 {b.p99_publish_to_commit_ms:.0f} ms; publish->alert p50 "
        f"{b.p50_publish_to_alert_ms:.1f} ms p99 {b.p99_publish_to_alert_ms:.1f} ms ({b.alerts_measured} alerts); "
        f"each run's first alert p50 {b.p50_publish_to_first_alert_ms:.1f} ms p99 "
        f"{b.p99_publish_to_first_alert_ms:.1f} ms ({b.first_alerts_measured}); in bursts (every reactor at once) "
        f"p50 {b.p50_publish_to_alert_burst_ms:.1f} ms p99 {b.p99_publish_to_alert_burst_ms:.1f} ms "
        f"({b.alerts_measured_burst}); with a recovery store p50 {b.p50_publish_to_alert_recovery_ms:.1f} ms p99 "
        f"{b.p99_publish_to_alert_recovery_ms:.1f} ms",
        f"soak       {b.soak_s:.0f} s at full rate ({b.soak_ticks_per_s:,.0f} ticks/s committed): flow RSS "
        f"{', '.join(f'{x:.0f}' for x in b.soak_rss_mb)} MB (max {b.flow_max_rss_mb:.0f}; last minute's median "
        f"less the second's {b.soak_rss_rise_mb:+.0f} MB; {b.soak_lost_messages} messages lost)",
    ])


def as_json(b: PipelineBench) -> dict:
    return asdict(b)
