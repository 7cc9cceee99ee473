"""An embedded NATS cluster: N `nats-server` nodes on loopback joined by routes, JetStream clustered (RAFT),
for `biopilot up --nats-cluster 3`, the tests and `biopilot bench scale`'s broker fault.

Each node is `core.services.nats_config` (the same JetStream limits, `sync_interval: always`, the same users and
per-component permissions when credentials are used) plus a server name, a cluster block with routes to every
other node and a monitoring port on loopback (its `/jsz` says who leads the JetStream meta group). With
credentials the routes carry a password of their own: a local process cannot join the cluster by its route
port. Clients take the nodes as one comma-separated URL list (`core.services.connect_nats`) and move to another
node when theirs goes away; streams get three replicas (`core.services.ensure_streams`), so any one node may die
without losing an acknowledged message.

A cluster is ready when every node agrees on a meta leader: before that, JetStream API calls answer 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.processes import kill_process_group, spawn
from core.services import (
    FLOW_DURABLE,
    ManagedServer,
    _binary,
    connect_nats,
    free_port,
    nats_config,
    new_password,
    wait_port,
    write_private,
)

CLUSTER_NAME = "biopilot"
ROUTE_USER = "route"


@dataclass
class NatsNode:
    """One node: its client server (`ManagedServer`, name `nats`), its route and monitoring ports."""

    name: str  # the nats-server `server_name`, what leaders are reported as
    server: ManagedServer
    route_port: int
    monitor_port: int

    def alive(self) -> bool:
        return self.server.proc.poll() is None

    def jsz(self, timeout_s: float = 1.0) -> dict:
        """The node's JetStream report (`/jsz`): its meta group's leader and size among others."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=timeout_s) as answer:
            return json.load(answer)


@dataclass
class NatsCluster:
    nodes: list[NatsNode]
    passwords: dict[str, str] = field(default_factory=dict, repr=False)  # per user, as `ManagedServer`'s

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what a client is given (no credentials)."""
        return ",".join(node.server.url for node in self.nodes)

    def url_for(self, user: str = "admin") -> str:
        """The URL list with `user`'s credentials in each; the bare list without auth."""
        return ",".join(node.server.url_for(user) for node in self.nodes)

    def node(self, name: str) -> int:
        """The index of the node called `name` (a leader as the cluster reports it)."""
        return next(i for i, node in enumerate(self.nodes) if node.name == name)

    def meta_leader(self) -> str | None:
        """The meta leader every live node agrees on, or None (an election under way, or none yet)."""
        leaders = set()
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                leaders.add((node.jsz().get("meta_cluster") or {}).get("leader") or None)
            except OSError:
                return None
        return leaders.pop() if len(leaders) == 1 else None

    def wait_ready(self, timeout_s: float = 30.0) -> str:
        """Wait until the live nodes agree on a meta leader; its name."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.server.proc.poll() is not None and node.server.proc.returncode not in (-9, -15, 0):
                    raise RuntimeError(f"nats node {node.name} exited with code {node.server.proc.returncode}, "
                                       f"log {node.server.log_path}")
            leader = self.meta_leader()
            if leader is not None:
                return leader
            time.sleep(0.1)
        raise TimeoutError(f"the NATS cluster has no meta leader after {timeout_s:.0f} s")

    def stream_leader(self, stream: str = "TELEMETRY", timeout_s: float = 10.0) -> str:
        """The node leading `stream`'s RAFT group."""
        async def ask() -> str:
            nc = await connect_nats(self.url_for("admin"), connect_timeout=2, max_reconnect_attempts=2,
                                    error_cb=_quiet)
            try:
                return (await nc.jetstream().stream_info(stream)).cluster.leader
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                if leader := asyncio.run(ask()):
                    return leader
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} has no leader after {timeout_s:.0f} s")
            time.sleep(0.1)

    def kill(self, index: int) -> None:
        """kill -9 one node (a crash: no goodbye to its peers, nothing flushed beyond what it synced)."""
        kill_process_group(self.nodes[index].server.proc)

    def kill_stream_leader(self, stream: str = "TELEMETRY") -> int:
        """kill -9 the node leading `stream` (the worst single-node fault for a producer and a consumer of it);
        its index, for `restart`."""
        index = self.node(self.stream_leader(stream))
        self.kill(index)
        return index

    def restart(self, index: int) -> None:
        """Start a stopped or killed node again: same config, ports, store and name; it catches up from its
        peers."""
        node = self.nodes[index]
        node.server = _spawn(node.server.data_dir, node.server.port, node.server.passwords)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.server.stop()

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _quiet(err: Exception) -> None:
    """A probe's connection errors while a node is down are expected: not printed (nats-py's default does)."""


