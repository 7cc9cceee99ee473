"""`biopilot up`: the whole stack on one machine — broker and cache (embedded unless configured, with credentials
made for this start), the monitoring flow, the continuous plant feed and the agent workers (each its own process,
restarted by `biopilot.supervisor` when it dies) and the dashboard (on this process's event loop, serving
`/healthz` with the children's state). Ctrl-C stops all of it, children included.

One plant kind a stack (`Settings.plant`): the feed it runs, and `BIOPILOT_PLANT` in every child's environment so
that the flow, the agents and the dashboard serve that kind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import uvicorn

from biopilot.plant_process import Progress, prepare
from biopilot.supervisor import Child, Supervisor
from core.config import Settings
from core.nats_cluster import start_nats_cluster
from core.object_store import start_object_store
from core.plants import PLANTS
from core.services import (
    FLOW_DURABLE,
    PROCESSES_KEY,
    Services,
    connect_nats,
    services_dir,
    start_nats,
    start_services,
    without_credentials,
    write_private,
)
from dashboard.app import create_app
from dashboard.auth import issue_login_code
from flows.launch import cluster_commands, set_aside_stale_store
from sources.patient.scenarios import PatientScenario
from sources.scenarios import Scenario


async def drain(nats_url: str, durable: str = FLOW_DURABLE, timeout_s: float = 300.0,
                wal_dir: Path | None = None) -> None:
    """Wait until the flow has acknowledged everything published (every partition's consumer: nothing pending,
    nothing unacknowledged) and, with a recovery store, its sink has committed what its write-ahead logs
    (`wal_dir`) held: with a store the rows reach Delta an epoch after the acks."""
    from sources.backpressure import flow_backlog

    nc = await connect_nats(nats_url)
    try:
        js = nc.jetstream()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if await flow_backlog(js, durable) == (0, 0):  # None: the flow is still starting up
                break
            await asyncio.sleep(0.2)
        while wal_dir is not None and loop.time() < deadline and any(wal_dir.rglob("0*")):
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


class _Dashboard(uvicorn.Server):
    """uvicorn on our loop: Ctrl-C belongs to `biopilot up`, which stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201
        yield


def _flow_children(services: Services, lake: str, state: Path, lateness_s: float, plant: str,
                   processes: int) -> list[Child]:
    """The flow: one process, or a Bytewax cluster of `processes` (`flow-0`, ...) restarted as a whole."""
    commands = cluster_commands(services.nats_url_for("flow"), lake, processes, state / "recovery", lateness_s,
                                plant=plant)
    children = []
    for process_id, (cmd, env) in enumerate(commands):
        name = "flow" if processes == 1 else f"flow-{process_id}"
        children.append(Child(name, cmd, env, state / f"{name}.log", group="flow" if processes > 1 else None))
    return children


def _children(services: Services, lake: str, state: Path, units: int, speed: float | None, jitter_share: float,
              lateness_s: float, plant: str = "bioreactor", flow_processes: int = 1) -> list[Child]:
    """The flow (`flow_processes` of it), the plant feed and the agent workers, each connecting as its own
    broker user; all of them serving the plant kind `plant`."""
    def env(component: str) -> dict[str, str]:
        return {**os.environ, "BIOPILOT_NATS_URL": services.nats_url_for(component),
                "BIOPILOT_REDIS_URL": services.redis_url, "BIOPILOT_LAKE": lake, "BIOPILOT_PLANT": plant}

    plant_cmd = [sys.executable, "-m", "biopilot.plant_process", "--progress", str(state / "plant.json"),
                 "--scenario-json", str(state / "scenario.json"), "--lake", lake, "--plant", plant,
                 "--units", str(units),
                 "--speed", "max" if speed is None else f"{speed:g}", "--jitter", f"{jitter_share:g}",
                 "--lateness-s", f"{lateness_s:g}"]
    return [*_flow_children(services, lake, state, lateness_s, plant, flow_processes),
            Child("plant", plant_cmd, env("plant"), state / "plant.log", finishes=True),
            Child("agents", [sys.executable, "-m", "biopilot.cli", "agents", "--lake", lake], env("agents"),
                  state / "agents.log")]


