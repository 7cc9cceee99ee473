"""`biopilot up`: the whole stack on one machine — broker and cache (embedded unless configured), the
monitoring flow (its own process, with a recovery store), the continuous plant feed, the agent workers and the
dashboard (both on this process's event loop). Ctrl-C stops all of it, children included."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import uvicorn

from agents.llm import make_backend
from agents.workers import Workers
from biopilot.config import Settings
from biopilot.events import SCHEMAS
from biopilot.services import FLOW_DURABLE, start_flow, start_services
from dashboard.app import create_app
from dashboard.auth import create_token, secret_for
from sinks import delta
from sources.plant import PlantFeed
from sources.scenarios import Scenario


def _stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def drain(nats_url: str, durable: str = FLOW_DURABLE, timeout_s: float = 300.0) -> None:
    """Wait until the flow has acknowledged everything published. The flow acks a message one epoch after
    processing it, when its sinks have committed that epoch, so an ack floor at the stream's end means done."""
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            last = (await js.stream_info("TELEMETRY")).state.last_seq
            try:
                if (await js.consumer_info("TELEMETRY", durable)).ack_floor.stream_seq >= last:
                    return
            except NotFoundError:  # the flow is still starting up
                pass
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


class _Dashboard(uvicorn.Server):
    """uvicorn on our loop: Ctrl-C belongs to `biopilot up`, which stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201
        yield


def run_up(settings: Settings, scenario: Scenario, reactors: int, speed: float | None, jitter_share: float,
           lateness_s: float, max_batches: int | None = None, out=sys.stdout) -> int:
    lake = settings.lake
    state = Path(lake) / ".services" if "://" not in lake else Path("/tmp/biopilot-state")
    state.mkdir(parents=True, exist_ok=True)
    services = start_services(lake, settings.nats_url, settings.redis_url)
    flow = None
    try:
        flow = start_flow(services.nats_url, lake, state / "recovery", lateness_s, log_path=state / "flow.log")
        print(f"broker     {services.nats_url}{' (embedded)' if settings.nats_url is None else ''}", file=out)
        print(f"cache      {services.redis_url}{' (embedded)' if settings.redis_url is None else ''}", file=out)
        print(f"flow       pid {flow.pid}, log {state / 'flow.log'}, recovery {state / 'recovery'}", file=out)
        print(f"lake       {lake}", file=out)
        print(f"plant      {reactors} reactor(s), scenario {scenario.name}, "
              f"speed {'max' if speed is None else f'{speed:g}x'}", file=out)
        print("Ctrl-C stops everything.", file=out, flush=True)

        settings = replace(settings, nats_url=services.nats_url, redis_url=services.redis_url)

        def record(name: str, rows) -> None:
            delta.append(lake, name, rows, SCHEMAS[name])

        feed = PlantFeed(services.nats_url, scenario, reactors, speed, jitter_share=jitter_share,
                         lateness_s=lateness_s, max_batches=max_batches, record=record)
        loop = asyncio.new_event_loop()
        workers = Workers(services.nats_url, services.redis_url, lake, make_backend(settings))
        loop.run_until_complete(workers.start())
        server = _Dashboard(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                           log_level="warning"))
        web = loop.create_task(server.serve())
        print(f"agents     monitoring + troubleshooting workers (llm {settings.llm})", file=out)
        print(f"dashboard  http://{settings.host}:{settings.port}/login?token="
              f"{create_token(secret_for(settings), 'admin', 'admin')}", file=out, flush=True)
        task = loop.create_task(feed.run())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, feed.interrupt)
        try:
            stats = loop.run_until_complete(task)
        finally:
            server.should_exit = True
            loop.run_until_complete(asyncio.wait([web], timeout=10))
            loop.run_until_complete(workers.stop())
            loop.close()
        held = feed.backpressure.held_text()
        print(f"plant stopped: {stats.batches} batch(es), {stats.ticks:,} ticks, {stats.assays} assays published"
              + (f", {held}" if held else ""), file=out, flush=True)
        if not feed.interrupted:
            asyncio.run(drain(services.nats_url))
            print("flow drained", file=out)
    finally:
        if flow is not None:
            _stop_process_group(flow)
        services.stop()
    return 0
