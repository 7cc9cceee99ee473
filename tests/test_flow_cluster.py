"""The flow as a Bytewax cluster (docs/SCALE-OUT.md), the small variant of `biopilot bench scale`'s faults: two
processes share a stream of four partitions while ~100k ticks stream in; each fault strikes (kill -9 of one
process and of all, a rescale, the NATS node leading the stream, the object store restarted) and every tick
lands exactly once, scored once, each alert once. The supervisor restarts a cluster's processes together."""

from __future__ import annotations

import asyncio
import io
import signal
import threading
import time
from pathlib import Path

import pytest

from biopilot.bench import scale
from biopilot.supervisor import Child, Supervisor
from core.services import free_port
from tests.stream_helpers import make_ticks


def _assert_exactly_once(result: scale.FaultResult, published: int) -> None:
    assert result.published == published
    assert result.lost == 0 and result.duplicated == 0, result
    assert result.scores_rows == result.ticks_rows == published
    assert result.duplicated_alerts == 0
    assert result.exactly_once


def _kill_one_and_come_back_as_three(s: scale.Scenario) -> float:
    """kill -9 of one process half an epoch after a commit; the cluster restarts one process larger."""
    rows = scale.ticks_rows(s.cluster.lake)
    scale.wait_until("a commit", lambda: scale.ticks_rows(s.cluster.lake) > rows, s.cluster, every_s=0.02)
    time.sleep(scale.SNAPSHOT_S / 2)
    struck_at, rows = time.monotonic(), scale.ticks_rows(s.cluster.lake)
    s.cluster.kill(s.processes - 1)
    s.cluster.start(s.processes + 1)
    scale.wait_until("ticks landing again", lambda: scale.ticks_rows(s.cluster.lake) > rows, s.cluster)
    return time.monotonic() - struck_at


@pytest.mark.integration
def test_a_process_killed_mid_stream_and_a_restart_as_three_leave_every_tick_once(tmp_path: Path) -> None:
    ticks = make_ticks(reactors=8, ticks=5000, seed=11)  # 40k ticks, units spread over the 4 partitions
    result = scale.run_fault("kill-and-rescale", scale.Fault(_kill_one_and_come_back_as_three), tmp_path, ticks,
                             processes=2, partitions=4, message_rows=100, pace_s=0.2)
    _assert_exactly_once(result, ticks.num_rows)


@pytest.mark.integration
def test_the_stream_leaders_death_and_a_kill_of_the_cluster_as_it_commits_leave_every_tick_once(
        tmp_path: Path) -> None:
    """On a stream of 3 replicas on a 3-node NATS cluster: the node leading it killed, then kill -9 of every flow
    process as a commit of ticks lands (its other tables in flight)."""
    ticks = make_ticks(reactors=8, ticks=5000, seed=12)  # 40k ticks
    fault = scale.Fault(scale.in_turn(scale.kill_stream_leader, scale.kill_during_commit), nats_nodes=3)
    result = scale.run_fault("leader-and-commit", fault, tmp_path, ticks, processes=2, partitions=4,
                             message_rows=100, pace_s=0.2)
    _assert_exactly_once(result, ticks.num_rows)


@pytest.mark.integration
def test_the_object_store_restarted_under_the_cluster_loses_and_repeats_nothing(tmp_path: Path) -> None:
    ticks = make_ticks(reactors=8, ticks=2500, seed=13)  # 20k ticks: 100k in this file's three
    result = scale.run_fault("store", scale.FAULTS["restart_object_store"], tmp_path, ticks, processes=2,
                             partitions=4, message_rows=100, pace_s=0.2)
    _assert_exactly_once(result, ticks.num_rows)


def test_when_one_process_of_a_cluster_dies_the_supervisor_restarts_them_all(tmp_path: Path) -> None:
    sleeper = ["python3", "-c", "import time; time.sleep(600)"]
    children = [Child(f"flow-{k}", sleeper, {}, tmp_path / f"flow-{k}.log", group="flow") for k in range(2)]
    children.append(Child("agents", sleeper, {}, tmp_path / "agents.log"))
    out = io.StringIO()
    # no Redis there: the states are not published, which the supervisor says and goes on
    supervisor = Supervisor(children, f"redis://127.0.0.1:{free_port()}/0", out, first_delay_s=0.1)

    async def run() -> tuple[list[int], list[int]]:
        supervisor.start()
        watching = asyncio.create_task(supervisor.run())
        try:
            before = [c.proc.pid for c in children]
            children[0].proc.send_signal(signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(c.restarts for c in children[:2]):
                await asyncio.sleep(0.05)
            return before, [c.proc.pid for c in children]
        finally:
            await supervisor.stop(grace_s=2)
            await watching

    before, after = asyncio.run(run())
    assert after[0] != before[0] and after[1] != before[1]  # both members of the cluster are new
    assert after[2] == before[2] and children[2].restarts == 0  # the agents were left alone
    assert "flow-1 stopped with flow-0 (group flow)" in out.getvalue()


def test_a_fault_runs_publisher_ends_when_cancelled_though_its_broker_is_gone(nats_server) -> None:  # noqa: ANN001
    # a failed run's publisher, left retrying against the stopped broker, logged its reconnects into later tests
    publisher = scale._Publisher(nats_server.url, make_ticks(reactors=2, ticks=2000), message_rows=10, pace_s=0.2,
                                 paced_until=threading.Event())
    publisher.start()
    deadline = time.monotonic() + 10
    while publisher.task is None and time.monotonic() < deadline:
        time.sleep(0.05)
    nats_server.stop()
    time.sleep(0.5)
    started = time.monotonic()
    publisher.cancel()
    assert not publisher.is_alive() and time.monotonic() - started < 5
