"""`biopilot bench sse`: the dashboard under 200 concurrent SSE clients, 20 of them deliberately slow.

The dashboard runs as its own process (`biopilot dashboard`) on an embedded broker and cache. A load process
publishes live telemetry (`reactors` x `ticks_per_s` Arrow batches, twin data) and alerts (`alerts_per_s`,
each stamped with its publish time). Every client holds a telemetry and an alert stream; the slow ones read
one event per `slow_read_s`. Measured: events delivered per second, publish -> client latency of alerts on the
fast clients, the server's RSS over time, client errors. The baseline beside it: the same alerts delivered
by bare NATS subscriptions (one per fast client), the floor any SSE fan-out sits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
import numpy as np
import psutil
import pyarrow as pa

from biopilot.bench.results import as_json
from core.services import free_port, start_services, wait_port
from dashboard.auth import create_token
from sources.fleet import Fleet
from sources.publish import publish_ticks
from sources.scenarios import load_scenario

__all__ = ["SseBench", "as_json", "format_report", "run"]

SECRET = "bench-sse-secret-0123456789abcdef-xyz"


@dataclass
class SseBench:
    clients: int
    slow_clients: int
    duration_s: float
    events_delivered: int = 0
    events_per_s: float = 0.0
    alerts_published: int = 0
    p50_alert_ms: float | None = None
    p99_alert_ms: float | None = None
    slow_p50_alert_ms: float | None = None
    nats_p99_alert_ms: float | None = None
    rss_mb: list[float] = field(default_factory=list)
    max_rss_mb: float = 0.0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


async def _client(base: str, token: str, slow_read_s: float | None, stop: asyncio.Event, lat: list[float],
                  counts: list[int], errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=4)

    async def read(path: str, alerts: bool) -> None:
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=None, limits=limits) as c, \
                c.stream("GET", path) as r:
            if r.status_code != 200:
                errors.append(f"{path}: HTTP {r.status_code}")
                return
            async for line in r.aiter_lines():
                if stop.is_set():
                    return
                if not line.startswith("data:"):
                    continue
                counts[0] += 1
                if alerts:
                    event = json.loads(line[5:])
                    if "sent_at" in event:
                        lat.append((time.time() - event["sent_at"]) * 1e3)
                if slow_read_s:
                    await asyncio.sleep(slow_read_s)

    try:
        await asyncio.gather(read("/api/stream/telemetry", False), read("/api/stream/alerts", True))
    except (httpx.HTTPError, asyncio.CancelledError) as err:
        if not stop.is_set() and not isinstance(err, asyncio.CancelledError):
            errors.append(f"{type(err).__name__}: {err}")


async def _load(nats_url: str, reactors: int, ticks_per_s: float, alerts_per_s: float, stop: asyncio.Event,
                published: list[int], nats_lat: list[float]) -> None:
    fleet = Fleet(load_scenario("normal"), reactors, seed=5)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    baseline = await nats.connect(nats_url)

    async def on_alert(msg) -> None:  # noqa: ANN001
        nats_lat.append((time.time() - json.loads(msg.data)["sent_at"]) * 1e3)

    await baseline.subscribe("biopilot.alerts.>", cb=on_alert)
    period = 0.1
    per_step = max(1, round(ticks_per_s * period))
    next_alert, k = time.monotonic(), 0
    while not stop.is_set():
        t = time.monotonic()
        batch = pa.Table.from_batches([fleet.step(per_step).ticks])
        for r in range(reactors):
            rid = fleet.reactor_ids[r]
            await publish_ticks(js, rid, batch.filter(pa.compute.equal(batch["reactor_id"], rid)))
        while time.monotonic() >= next_alert:
            alert = {"alert_id": f"bench-{k}", "run_id": "bench", "reactor_id": fleet.reactor_ids[k % reactors],
                     "ts": "2026-01-05T00:00:00+00:00", "severity": "warning", "detector": "fusion", "score": 1.2,
                     "signals": [], "sent_at": time.time()}
            await js.publish(f"biopilot.alerts.{alert['reactor_id']}", json.dumps(alert).encode())
            published[0] += 1
            k += 1
            next_alert += 1.0 / alerts_per_s
        await asyncio.sleep(max(0.0, period - (time.monotonic() - t)))
    await baseline.close()
    await nc.close()


def run(clients: int = 200, slow: int = 20, duration_s: float = 60.0, reactors: int = 4, ticks_per_s: float = 10.0,
        alerts_per_s: float = 2.0, slow_read_s: float = 0.5, say=lambda _m: None) -> SseBench:  # noqa: ANN001
    res = SseBench(clients, slow, duration_s)
    with tempfile.TemporaryDirectory() as tmp, start_services(str(Path(tmp) / "lake")) as services:
        port = free_port()
        env = {**os.environ, "BIOPILOT_NATS_URL": services.nats_url, "BIOPILOT_REDIS_URL": services.redis_url,
               "BIOPILOT_LAKE": str(Path(tmp) / "lake"), "BIOPILOT_SECRET": SECRET, "BIOPILOT_PORT": str(port)}
        server = subprocess.Popen([sys.executable, "-m", "biopilot.cli", "dashboard"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(port, timeout_s=60)
            say(f"dashboard pid {server.pid} on :{port}; {clients} clients ({slow} slow) for {duration_s:g} s")
            asyncio.run(_drive(res, f"http://127.0.0.1:{port}", services.nats_url, server.pid, reactors, ticks_per_s,
                               alerts_per_s, slow_read_s))
        finally:
            server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(15)
    return res


async def _drive(res: SseBench, base: str, nats_url: str, pid: int, reactors: int, ticks_per_s: float,
                 alerts_per_s: float, slow_read_s: float) -> None:
    stop = asyncio.Event()
    fast_lat: list[float] = []
    slow_lat: list[float] = []
    nats_lat: list[float] = []
    counts = [0]
    errors: list[str] = []
    published = [0]
    # a token per client, as 200 screens would have: streams are capped per token
    tasks = [asyncio.create_task(_client(base, create_token(SECRET, "viewer", f"bench-{i}"),
                                         slow_read_s if i < res.slow_clients else None, stop,
                                         slow_lat if i < res.slow_clients else fast_lat, counts, errors))
             for i in range(res.clients)]
    await asyncio.sleep(3.0)  # all connected before the load starts
    load = asyncio.create_task(_load(nats_url, reactors, ticks_per_s, alerts_per_s, stop, published, nats_lat))
    proc = psutil.Process(pid)
    t0, start_count = time.monotonic(), counts[0]
    while time.monotonic() - t0 < res.duration_s:
        await asyncio.sleep(5.0)
        res.rss_mb.append(round(proc.memory_info().rss / 2**20, 1))
    res.events_delivered = counts[0] - start_count
    res.events_per_s = res.events_delivered / (time.monotonic() - t0)
    stop.set()
    await load
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    res.alerts_published = published[0]
    if fast_lat:
        res.p50_alert_ms, res.p99_alert_ms = (float(np.percentile(fast_lat, q)) for q in (50, 99))
    if slow_lat:
        res.slow_p50_alert_ms = float(np.percentile(slow_lat, 50))
    if nats_lat:
        res.nats_p99_alert_ms = float(np.percentile(nats_lat, 99))
    res.max_rss_mb = max(res.rss_mb, default=0.0)
    res.errors, res.error_samples = len(errors), errors[:5]


def format_report(b: SseBench) -> str:
    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v:.1f} ms"
    return "\n".join([
        f"clients                 {b.clients} ({b.slow_clients} slow), {b.duration_s:g} s",
        f"events delivered        {b.events_delivered:,} ({b.events_per_s:,.0f}/s)",
        f"alerts published        {b.alerts_published}",
        f"alert latency (fast)    p50 {ms(b.p50_alert_ms)}, p99 {ms(b.p99_alert_ms)}   "
        f"(bare NATS p99 {ms(b.nats_p99_alert_ms)}; slow clients p50 {ms(b.slow_p50_alert_ms)})",
        f"server RSS (MB)         {b.rss_mb}  max {b.max_rss_mb:.0f}",
        f"errors                  {b.errors} {b.error_samples if b.errors else ''}",
    ])
