"""The flow's Delta sink without the engine: an epoch's snapshot either holds the rows still in flight (few)
or waits for their commit (many), and a partition resumed from that snapshot lands every row exactly once."""

from __future__ import annotations

import pickle

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


@pytest.mark.parametrize("first_partition", ["dies before its commit", "commits after the snapshot, then dies"])
def test_a_snapshot_with_few_rows_in_flight_holds_them_and_a_resume_lands_every_row_once(tmp_path, monkeypatch,
                                                                                          first_partition):
    lake = str(tmp_path / "lake")
    ticks = _ticks(600)
    sink = LakeSink(lake, max_rows=10_000, max_age_s=3600)
    part = sink.build_part("lake", "lake", None)
    gate, crashed, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", ticks.slice(0, 400))])
    state = part.snapshot()  # the writer is held: the rows are in flight, so the snapshot carries them
    assert entered.wait(10)
    assert state is not None and sum(t.num_rows for t in state["ticks"]) == 400
    state = pickle.loads(pickle.dumps(state))  # as Bytewax stores it
    if first_partition == "dies before its commit":
        crashed.set()
        gate.set()
        monkeypatch.undo()
    else:
        gate.set()
        part.close()
    resumed = sink.build_part("lake", "lake", state)
    resumed.write_batch([("ticks", ticks.slice(400))])
    resumed.close()
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()


def test_a_snapshot_with_many_rows_in_flight_waits_for_their_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(lake_sink, "SNAPSHOT_INLINE_ROWS", 100)
    lake = str(tmp_path / "lake")
    part = LakeSink(lake, max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    part.write_batch([("ticks", _ticks(600))])
    assert part.snapshot() is None
    assert delta.read(lake, "ticks").num_rows == 600  # committed before the epoch counts as done
    part.close()


def test_an_epochs_snapshot_waits_for_the_rows_of_the_epochs_before_it(tmp_path, monkeypatch):
    # the source acknowledges a message one epoch after handing it over: by then its rows must be in Delta
    lake = str(tmp_path / "lake")
    ticks = _ticks(600)
    part = LakeSink(lake, max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, _, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", ticks.slice(0, 300))])
    assert part.snapshot() is not None  # epoch 0: its rows may stay in flight
    assert entered.wait(10)
    part.write_batch([("ticks", ticks.slice(300))])
    result = {}
    waiter = lake_sink.threading.Thread(target=lambda: result.setdefault("state", part.snapshot()))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive()  # epoch 1 waits for epoch 0's commit
    gate.set()
    waiter.join(10)
    assert not waiter.is_alive()
    assert delta.read(lake, "ticks").num_rows >= 300
    part.close()
    assert delta.read(lake, "ticks").num_rows == 600


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
