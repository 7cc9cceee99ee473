"""`biopilot up` supervises its children: kill -9 the flow, the plant and the agents in turn; each comes back by
itself, `/healthz` says which is down meanwhile, and every tick the plant published lands in Delta exactly once.
Also: the embedded broker's users may do only what their component needs."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import nats
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from nats.errors import Error as NatsError

from biopilot.plant_process import last_event_us
from biopilot.supervisor import Child, Supervisor
from core.codec import decode_rows
from core.services import NATS_PERMISSIONS, connect_nats, ensure_streams, free_port, new_password, start_nats
from sinks import delta
from sources.publish import publish_watermark
from sources.telemetry import KIND_HEADER
from tests.stream_helpers import make_ticks, publish

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]
pytestmark = pytest.mark.integration  # `biopilot up` in a subprocess, nats-servers of its own


def _health(port: int) -> dict:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return {}


def _wait(what: str, check, proc: subprocess.Popen, timeout_s: float = 60.0, every_s: float = 0.05):  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"biopilot up exited ({proc.returncode}) waiting for {what}:\n{proc.stdout.read()}")
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_and_see_it_come_back(name: str, port: int, proc: subprocess.Popen) -> None:
    before = _wait(f"{name} running", lambda: (_health(port).get("processes", {}).get(name) or {}).get("state")
                   == "running" and _health(port)["processes"][name], proc)
    os.kill(before["pid"], signal.SIGKILL)
    down = _wait(f"/healthz to report {name} down", lambda: (h := _health(port)) and f"{name} down" in h["problems"]
                 and h, proc)
    assert down["status"] == "degraded"
    assert down["processes"][name]["last_exit"] == -signal.SIGKILL
    back = _wait(f"{name} back", lambda: (p := _health(port).get("processes", {}).get(name)) and p["state"]
                 == "running" and p, proc, every_s=0.2)
    assert back["pid"] != before["pid"] and back["restarts"] == before["restarts"] + 1


async def _published_ticks(url: str) -> Counter:
    """(run_id, seq) of every tick in the TELEMETRY stream: what the plant processes published, all of them."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info("TELEMETRY")).state.last_seq
        keys: Counter = Counter()
        for seq in range(1, last + 1):
            msg = await js.get_msg("TELEMETRY", seq)
            if msg.subject.startswith("biopilot.telemetry.") and (msg.headers or {}).get(KIND_HEADER) != "watermark":
                rows = decode_rows(msg.data)
                keys.update(zip(rows["run_id"].to_pylist(), rows["seq"].to_pylist(), strict=True))
        return keys
    finally:
        await nc.close()


