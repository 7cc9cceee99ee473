"""A NATS cluster of three nodes under the monitoring flow (issue 27 §2): killing the node that leads the
TELEMETRY stream mid-stream, or restarting the JetStream meta leader, loses no tick and duplicates none, and the
flow goes on reading. One cluster and one flow process serve the module (the flow's start is the slow part)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.nats_cluster import NatsCluster, delivered_seq, start_nats_cluster, wait_delivered_past
from core.processes import stop_process_group
from core.services import (
    STREAM_REPLICAS,
    connect_nats,
    ensure_streams,
    free_port,
    nats_servers,
    start_nats,
    without_credentials,
)
from flows.launch import start_flow
from sinks import delta
from tests.stream_helpers import Flow, make_ticks, publish, wait_rows

# a stall is a few seconds (nats-server's RAFT elections: docs/SCALE-OUT.md); this bound only catches a flow
# that stopped reading, on a slow shared CI machine
STALL_LIMIT_S = 45.0


@dataclass
class Stack:
    cluster: NatsCluster
    flow: Flow
    lake: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("nats-cluster")
    cluster = start_nats_cluster(root / "nats", 3)
    proc = None
    try:
        assert asyncio.run(ensure_streams(cluster.url)) == STREAM_REPLICAS
        proc = start_flow(cluster.url, str(root / "lake"), root / "recovery", log_path=root / "flow.log",
                          snapshot_s=1.0)
        yield Stack(cluster, Flow(proc, root / "flow.log"), root / "lake")
    finally:
        if proc is not None:
            stop_process_group(proc)
        cluster.stop()


def _ticks(reactors: int, ticks: int, seed: int, label: str) -> pa.Table:
    """Ticks of reactors of their own (`label`-r1, ...): a reactor's event time only goes forward, so ticks of a
    reactor already seen, starting over at the fleet's start, would be late."""
    table = make_ticks(reactors=reactors, ticks=ticks, seed=seed)
    for column in ("run_id", "reactor_id"):
        table = table.set_column(table.schema.get_field_index(column), column,
                                 pc.binary_join_element_wise(label, table[column], "-"))
    return table


def _warm_up(stack: Stack) -> int:
    """Until the flow has written a first message's ticks (its start, all partitions' consumers made, takes
    a while): the rows in the lake."""
    if delta.read(stack.lake, "ticks", columns=["run_id"]) is None:
        warm = _ticks(1, 40, 10, "warm")
        publish(stack.cluster.url, warm)
        wait_rows(stack.lake, "ticks", warm.num_rows, stack.flow, timeout_s=120)
    return delta.read(stack.lake, "ticks", columns=["run_id"]).num_rows


