"""The flow's Delta sink without the engine: with a recovery store an epoch's snapshot returns once every row
handed over is committed; without one it does not wait, and every row still lands; appends go through
kept-open table handles."""

from __future__ import annotations

import pytest

import sinks.lake_sink as lake_sink
from biopilot.events import TICKS
from sinks import delta
from sinks.lake_sink import LakeSink
from tests.stream_helpers import make_ticks


def _ticks(n: int):
    return make_ticks(reactors=1, ticks=n).cast(TICKS)


def _held_writer(monkeypatch):
    """Delta appends wait for `gate`; with `crashed` set they fail instead, as a killed process never commits."""
    gate, crashed, entered = (lake_sink.threading.Event() for _ in range(3))
    real_append = delta.Appender.append

    def append(*args, **kwargs):  # noqa: ANN202
        entered.set()
        gate.wait(10)
        if crashed.is_set():
            raise RuntimeError("the process is gone")
        return real_append(*args, **kwargs)

    monkeypatch.setattr(lake_sink.delta.Appender, "append", append)
    return gate, crashed, entered


def test_with_a_recovery_store_a_snapshot_returns_once_every_row_handed_over_is_committed(tmp_path, monkeypatch):
    # the epoch the store records must be durable in Delta: the snapshot waits for the writer
    lake = str(tmp_path / "lake")
    ticks = _ticks(600)
    part = LakeSink(lake, max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, _, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", ticks.slice(0, 300))])
    part.write_batch([("ticks", ticks.slice(300))])
    result = {}
    waiter = lake_sink.threading.Thread(target=lambda: result.setdefault("state", part.snapshot()))
    waiter.start()
    assert entered.wait(10)
    waiter.join(0.5)
    assert waiter.is_alive()  # the writer is held: the epoch is not durable yet
    gate.set()
    waiter.join(10)
    assert not waiter.is_alive() and result["state"] is None
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()
    part.close()


def test_a_failed_commit_surfaces_on_the_dataflow_thread(tmp_path, monkeypatch):
    part = LakeSink(str(tmp_path / "lake"), max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, crashed, _ = _held_writer(monkeypatch)
    crashed.set()
    gate.set()
    part.write_batch([("ticks", _ticks(10))])
    with pytest.raises(RuntimeError, match="Delta write failed"):
        part.snapshot()


def test_without_a_recovery_store_a_snapshot_hands_rows_over_without_waiting(tmp_path, monkeypatch):
    # nothing keeps the snapshot, so it must not hold the dataflow up; the rows still all land
    lake = str(tmp_path / "lake")
    ticks = _ticks(600)
    part = LakeSink(lake, max_rows=10_000, max_age_s=3600, recovery=False).build_part("lake", "lake", None)
    gate, _, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", ticks.slice(0, 300))])
    assert part.snapshot() is None
    assert entered.wait(10)  # handed to the writer, which is still held
    part.write_batch([("ticks", ticks.slice(300))])
    assert part.snapshot() is None  # returns although epoch 0's rows are not committed
    gate.set()
    part.close()
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()


def test_an_appender_commits_through_its_open_handle_between_other_writers_commits(tmp_path):
    lake = str(tmp_path / "lake")
    ticks = _ticks(90)
    appender = delta.Appender(lake)
    appender.append("ticks", ticks.slice(0, 30), TICKS)  # creates the table
    appender.append("ticks", ticks.slice(30, 20), TICKS)  # through the handle
    delta.append(lake, "ticks", ticks.slice(50, 20), TICKS)  # another writer moves the table on
    appender.append("ticks", ticks.slice(70), TICKS)  # the handle is behind: it must not lose that commit
    appender.append("ticks", ticks.slice(0, 0), TICKS)  # nothing to write: no commit
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()
    assert delta.open_table(lake, "ticks").version() == 3
