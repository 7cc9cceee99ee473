"""The throughput phase of `biopilot bench pipeline`: ticks/s through (a) the floor, a bare NATS -> Delta copy
with no engine and no detectors; (b) our flow (`flows.monitor` with its detector, alarms and the idempotent
Delta sink); (c) the naive baseline (`flows.naive`: one JSON message per tick, per-event operators, River
HalfSpaceTrees per event).

The data is published to JetStream before each consumer starts, so the publisher is not what is measured. The
headline rate is the steady state, from each table's own commit log (`steady_rate`); the drain rate (all rows
over the time from the first delivery to the last commit) is reported beside it. The floor and our flow run
`repeats` times, in turns, so that a slow spell of the machine falls on both; the medians are reported.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import nats
import numpy as np
import pyarrow as pa
from deltalake import DeltaTable
from nats.js.errors import NotFoundError

from biopilot.bench.pipeline_probes import ROWS_PER_MESSAGE, CommittedRows, wait_for_consumer
from core.codec import encode_arrow
from core.config import load_settings
from core.events import TICKS
from core.processes import stop_process_group
from flows.launch import start_flow
from sinks.delta import Appender
from sources.backpressure import flow_consumers
from sources.publish import ARROW_HEADERS, publish_watermark, split_by_reactor

FLOW_TIMEOUT_S = 600.0  # a flow that has not committed every row by then fails the phase


@dataclass
class PathRate:
    """One path's ticks/s: steady state (see `steady_rate`) and drained, the medians over its runs."""

    ticks_per_s: float
    drain_ticks_per_s: float
    runs_ticks_per_s: list[float]  # each run's steady rate

    @classmethod
    def median_of(cls, steady: list[float], drained: list[float]) -> PathRate:
        return cls(ticks_per_s=float(np.median(steady)), drain_ticks_per_s=float(np.median(drained)),
                   runs_ticks_per_s=steady)


@dataclass
class Throughput:
    ticks: int  # through the floor and our flow
    naive_ticks: int  # through the naive flow (it is that much slower)
    repeats: int  # runs of the floor and of our flow, in turns
    floor: PathRate
    ours: PathRate
    naive: PathRate
    ours_vs_naive: float
    floor_vs_ours: float


def steady_rate(path: Path, target: int, share: float = 0.9) -> float | None:
    """Ticks/s in steady state, from the table's own commit log: the rows committed after the first commit up
    to the one that brings the total to `share` of `target`, over the time between those two commits (None
    with too few commits). What the run's start (the first micro-batch filling) and its end (the last, partial
    micro-batch waiting for its age limit once the input stops) add is latency, measured apart; counted in, it
    made the drain rate of the same code swing widely between runs."""
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
        try:  # the flow's consumers: one per partition of the stream (none yet: 0)
            return sum(c.delivered.stream_seq for c in await flow_consumers(nc.jetstream(), durable))
        except NotFoundError:  # the stream is not made yet
            return 0
        finally:
            await nc.close()
    return asyncio.run(ask())


def _wait_throughput(url: str, durable: str, path: Path, target: int, proc: Popen, timeout_s: float) -> float:
    """Rows committed / time from the consumer's first delivery to the last commit."""
    t_start = None
    deadline = time.monotonic() + timeout_s
    n = 0
    committed = CommittedRows(path)
    while time.monotonic() < deadline:
        if t_start is None and _delivered(url, durable) > 0:
            t_start = time.monotonic()
        n = committed()
        if n >= target:
            return n / (time.monotonic() - (t_start or time.monotonic() - 1e-6))
        if proc.poll() is not None:
            raise RuntimeError("flow process died during the benchmark")
        time.sleep(0.05)  # finer polling takes CPU from what it measures
    return n / timeout_s


def floor_copy(url: str, lake: Path, target: int) -> float:
    """(a) NATS -> Delta with nothing in between: fetch, decode Arrow, write micro-batches of our flow's size
    (through the same kept-open table handle as its sink). Returns the drain rate."""
    batch_rows = load_settings().flush_rows

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
                if rows >= batch_rows:
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


def _flow_throughput(url: str, lake: Path, target: int, flow: str, durable: str, log: Path,
                     detector: str = "fusion") -> float:
    """The drain rate of `flow` through `target` rows already on the broker."""
    proc = start_flow(url, str(lake), None, 300.0, durable=durable, log_path=log,
                      extra_env={"BIOPILOT_DETECTOR": detector}, flow=flow)
    try:
        wait_for_consumer(url, durable, FLOW_TIMEOUT_S)  # not polling the broker while the flow starts up
        return _wait_throughput(url, durable, lake / "ticks", target, proc, FLOW_TIMEOUT_S)
    finally:
        stop_process_group(proc)


def measure_throughput(broker: Callable[[str], str], root: Path, data: pa.Table, naive_ticks: int, repeats: int,
                       detector: str) -> Throughput:
    """`data` through the floor and our flow `repeats` times in turns, its first `naive_ticks` through the naive
    flow; each run on a fresh broker from `broker(name)`, its lake and log under `root`."""
    floors, floor_drains, ours, ours_drains = [], [], [], []
    for k in range(repeats):
        url = broker(f"floor-{k}")
        asyncio.run(_prepublish_arrow(url, data))
        floor_drains.append(floor_copy(url, root / f"floor-{k}", data.num_rows))
        floors.append(steady_rate(root / f"floor-{k}" / "ticks", data.num_rows) or floor_drains[-1])
        url = broker(f"ours-{k}")
        asyncio.run(_prepublish_arrow(url, data))
        ours_drains.append(_flow_throughput(url, root / f"ours-{k}", data.num_rows, "monitor", "bench-ours",
                                            root / f"ours-{k}.log", detector))
        ours.append(steady_rate(root / f"ours-{k}" / "ticks", data.num_rows) or ours_drains[-1])

    url = broker("naive")
    small = data.slice(0, naive_ticks)
    asyncio.run(_prepublish_json(url, small))
    naive_drain = _flow_throughput(url, root / "naive", small.num_rows, "naive", "bench-naive", root / "naive.log")
    naive = steady_rate(root / "naive" / "ticks", small.num_rows) or naive_drain

    floor_rate, ours_rate = PathRate.median_of(floors, floor_drains), PathRate.median_of(ours, ours_drains)
    return Throughput(ticks=data.num_rows, naive_ticks=small.num_rows, repeats=repeats, floor=floor_rate,
                      ours=ours_rate, naive=PathRate.median_of([naive], [naive_drain]),
                      ours_vs_naive=ours_rate.ticks_per_s / naive,
                      floor_vs_ours=floor_rate.ticks_per_s / ours_rate.ticks_per_s)