def run_up(settings: Settings, scenario: Scenario | PatientScenario, units: int, speed: float | None,
           jitter_share: float, lateness_s: float, max_batches: int | None = None, out=sys.stdout,
           nats_nodes: int = 1, object_store: bool = False, flow_processes: int = 1) -> int:
    """The stack of the plant kind `settings.plant` running `scenario` on `units` reactors or patients;
    `nats_nodes` > 1: the embedded broker is a cluster of that many nodes; `object_store`: the lake goes on an
    embedded S3 store (its data and the stack's state under the local lake folder `settings.lake`);
    `flow_processes`: the flow as a Bytewax cluster of that many processes (docs/SCALE-OUT.md)."""
    lake = given_lake = settings.lake
    state = services_dir(lake)
    state.mkdir(parents=True, exist_ok=True)
    store = start_object_store(state / "s3") if object_store else None
    if store is not None:  # the children and this process's dashboard read the store's settings from here
        os.environ.update(store.settings_env())
        lake = store.lake(Path(settings.lake).resolve().name)
        settings = replace(settings, lake=lake)
    try:
        services = start_services(given_lake, settings.nats_url, settings.redis_url, credentials=True,
                                  start_broker=partial(start_nats_cluster, nodes=nats_nodes) if nats_nodes > 1
                                  else start_nats)
    except BaseException:
        if store is not None:
            store.stop()
        raise
    try:
        embedded = " (embedded; a user per component" if services.component_urls else ""
        if nats_nodes > 1 and services.component_urls:
            embedded = f" (embedded, a cluster of {nats_nodes} nodes, streams with 3 replicas; a user per component"
        if services.component_urls:  # for tools joining this stack (e.g. `biopilot replay` as the plant)
            write_private(state / "credentials.json", json.dumps(
                {"nats": services.component_urls, "redis": services.redis_url}, indent=1))
            embedded += f", credentials in {state / 'credentials.json'}, mode 0600)"
        print(f"broker     {without_credentials(services.nats_url)}{embedded}", file=out)
        print(f"cache      {without_credentials(services.redis_url)}"
              f"{' (embedded, with a password)' if settings.redis_url is None else ''}", file=out)
        flow_logs = f"log {state / 'flow.log'}" if flow_processes == 1 else \
            f"{flow_processes} processes (a Bytewax cluster), logs {state}/flow-*.log"
        print(f"flow       {flow_logs}, recovery {state / 'recovery'}", file=out)
        if aside := set_aside_stale_store(state / "recovery"):
            print(f"           the recovery store was written by an older version: set aside as {aside}", file=out)
        print(f"lake       {lake}" + (f" (embedded object store {store.endpoint}, data {store.data_dir})"
                                         if store is not None else ""), file=out)
        print(f"plant      {units} {PLANTS[settings.plant].unit}(s), scenario {scenario.name}, "
              f"speed {'max' if speed is None else f'{speed:g}x'}, log {state / 'plant.log'}", file=out)
        print(f"agents     monitoring + troubleshooting workers (llm {settings.llm}), log {state / 'agents.log'}",
              file=out)
        print("Ctrl-C stops everything.", file=out, flush=True)
        write_private(state / "scenario.json", scenario.model_dump_json())
        prepare(state / "plant.json", max_batches, datetime.now(UTC).replace(microsecond=0))
        children = _children(services, lake, state, units, speed, jitter_share, lateness_s, settings.plant,
                             flow_processes)
        settings = replace(settings, nats_url=services.nats_url_for("dashboard"), redis_url=services.redis_url)
        return asyncio.run(_serve(settings, services, Supervisor(children, services.redis_url, out),
                                  state / "plant.json", out))
    finally:
        services.stop()
        if store is not None:
            store.stop()


async def _serve(settings: Settings, services: Services, supervisor: Supervisor, progress: Path, out) -> int:
    """Supervise the children and serve the dashboard until the plant is done (then let the flow drain) or a
    Ctrl-C comes."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    server = _Dashboard(uvicorn.Config(create_app(settings), host=settings.host, port=settings.port,
                                       log_level="warning"))
    supervisor.start()
    watching = asyncio.create_task(supervisor.run())
    web = asyncio.create_task(server.serve())
    print(f"supervisor flow, plant and agents restart when they die; their state: Redis {PROCESSES_KEY}, /healthz",
          file=out)
    try:
        print(f"dashboard  http://{settings.host}:{settings.port}/login?code={issue_login_code(settings.redis_url)}"
              "  (one-time login link, 10 min)", file=out, flush=True)
        ending = [asyncio.create_task(supervisor.finished.wait()), asyncio.create_task(interrupted.wait())]
        await asyncio.wait(ending, return_when=asyncio.FIRST_COMPLETED)
        for task in ending:
            task.cancel()
        done = Progress.load(progress)
        print(f"plant stopped: {done.published(settings.plant)}", file=out, flush=True)
        if not interrupted.is_set():  # the flow, still supervised, takes in what the plant published
            draining = asyncio.create_task(drain(services.nats_url,
                                                 wal_dir=progress.parent / "recovery" / "lake-wal"))
            await asyncio.wait([draining, asyncio.create_task(interrupted.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
            if draining.done():
                draining.result()
                print("flow drained", file=out, flush=True)
            else:
                draining.cancel()
    finally:
        server.should_exit = True
        await asyncio.wait([web], timeout=10)
        await supervisor.stop()
        await watching
    return 0
