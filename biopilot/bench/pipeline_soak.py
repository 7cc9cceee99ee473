"""The soak phase of `biopilot bench pipeline`: the flow at full rate for a while, its RSS sampled, and its rise
(`rss_rise_mb`). The publisher is held at most `SOAK_BACKLOG_BYTES` ahead of the flow by
`sources.backpressure`, so the broker never discards what the flow has not read (`lost_messages` counts what it
did)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import nats
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

from biopilot.bench.pipeline_probes import ROWS_PER_MESSAGE, CommittedRows, wait_for_consumer
from core.codec import encode_arrow
from core.events import TICKS
from core.processes import stop_process_group
from flows.launch import start_flow
from sources.backpressure import Backpressure, flow_consumers
from sources.publish import ARROW_HEADERS, split_by_reactor

SOAK_SAMPLE_S = 5.0
# the soak's publisher waits while this much is published and not yet delivered: enough to keep the flow busy,
# far below the stream's size limit. Unchecked, it ran ahead of the flow until the stream was full and the
# broker discarded the oldest messages before the flow had read them
SOAK_BACKLOG_BYTES = 300_000_000


@dataclass
class Soak:
    duration_s: float
    ticks_per_s: float  # committed
    rss_mb: list[float]  # the flow's, every `SOAK_SAMPLE_S`
    max_rss_mb: float
    rss_rise_mb: float  # the last minute's median less the second minute's (see `rss_rise_mb`)
    lost_messages: int  # discarded by the broker (its size limit) before the flow read them: 0, or it was lossy


def rss_rise_mb(samples: list[float], sample_s: float = SOAK_SAMPLE_S, window_s: float = 60.0) -> float:
    """How much the flow's memory rose over a soak: the median of the last `window_s` of RSS samples less the
    median of the window after the first (the first is start-up: models loading, arenas and caches filling).
    Medians, because single samples swing with the micro-batch in hand. NaN for fewer than three windows.

    >>> rss_rise_mb([500.0] * 12 + [900.0, 950.0] * 6 + [900.0] * 12 + [960.0, 990.0] * 6)
    50.0
    >>> rss_rise_mb([900.0] * 20)
    nan
    """
    k = int(window_s // sample_s)
    if len(samples) < 3 * k:
        return float("nan")
    return float(np.median(samples[-k:]) - np.median(samples[k:2 * k]))


def measure_soak(url: str, root: Path, data: pa.Table, duration_s: float, detector: str) -> Soak:
    """The flow at full rate for `duration_s`, fed `data` again and again as new runs, on the broker at `url`."""
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
        t_end = time.monotonic() + duration_s
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
        # the stream keeps its newest messages up to its size limit, read or not: what it dropped was never delivered
        consumers = await flow_consumers(js, "bench-soak")  # one per partition of the stream
        lost = max(0, messages - sum(c.delivered.consumer_seq + c.num_pending for c in consumers))
        await nc.close()

    try:
        wait_for_consumer(url, "bench-soak")
        start = time.monotonic()
        asyncio.run(pump())
        committed = CommittedRows(root / "soak" / "ticks")()
        rate = committed / (time.monotonic() - start)
    finally:
        stop_process_group(proc)
    return Soak(duration_s=duration_s, ticks_per_s=rate, rss_mb=samples,
                max_rss_mb=max(samples) if samples else float("nan"), rss_rise_mb=rss_rise_mb(samples),
                lost_messages=lost)