async def delivered_seq(url: str, stream: str = "TELEMETRY", durable_prefix: str = FLOW_DURABLE,
                        timeout_s: float = 1.0) -> tuple[int, int]:
    """How far the flow has read `stream`: the highest stream sequence any of its consumers (`durable_prefix`,
    one per partition) has delivered, and the stream's last sequence. Raises while the broker cannot say (a
    leader election under way)."""
    nc = await connect_nats(url, connect_timeout=timeout_s, max_reconnect_attempts=1, allow_reconnect=False,
                            error_cb=_quiet)
    try:
        js = nc.jetstream(timeout=timeout_s)
        consumers = [info for info in await js.consumers_info(stream) if info.name.startswith(durable_prefix)]
        last = (await js.stream_info(stream)).state.last_seq
        return max((info.delivered.stream_seq for info in consumers), default=0), last
    finally:
        await nc.close()


def wait_delivered_past(url: str, seq: int, since: float, stream: str = "TELEMETRY",
                        durable_prefix: str = FLOW_DURABLE, timeout_s: float = 120.0) -> float:
    """Seconds from `since` (monotonic: a fault) until the flow's consumers have delivered a message of `stream`
    beyond sequence `seq` (the stream's last at the fault): how long the flow stalled, the broker's recovery
    (leader elections, clients moving to another node) and the publisher's included."""
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # no answer while leaders are elected: asked again
            if asyncio.run(delivered_seq(url, stream, durable_prefix))[0] > seq:
                return time.monotonic() - since
        time.sleep(0.05)
    raise TimeoutError(f"the flow read nothing of {stream} past sequence {seq} in {timeout_s:.0f} s")


def _spawn(data_dir: Path, port: int, passwords: dict[str, str]) -> ManagedServer:
    proc = spawn([_binary("nats-server"), "-c", str(data_dir / "nats.conf")], data_dir / "nats.log")
    wait_port(port, proc=proc)
    return ManagedServer("nats", f"nats://127.0.0.1:{port}", port, data_dir, proc, data_dir / "nats.log",
                         dict(passwords))


def start_nats_cluster(data_dir: Path, nodes: int = 3, users: dict[str, str] | None = None,
                       timeout_s: float = 30.0) -> NatsCluster:
    """`nodes` nodes under `data_dir/n<i>`, each with its own store, waited for until the cluster has a meta
    leader. `users`: as `core.services.start_nats`'s (None: no auth, also on the routes)."""
    if nodes < 2:
        raise ValueError("a cluster has at least 2 nodes (3 for replicated streams that survive a node's loss)")
    ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]  # client, route, monitor
    route_password = new_password() if users else ""
    route_auth = f"{ROUTE_USER}:{route_password}@" if users else ""
    routes = [f"nats-route://{route_auth}127.0.0.1:{route}" for _, route, _ in ports]
    cluster = NatsCluster([], dict(users or {}))
    try:
        for i, (client, route, monitor) in enumerate(ports):
            node_dir = data_dir / f"n{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            auth = (f'  authorization {{ user: "{ROUTE_USER}", password: "{route_password}" }}\n'
                    if users else "")
            write_private(node_dir / "nats.conf", nats_config(node_dir, client, users) + (
                f'server_name: "{CLUSTER_NAME}-n{i}"\nhttp: 127.0.0.1:{monitor}\n'
                f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: 127.0.0.1:{route}\n{auth}'
                f"  routes: {json.dumps([r for j, r in enumerate(routes) if j != i])}\n}}\n"))
            cluster.nodes.append(NatsNode(f"{CLUSTER_NAME}-n{i}", _spawn(node_dir, client, dict(users or {})),
                                          route, monitor))
        for node in cluster.nodes:
            wait_port(node.monitor_port, proc=node.server.proc)
        cluster.wait_ready(timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster
