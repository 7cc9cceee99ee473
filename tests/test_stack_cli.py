"""`biopilot up`, `replay` and `lake optimize` as a user runs them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import nats
import psutil
import pytest

from core.services import free_port
from sinks import delta

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]
pytestmark = pytest.mark.integration  # the CLI in a subprocess


def _children_using(path: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if path in cmd and proc.pid != os.getpid():
            found.append(proc)
    return found


def _short_scenario(tmp_path, days: float = 0.5):
    path = tmp_path / "short.toml"
    path.write_text(f'description = "short"\ndays = {days}\n')
    return path


def test_up_runs_batches_end_to_end_and_leaves_no_process(tmp_path):
    lake = tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOPILOT_")}
    out = subprocess.run([*BIOPILOT, "up", "--reactors", "2", "--speed", "max", "--batches", "2", "--scenario",
                          str(_short_scenario(tmp_path)), "--lake", str(lake), "--port", str(free_port())], capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 0, out.stderr
    assert "broker     nats://127.0.0.1:" in out.stdout and "flow drained" in out.stdout
    assert "dashboard  http://127.0.0.1:" in out.stdout and "/login?code=" in out.stdout
    assert "speed max," in out.stdout  # not the plant's default speed
    ticks = delta.read(lake, "ticks", columns=["run_id", "seq"])
    assert ticks.num_rows == 2 * 2 * 720
    runs = delta.read(lake, "runs")
    assert runs.num_rows == 4 and len(set(runs["run_id"].to_pylist())) == 4
    time.sleep(0.5)
    assert _children_using(str(lake)) == []


def test_up_stops_everything_on_ctrl_c(tmp_path):
    lake = tmp_path / "lake"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOPILOT_")}
    proc = subprocess.Popen([*BIOPILOT, "up", "--reactors", "1", "--speed", "3000", "--lake", str(lake),
                             "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while delta.read(lake, "ticks", columns=["seq"]) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode == 0, proc.stderr.read()
    time.sleep(0.5)
    assert _children_using(str(lake)) == []


@pytest.mark.parametrize(("args", "needle"), [
    (["--jitter", "2"], "--jitter must be from 0 to 1 (a share), got 2"),
    (["--jitter", "nan"], "--jitter must be from 0 to 1"),
    (["--port", "70000"], "--port must be from 1 to 65535, got 70000"),
])
def test_up_refuses_an_out_of_range_option_in_one_line_and_starts_nothing(tmp_path, args, needle):
    lake = tmp_path / "lake"
    res = subprocess.run([*BIOPILOT, "up", "--reactors", "1", "--lake", str(lake), *args], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and needle in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert not lake.exists() and not _children_using(str(lake))


def test_replay_publishes_a_stored_run(nats_server, tmp_path):
    store = tmp_path / "store"
    ids = subprocess.run([*BIOPILOT, "simulate", "--lake", str(store), "--days", "0.25", "--quiet"],
                         capture_output=True, text=True, check=True).stdout.split()
    env = {**os.environ, "BIOPILOT_NATS_URL": nats_server.url}
    out = subprocess.run([*BIOPILOT, "replay", "--run", ids[0], "--speed", "max", "--lake", str(store)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "published 360 ticks" in out.stdout

    async def messages() -> int:
        nc = await nats.connect(nats_server.url)
        info = await nc.jetstream().stream_info("TELEMETRY")
        await nc.close()
        return info.state.messages

    assert asyncio.run(messages()) >= 2  # ticks and the closing watermark
    bad = subprocess.run([*BIOPILOT, "replay", "--run", "nope", "--lake", str(store)], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "has no ticks" in bad.stderr
    env.pop("BIOPILOT_NATS_URL")
    unset = subprocess.run([*BIOPILOT, "replay", "--run", ids[0], "--lake", str(store)], capture_output=True,
                           text=True, env={k: v for k, v in env.items() if not k.startswith("BIOPILOT_")})
    assert unset.returncode == 2 and "no broker" in unset.stderr


def test_replay_to_a_broker_that_is_gone_is_one_line_not_a_hang(tmp_path):
    store = tmp_path / "store"
    ids = subprocess.run([*BIOPILOT, "simulate", "--lake", str(store), "--days", "0.1", "--quiet"],
                         capture_output=True, text=True, check=True).stdout.split()
    stale = f"nats://biopilot-plant:secret@127.0.0.1:{free_port()}"  # a stopped stack's URL: nobody listens
    env = {**os.environ, "BIOPILOT_NATS_URL": stale}
    started = time.monotonic()
    out = subprocess.run([*BIOPILOT, "replay", "--run", ids[0], "--lake", str(store)], capture_output=True,
                         text=True, env=env, timeout=60)  # before: retried for ever, a traceback per try
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr[-2000:]
    assert "no servers available" in out.stderr and "secret" not in out.stderr
    assert time.monotonic() - started < 30


def test_lake_optimize_compacts_small_files(tmp_path):
    lake = tmp_path / "lake"
    for seed in range(3):
        subprocess.run([*BIOPILOT, "simulate", "--lake", str(lake), "--days", "0.1", "--seed", str(seed), "--quiet"],
                       check=True, capture_output=True)
    before = len(delta.open_table(lake, "ticks").file_uris())
    rows = delta.read(lake, "ticks").num_rows
    out = subprocess.run([*BIOPILOT, "lake", "optimize", "--lake", str(lake)], capture_output=True, text=True,
                         check=True)
    assert "ticks" in out.stdout
    assert len(delta.open_table(lake, "ticks").file_uris()) < before
    assert delta.read(lake, "ticks").num_rows == rows