def test_killed_flow_plant_and_agents_come_back_and_every_published_tick_lands_once(tmp_path: Path):
    lake = tmp_path / "lake"
    scenario = tmp_path / "short.toml"
    scenario.write_text('description = "short"\ndays = 0.5\n')
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOPILOT_")} | {"BIOPILOT_DETECTOR": "zscore"}
    proc = subprocess.Popen([*BIOPILOT, "up", "--reactors", "2", "--speed", "3000", "--scenario", str(scenario),
                             "--lake", str(lake), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait("ticks in Delta", lambda: delta.read(lake, "ticks", columns=["seq"]) is not None, proc, every_s=0.2)
        for name in ("flow", "plant", "agents"):
            _kill_and_see_it_come_back(name, port, proc)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        for name in ("flow", "plant", "agents"):
            assert f'biopilot_process_restarts{{process="{name}"}} 1.0' in metrics
        plant = _health(port)["processes"]["plant"]["pid"]
        os.kill(plant, signal.SIGTERM)  # the plant stops on purpose: `up` lets the flow drain, then ends
        proc.wait(300)  # seconds on an idle machine; a loaded CI machine took over 120
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    assert proc.returncode == 0, out
    assert "flow drained" in out
    for name in ("flow", "plant", "agents"):
        assert f"supervisor {name} (pid" in out and "killed by SIGKILL; restarting in 1 s" in out
        assert f"supervisor {name} restarted: pid" in out

    server = start_nats(lake / ".services" / "nats")  # the broker's store, as `up` left it
    try:
        published = asyncio.run(_published_ticks(server.url))
    finally:
        server.stop()
    landed = Counter(zip(*(delta.read(lake, "ticks", columns=["run_id", "seq"])[c].to_pylist()
                           for c in ("run_id", "seq")), strict=True))
    assert max(landed.values()) == 1  # no tick twice
    assert landed == published  # and every published one
    runs = delta.read(lake, "runs").to_pylist()
    assert Counter(r["run_id"] for r in runs) == Counter(set(run for run, _ in published))  # one row per run
    # the runs the plant was killed in kept what they had published, and say they never ended (none if the kill
    # came before the batch's first tick)
    plant_log = (lake / ".services" / "plant.log").read_text()
    assert "died in batch" in plant_log
    assert any(r["ended_ts"] is None for r in runs) or "plant: 0 of the batch's" in plant_log


@pytest.mark.parametrize("component", sorted(set(NATS_PERMISSIONS) - {"dashboard"}))
def test_only_the_dashboards_broker_user_may_publish_control(tmp_path: Path, component: str):
    users = {name: new_password() for name in NATS_PERMISSIONS}
    server = start_nats(tmp_path / "nats", users=users)

    async def check() -> tuple[list[str], list[bytes]]:
        await ensure_streams(server.url_for("admin"))
        errors: list[str] = []

        async def on_error(err: Exception) -> None:
            errors.append(str(err))

        dashboard = await nats.connect(server.url_for("dashboard"))
        got: list[bytes] = []

        async def on_control(msg) -> None:  # noqa: ANN001
            got.append(msg.data)

        await dashboard.subscribe("biopilot.control.>", cb=on_control)
        await dashboard.flush()
        other = await nats.connect(server.url_for(component), error_cb=on_error)
        await other.publish("biopilot.control.r1", b'{"type": "stop"}')
        await other.flush()
        await dashboard.publish("biopilot.control.r1", b'{"type": "feed", "volume_ml": 1}')
        await dashboard.flush()
        await asyncio.sleep(0.3)
        await other.close()
        await dashboard.close()
        return errors, got

    try:
        errors, got = asyncio.run(check())
        assert any('permissions violation for publish to "biopilot.control.r1"' in e for e in errors), errors
        assert got == [b'{"type": "feed", "volume_ml": 1}']  # the dashboard's arrives, the other's never
        with pytest.raises(NatsError):  # and no one gets in without a password
            asyncio.run(nats.connect(f"nats://127.0.0.1:{server.port}", allow_reconnect=False,
                                     max_reconnect_attempts=0))
    finally:
        server.stop()


def test_each_component_can_do_its_own_work_on_jetstream_with_its_user(tmp_path: Path):
    """The permissions are not so tight that the stack breaks: the plant publishes telemetry (a JetStream
    publish, answered on _INBOX), the flow pulls it and acks, publishes alerts and dead letters; the agents
    publish incidents and chunks; nobody but `admin` and the dashboard deletes a stream."""
    users = {name: new_password() for name in NATS_PERMISSIONS}
    server = start_nats(tmp_path / "nats", users=users)

    async def work() -> None:
        await ensure_streams(server.url_for("admin"))
        plant = await nats.connect(server.url_for("plant"))
        await plant.jetstream().publish("biopilot.telemetry.r1", b"ticks")
        flow = await nats.connect(server.url_for("flow"))
        pull = await flow.jetstream().pull_subscribe("biopilot.telemetry.>", durable="f", stream="TELEMETRY")
        [msg] = await pull.fetch(1, timeout=5)
        await msg.ack_sync()
        assert (await plant.jetstream().consumer_info("TELEMETRY", "f")).ack_floor.stream_seq == 1
        await flow.jetstream().publish("biopilot.alerts.r1", b"{}")
        await flow.jetstream().publish("biopilot.deadletter", b"bad")
        agents = await nats.connect(server.url_for("agents"))
        await agents.jetstream().publish("biopilot.incidents.r1", b"{}")
        await agents.publish("biopilot.agent.i1", b"{}")
        await agents.flush()
        for client in (plant, flow, agents):
            with pytest.raises(nats.errors.TimeoutError):  # refused by the broker: no answer comes
                await client.request("$JS.API.STREAM.DELETE.TELEMETRY", b"", timeout=0.5)
        assert (await flow.jetstream().stream_info("TELEMETRY")).state.messages == 1
        for client in (plant, flow, agents):
            await client.close()

    try:
        asyncio.run(work())
    finally:
        server.stop()


def test_a_finishing_child_stopped_by_sigterm_before_its_handler_is_done_not_restarted(tmp_path: Path) -> None:
    """The plant told to stop while still importing dies by the signal's default action: that is the stop it was
    asked for, so `up` goes on to drain rather than restarting it."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]  # no handler: SIGTERM ends it as -15
    plant = Child("plant", sleeper, {}, tmp_path / "plant.log", finishes=True)
    crashing = Child("flow", sleeper, {}, tmp_path / "flow.log")
    supervisor = Supervisor([plant, crashing], f"redis://127.0.0.1:{free_port()}/0", io.StringIO(),
                            first_delay_s=0.1, poll_s=0.02)

    async def run() -> None:
        supervisor.start()
        watching = asyncio.create_task(supervisor.run())
        try:
            plant.proc.send_signal(signal.SIGTERM)
            crashing.proc.send_signal(signal.SIGTERM)  # not a finishing child: a crash, restarted
            await asyncio.wait_for(supervisor.finished.wait(), 20)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not crashing.restarts:
                await asyncio.sleep(0.05)
        finally:
            await supervisor.stop(grace_s=2)
            await watching

    asyncio.run(run())
    assert plant.restarts == 0 and plant.last_exit == -signal.SIGTERM
    assert crashing.restarts == 1


def test_a_restarted_plant_asks_the_broker_which_units_of_the_dead_batch_published(nats_server) -> None:  # noqa: ANN001
    """`close_interrupted` writes `runs` rows (and closing watermarks) only for the units whose last message is
    from the batch's start on: a kill before a unit's first message leaves its run without a row."""
    ticks = make_ticks(reactors=2, ticks=20)
    first, second = sorted(pc.unique(ticks["reactor_id"]).to_pylist())
    rows = ticks.filter(pc.equal(ticks["reactor_id"], first))
    times = rows["ts"].cast(pa.int64())
    publish(nats_server.url, rows, watermark=False)  # the first unit's ticks; the second published nothing

    async def ask() -> list[int | None]:
        nc = await connect_nats(nats_server.url)
        try:
            js = nc.jetstream()
            answers = [await last_event_us(js, first), await last_event_us(js, second)]
            await publish_watermark(js, second, 12345)
            return [*answers, await last_event_us(js, second)]
        finally:
            await nc.close()

    assert asyncio.run(ask()) == [pc.max(times).as_py(), None, 12345]