def _last_seq(url: str, timeout_s: float = 60.0) -> int:
    """The stream's last sequence, once the cluster answers (after a node's loss it elects leaders first)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return asyncio.run(delivered_seq(url))[1]
        except Exception:  # noqa: BLE001 - no stream leader yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _assert_each_tick_once(lake: Path, published: int) -> None:
    ticks = delta.read(lake, "ticks", columns=["run_id", "seq"])
    keys = set(zip(ticks["run_id"].to_pylist(), ticks["seq"].to_pylist(), strict=True))
    assert ticks.num_rows == published and len(keys) == published


@pytest.mark.integration
def test_killing_the_stream_leader_mid_stream_loses_nothing_and_the_flow_resumes(stack: Stack) -> None:
    already = _warm_up(stack)
    ticks = _ticks(2, 600, 11, "kill")
    publishing = threading.Thread(target=publish, args=(stack.cluster.url, ticks), kwargs={"chunk": 20,
                                                                                           "pace_s": 0.03})
    publishing.start()
    try:
        while _last_seq(stack.cluster.url) < 20:  # mid-stream: the plant publishes, the flow reads
            time.sleep(0.02)
        at_kill, killed_at = _last_seq(stack.cluster.url), time.monotonic()
        victim = stack.cluster.kill_stream_leader("TELEMETRY")
        stall_s = wait_delivered_past(stack.cluster.url, at_kill, killed_at, timeout_s=STALL_LIMIT_S)
    finally:
        publishing.join()
    assert stack.cluster.stream_leader("TELEMETRY") != stack.cluster.nodes[victim].name
    wait_rows(stack.lake, "ticks", already + ticks.num_rows, stack.flow)
    _assert_each_tick_once(stack.lake, already + ticks.num_rows)
    assert stall_s < STALL_LIMIT_S
    print(f"\nstream leader {stack.cluster.nodes[victim].name} killed: the flow read again after {stall_s:.1f} s")
    stack.cluster.restart(victim)  # back for the next test: three nodes again
    stack.cluster.wait_ready()


@pytest.mark.integration
def test_after_the_meta_leader_restarts_the_flow_still_reads_new_messages(stack: Stack) -> None:
    """nats-server issue #5679: after the meta leader restarts, some consumers get no new messages."""
    already = _warm_up(stack)
    leader = stack.cluster.wait_ready()
    index = stack.cluster.node(leader)
    stack.cluster.kill(index)
    stack.cluster.restart(index)
    stack.cluster.wait_ready()
    at_restart, restarted_at = _last_seq(stack.cluster.url), time.monotonic()
    ticks = _ticks(2, 300, 12, "restart")
    publish(stack.cluster.url, ticks, chunk=50)
    resumed_s = wait_delivered_past(stack.cluster.url, at_restart, restarted_at, timeout_s=STALL_LIMIT_S)
    print(f"\nmeta leader {leader} restarted: the flow read new messages {resumed_s:.1f} s after")
    wait_rows(stack.lake, "ticks", already + ticks.num_rows, stack.flow)
    _assert_each_tick_once(stack.lake, already + ticks.num_rows)


@pytest.mark.integration
def test_a_single_server_keeps_one_replica_and_a_cluster_three(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "single")
    try:
        assert asyncio.run(ensure_streams(server.url)) == 1  # asked for 3, the server cannot: one, no error
    finally:
        server.stop()


@pytest.mark.integration
def test_the_cluster_nodes_require_the_components_users_and_refuse_others(tmp_path: Path) -> None:
    cluster = start_nats_cluster(tmp_path / "nats", 3, users={"admin": "a-secret", "plant": "p-secret"})
    try:
        assert asyncio.run(ensure_streams(cluster.url_for("admin"))) == STREAM_REPLICAS

        async def plant_publishes_telemetry_but_cannot_delete_the_stream() -> None:
            plant = await connect_nats(cluster.url_for("plant"))
            try:
                assert (await plant.jetstream().publish("biopilot.telemetry.r1", b"x")).stream == "TELEMETRY"
                with pytest.raises(nats.errors.TimeoutError):  # refused by the broker: no answer comes
                    await plant.request("$JS.API.STREAM.DELETE.TELEMETRY", b"", timeout=0.5)
                assert (await plant.jetstream().stream_info("TELEMETRY")).state.messages == 1
            finally:
                await plant.close()

        asyncio.run(plant_publishes_telemetry_but_cannot_delete_the_stream())
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # no password: refused
            asyncio.run(connect_nats(cluster.url, allow_reconnect=False, max_reconnect_attempts=1))
    finally:
        cluster.stop()


def test_a_url_list_is_printed_without_any_of_its_passwords() -> None:
    urls = "nats://flow:s3cret@127.0.0.1:4222, nats://flow:s3cret@127.0.0.1:4223"
    assert without_credentials(urls) == "nats://127.0.0.1:4222,nats://127.0.0.1:4223"
    assert nats_servers(urls) == ["nats://flow:s3cret@127.0.0.1:4222", "nats://flow:s3cret@127.0.0.1:4223"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--nats-cluster", "2"], "needs 3 nodes or more"),
    (["--nats-cluster", "3"], "BIOPILOT_NATS_URL names a broker"),
])
def test_up_refuses_a_cluster_too_small_to_lose_a_node_or_beside_a_configured_broker(
        argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        tmp_path: Path) -> None:
    from biopilot.cli import main

    if "3" in argv:
        monkeypatch.setenv("BIOPILOT_NATS_URL", "nats://127.0.0.1:4222")
    assert main(["up", *argv, "--lake", str(tmp_path), "--port", str(free_port())]) == 2
    assert message in capsys.readouterr().err
