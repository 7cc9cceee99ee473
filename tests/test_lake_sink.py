"""The flow's Delta sink without the engine: an epoch's snapshot never waits for a commit; with a write-ahead
log (a recovery store) an epoch's rows land once the next epoch ends, and the rows a stored epoch acknowledged
survive a crash and land exactly once after the restart (Delta app transactions);
without one every row still lands; rows land by age when the input pauses; appends go through kept-open table
handles, keep the Delta log bounded, keep per-file statistics of the full-rate tables' key columns only and
compact small files as they go; increasing keys and continuous scores are written without a dictionary,
losslessly."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake.exceptions import CommitFailedError

import sinks.lake_sink as lake_sink
from core.events import SCORES, TICKS
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


def _seqs(lake: str) -> list[int]:
    return sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist())


def test_with_a_write_ahead_log_an_epoch_lands_once_the_next_ends_and_a_restart_commits_what_the_dead_process_left(
        tmp_path, monkeypatch):
    lake, wal = str(tmp_path / "lake"), tmp_path / "wal"
    ticks = _ticks(900)
    sink = LakeSink(lake, max_rows=10_000, max_age_s=3600, wal_dir=wal, partitions=2)
    part = sink.build_part("lake", "p000", None)
    part.write_batch([("ticks", ticks.slice(0, 300))])
    assert part.snapshot() == 1  # epoch 1 sealed segment 0: not in Delta until epoch 1 is stored
    committed_segment = (wal / "p000" / "000000000000.batch").read_bytes()
    part.write_batch([("ticks", ticks.slice(300, 300))])
    assert part.snapshot() == 2  # epoch 1 is stored by now: its segment goes to Delta
    part.wait_committed()
    assert _seqs(lake) == ticks["seq"].to_pylist()[:300]
    assert delta.transaction_version(lake, "ticks", "biopilot-flow/p000") == 0
    gate, crashed, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", ticks.slice(600))])
    assert part.snapshot() == 3  # returns although the writer is held with segment 1
    assert entered.wait(10)
    crashed.set()  # the process dies before it commits segment 1; segment 2's epoch was never stored
    gate.set()
    part.wait_committed()
    monkeypatch.undo()
    (wal / "p000" / "000000000000.batch").write_bytes(committed_segment)  # committed, then the crash: not deleted
    (wal / "p000" / "000000000099.tmp").write_bytes(b"torn")  # a segment the crash cut short
    restarted = sink.build_part("lake", "p000", 2)  # the store holds epoch 2: segments 0 and 1
    # segment 0 not twice (its txn), segment 1 once, and segment 2 too: its rows are kept, not left to the replay
    assert _seqs(lake) == ticks["seq"].to_pylist()
    assert not any((wal / "p000").iterdir())
    restarted.write_batch([("ticks", ticks.slice(600))])  # the replayed epoch: Delta has it
    restarted.snapshot()
    restarted.close()
    assert _seqs(lake) == ticks["seq"].to_pylist()


def test_a_restart_from_before_segments_the_last_process_committed_skips_their_replayed_rows_and_numbers_past_them(
        tmp_path, caplog):
    lake, wal = str(tmp_path / "lake"), tmp_path / "wal"
    ticks = _ticks(900)
    sink = LakeSink(lake, max_rows=10_000, max_age_s=3600, wal_dir=wal)
    part = sink.build_part("lake", "p000", None)
    for start in (0, 300, 600):
        part.write_batch([("ticks", ticks.slice(start, 300))])
        part.snapshot()
    part.wait_committed()
    assert delta.transaction_version(lake, "ticks", "biopilot-flow/p000") == 1  # segments 0 and 1 in Delta
    # the crash; the store had stored epoch 1 only (its snapshot came late): the source replays from segment 1 on
    restarted = sink.build_part("lake", "p000", 1)
    assert "resumes before segment 1" in caplog.text
    # segment 2, sealed after the stored epoch, is committed too; a new segment 1 would pass for the committed one
    assert restarted.wal.next_number == 3
    restarted.write_batch([("ticks", ticks.slice(300))])
    restarted.snapshot()
    restarted.close()
    assert _seqs(lake) == ticks["seq"].to_pylist()
    assert delta.transaction_version(lake, "ticks", "biopilot-flow/p000") == 2


def test_a_restart_whose_stored_sink_state_is_older_than_the_sources_commits_every_row_the_dead_process_had(
        tmp_path, caplog):
    lake, wal = str(tmp_path / "lake"), tmp_path / "wal"
    ticks = _ticks(900)
    sink = LakeSink(lake, max_rows=10_000, max_age_s=3600, wal_dir=wal)
    part = sink.build_part("lake", "p000", None)
    part.write_batch([("ticks", ticks.slice(0, 300))])
    part.snapshot()  # segment 0 sealed, held until its epoch is stored
    part.write_batch([("ticks", ticks.slice(300, 300))])  # in the open segment 1
    part.wal.segment.write(b"\x05\x00\x10")  # the kill cut its last frame short
    part.wal.segment.close()
    part.committer.leave(part)  # kill -9: nothing more of this process
    # the restart resumes from a stored sink state from before both segments, and a source position past seq 449
    restarted = sink.build_part("lake", "p000", 0)
    assert _seqs(lake) == ticks["seq"].to_pylist()[:600]  # neither segment dropped
    assert "commits 2 segment(s) from after its stored snapshot" in caplog.text
    assert restarted.wal.next_number == 2
    restarted.write_batch([("ticks", ticks.slice(450))])  # the replay: what Delta has is skipped by key
    restarted.snapshot()
    restarted.close()
    assert _seqs(lake) == ticks["seq"].to_pylist()
    assert not any((wal / "p000").iterdir())


def test_an_unreadable_write_ahead_segment_is_skipped_with_a_warning(tmp_path, caplog):
    wal = tmp_path / "wal"
    (wal / "p000").mkdir(parents=True)
    (wal / "p000" / "000000000000.batch").write_bytes(b"not a batch")
    part = LakeSink(str(tmp_path / "lake"), wal_dir=wal).build_part("lake", "p000", 1)
    part.close()
    assert "unreadable write-ahead segment" in caplog.text
    assert not any((wal / "p000").iterdir())


def test_a_failed_commit_surfaces_on_the_dataflow_thread(tmp_path, monkeypatch):
    part = LakeSink(str(tmp_path / "lake"), max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, crashed, _ = _held_writer(monkeypatch)
    crashed.set()
    gate.set()
    part.write_batch([("ticks", _ticks(10))])
    part.snapshot()
    part.wait_committed()
    with pytest.raises(RuntimeError, match="Delta write failed"):
        part.write_batch([("ticks", _ticks(10))])


def test_a_partition_whose_commit_failed_closes_with_the_error_instead_of_waiting_for_its_last_rows(
        tmp_path, monkeypatch):
    # its later rows are never committed (the next process replays them): the close must not wait for them
    part = LakeSink(str(tmp_path / "lake"), max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, crashed, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", _ticks(10))])
    part.snapshot()
    assert entered.wait(10)
    part.write_batch([("ticks", _ticks(20).slice(10))])  # buffered while the commit before is on its way
    crashed.set()
    gate.set()
    deadline = time.monotonic() + 10
    while part.failure is None and time.monotonic() < deadline:
        time.sleep(0.01)
    closed: list[BaseException] = []
    closer = lake_sink.threading.Thread(target=lambda: closed.append(pytest.raises(RuntimeError, part.close).value))
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "the close waited for rows that will never be committed"
    assert "Delta write failed" in str(closed[0])


def test_without_a_recovery_store_a_snapshot_hands_rows_over_without_waiting(tmp_path, monkeypatch):
    # nothing keeps the snapshot, so it must not hold the dataflow up; the rows still all land
    lake = str(tmp_path / "lake")
    ticks = _ticks(600)
    part = LakeSink(lake, max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, _, entered = _held_writer(monkeypatch)
    part.write_batch([("ticks", ticks.slice(0, 300))])
    assert part.snapshot() is None
    assert entered.wait(10)  # handed to the writer, which is still held
    part.write_batch([("ticks", ticks.slice(300))])
    assert part.snapshot() is None  # returns although epoch 0's rows are not committed
    gate.set()
    part.close()
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()


def test_a_writer_that_falls_behind_holds_the_dataflow_up(tmp_path, monkeypatch):
    # batches sealed at each epoch's end must not pile up in memory while Delta is slow
    lake = str(tmp_path / "lake")
    ticks = _ticks(500)
    part = LakeSink(lake, max_rows=10_000, max_age_s=3600).build_part("lake", "lake", None)
    gate, _, entered = _held_writer(monkeypatch)
    for k in range(4):  # one in the writer's hands, two waiting, one more sealed
        part.write_batch([("ticks", ticks.slice(100 * k, 100))])
        part.snapshot()
        if k == 0:
            assert entered.wait(10)
    returned = lake_sink.threading.Event()
    waiter = lake_sink.threading.Thread(target=lambda: (part.write_batch([("ticks", ticks.slice(400))]),
                                                        returned.set()))
    waiter.start()
    assert not returned.wait(0.5), "the dataflow went on although three batches were waiting"
    gate.set()
    assert returned.wait(10)
    waiter.join()
    part.close()
    assert _seqs(lake) == ticks["seq"].to_pylist()


def test_rows_land_by_age_when_the_input_pauses(tmp_path):
    # no more rows and no epoch's end: the age limit alone must bring them to Delta
    lake = str(tmp_path / "lake")
    part = LakeSink(lake, max_rows=10_000, max_age_s=0.2).build_part("lake", "lake", None)
    part.write_batch([("ticks", _ticks(10))])
    deadline = time.monotonic() + 10
    while delta.open_table(lake, "ticks") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert delta.open_table(lake, "ticks") is not None, "the rows waited for more input"
    assert len(_seqs(lake)) == 10
    part.close()


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


def test_the_delta_log_stays_bounded_and_an_older_table_gets_the_retention(tmp_path, monkeypatch):
    # every commit lists the whole log, so it must not grow for good; a zero retention makes the checkpoints'
    # clean-up visible at once (the real one is a minute)
    monkeypatch.setattr(delta, "TABLE_PROPERTIES", {"delta.logRetentionDuration": "interval 0 seconds"})
    lake = str(tmp_path / "lake")
    ticks = _ticks(1)
    delta.write_deltalake(delta.table_uri(lake, "ticks"), ticks, mode="append")  # created without the property
    appender = delta.Appender(lake)
    for _ in range(2 * delta.CHECKPOINT_INTERVAL + 10):
        appender.append("ticks", ticks, TICKS)
    log = list((tmp_path / "lake" / "ticks" / "_delta_log").glob("*.json"))
    assert len(log) <= delta.CHECKPOINT_INTERVAL
    assert delta.read(lake, "ticks").num_rows == 2 * delta.CHECKPOINT_INTERVAL + 11


def test_the_full_rate_tables_keep_statistics_for_their_key_columns_only(tmp_path):
    # each file's statistics cost every later commit and the writer's memory; the ticks gain four files a second
    lake = str(tmp_path / "lake")
    ticks = _ticks(10)
    delta.write_deltalake(delta.table_uri(lake, "ticks"), ticks, mode="append")  # created with Delta's default
    appender = delta.Appender(lake)
    appender.append("ticks", ticks, TICKS)  # an older table gets the property when the sink opens it
    appender.append("late_ticks", ticks, TICKS)
    some = ticks.select(["run_id", "ts", "temp_c"])
    appender.append("assays", some, some.schema)

    def stats(name: str) -> list[set[str]]:
        """The columns each commit's file has a minimum for, from the log as written."""
        log = sorted((tmp_path / "lake" / name / "_delta_log").glob("*.json"))
        lines = [line for path in log for line in path.read_text().splitlines()]
        adds = [json.loads(line)["add"] for line in lines if '"add"' in line]
        return [set(json.loads(add["stats"])["minValues"]) for add in adds]

    old, new = stats("ticks")
    assert "temp_c" in old  # written before the property: Delta's default, every column
    assert new == {"run_id", "reactor_id", "seq", "ts"}
    assert stats("late_ticks") == [new]
    [assays] = stats("assays")  # a small table keeps the default
    assert assays == {"run_id", "ts", "temp_c"}


def test_an_appender_compacts_small_files_every_so_many_commits_and_readers_keep_their_files(tmp_path):
    lake = str(tmp_path / "lake")
    ticks = _ticks(250)
    appender = delta.Appender(lake, compact_every=10)
    for k in range(9):
        appender.append("ticks", ticks.slice(10 * k, 10), TICKS)
    before = delta.open_table(lake, "ticks")  # a reader's snapshot of 9 small files
    for k in range(9, 25):
        appender.append("ticks", ticks.slice(10 * k, 10), TICKS)
    table = delta.open_table(lake, "ticks")
    assert [h["operation"] for h in table.history()].count("OPTIMIZE") == 2  # after the 10th and 20th commits
    assert len(table.file_uris()) == 6  # commits 1-20 in one file, 21-25 as they came
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()
    old_files = pq.ParquetDataset(before.file_uris()).read(columns=["seq"])  # replaced, but not yet deleted
    assert sorted(old_files["seq"].to_pylist()) == list(range(90))


def test_files_of_a_full_micro_batch_are_not_rewritten_by_the_compaction(tmp_path, monkeypatch):
    lake = str(tmp_path / "lake")
    ticks = _ticks(2_000)
    appender = delta.Appender(lake, compact_every=3)
    appender.append("ticks", ticks.slice(0, 1_900), TICKS)
    [big] = delta.open_table(lake, "ticks").file_uris()
    monkeypatch.setattr(delta, "SMALL_FILE_BYTES", int(0.9 * os.path.getsize(big)))
    for k in range(2):
        appender.append("ticks", ticks.slice(1_900 + 50 * k, 50), TICKS)
    files = delta.open_table(lake, "ticks").file_uris()
    assert big in files and len(files) == 2  # the two small ones merged, the big one as it was


def test_a_failed_compaction_is_logged_and_the_appends_go_on(tmp_path, monkeypatch, caplog):
    def conflict(*args):  # noqa: ANN202
        raise delta.DeltaError("another writer's commit came in between")

    monkeypatch.setattr(delta, "_compact", conflict)
    lake = str(tmp_path / "lake")
    ticks = _ticks(40)
    appender = delta.Appender(lake, compact_every=2)
    for k in range(4):
        appender.append("ticks", ticks.slice(10 * k, 10), TICKS)
    assert "compacting ticks failed" in caplog.text
    assert sorted(delta.read(lake, "ticks", columns=["seq"])["seq"].to_pylist()) == ticks["seq"].to_pylist()


def test_increasing_keys_and_continuous_scores_skip_the_dictionary_and_read_back_exactly(tmp_path):
    lake = str(tmp_path / "lake")
    ticks = _ticks(500)
    n = ticks.num_rows
    scores = pa.table({"run_id": ticks["run_id"], "reactor_id": ticks["reactor_id"], "seq": ticks["seq"],
                       "ts": ticks["ts"], "detector": ["zscore"] * n, "score": np.random.default_rng(1).random(n),
                       "threshold": [6.0] * n, "is_alarm": [False] * n, "vcd_e6_per_ml_est": [None] * n,
                       "glucose_g_l_est": np.linspace(0.0, 5.0, n)}).cast(SCORES)
    delta.append(lake, "ticks", ticks, TICKS)
    delta.append(lake, "scores", scores, SCORES)

    def encodings(name: str) -> dict[str, set[str]]:
        meta = pq.ParquetFile(delta.open_table(lake, name).file_uris()[0]).metadata.row_group(0)
        return {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}

    ticks_enc, scores_enc = encodings("ticks"), encodings("scores")
    assert "DELTA_BINARY_PACKED" in ticks_enc["seq"] and "DELTA_BINARY_PACKED" in ticks_enc["ts"]
    assert "BYTE_STREAM_SPLIT" in scores_enc["score"] and "BYTE_STREAM_SPLIT" in scores_enc["glucose_g_l_est"]
    assert "RLE_DICTIONARY" in ticks_enc["run_id"] and "RLE_DICTIONARY" in ticks_enc["ph"]  # quantised: dictionary
    assert delta.read(lake, "ticks").sort_by("seq").equals(ticks)
    assert delta.read(lake, "scores").sort_by("seq").equals(scores)


def test_a_redelivered_batch_mixing_runs_adds_only_the_rows_the_lake_lacks(tmp_path):
    # the keys already in the lake are read when a partition starts; a batch arriving after a restart overlaps
    # them for some runs and not others, in parts whose fields arrive nullable (as decoded from the broker)
    lake = str(tmp_path / "lake")
    ticks = make_ticks(reactors=3, ticks=40).cast(TICKS)
    runs = sorted(set(ticks["run_id"].to_pylist()))
    first = ticks.filter(pa.array([r != runs[2] and s < 20 for r, s in zip(ticks["run_id"].to_pylist(),
                                                                            ticks["seq"].to_pylist(), strict=True)]))
    delta.append(lake, "ticks", first, TICKS)
    nullable = pa.schema([field.with_nullable(True) for field in TICKS])
    part = LakeSink(lake, max_rows=10_000, max_age_s=60).build_part("lake", "lake", None)
    part.write_batch([("ticks", ticks.slice(k, 30).cast(nullable)) for k in range(0, ticks.num_rows, 30)])
    part.close()
    landed = delta.read(lake, "ticks")
    assert landed.num_rows == ticks.num_rows
    assert landed.sort_by([("run_id", "ascending"), ("seq", "ascending")]).equals(
        ticks.sort_by([("run_id", "ascending"), ("seq", "ascending")]))


def test_keys_of_rows_without_a_seq_are_remembered_for_a_window_of_commits_not_for_good(tmp_path, monkeypatch):
    monkeypatch.setattr(lake_sink, "SEEN_COMMITS", 3)
    dedupe = lake_sink._Dedupe(tmp_path)

    def late(seqs: list[int]) -> pa.Table:
        return pa.table({"run_id": ["run-a"] * len(seqs), "seq": seqs})

    assert dedupe.fresh("late_ticks", late([1, 2])).num_rows == 2
    assert dedupe.fresh("late_ticks", late([2, 3])).num_rows == 1  # a redelivered row is dropped
    dedupe.fresh("late_ticks", late([4]))
    dedupe.fresh("late_ticks", late([5]))  # the fourth batch: the first one's keys are forgotten
    assert set(dedupe.seen["late_ticks"]) == {("run-a", s) for s in (2, 3, 4, 5)}  # 2 came again in batch two
    assert dedupe.fresh("late_ticks", late([1, 2, 5])).num_rows == 1


def test_a_commit_that_landed_but_was_refused_on_its_retry_is_not_appended_again(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The object store restarting mid-commit: the commit lands, its answer is lost, deltalake's retry of it is
    refused as a concurrent transaction (by itself). The appender sees its own `txn` and does not append the rows
    a second time."""
    schema = pa.schema([("x", pa.int64())])
    appender = delta.Appender(tmp_path, compact_every=None)
    appender.append("numbers", pa.table({"x": [0]}), schema, [("p000", 0)])  # the table and its first commit
    real = delta.write_deltalake

    def lands_then_refused(*args: object, **kwargs: object) -> None:
        monkeypatch.setattr(delta, "write_deltalake", real)
        real(*args, **kwargs)
        raise CommitFailedError("concurrent transaction")

    monkeypatch.setattr(delta, "write_deltalake", lands_then_refused)
    appender.append("numbers", pa.table({"x": [1, 2]}), schema, [("p000", 1)])
    assert sorted(delta.read(tmp_path, "numbers")["x"].to_pylist()) == [0, 1, 2]  # not [0, 1, 1, 2, 2]
    assert delta.transaction_version(tmp_path, "numbers", "p000") == 1


def test_lake_optimize_compacts_tables_outside_the_event_schemas(tmp_path, capsys) -> None:  # noqa: ANN001
    """Before: a lake holding only a `knowledge_graph` table was "no Delta tables in ...", exit 2."""
    from biopilot.cli import main

    for k in range(3):
        table = pa.table({"build_id": [f"b{k}"]})
        delta.append(str(tmp_path), "knowledge_graph", table, table.schema)
    assert main(["lake", "optimize", "--lake", str(tmp_path)]) == 0
    assert "knowledge_graph" in capsys.readouterr().out
    assert sorted(delta.read(str(tmp_path), "knowledge_graph")["build_id"].to_pylist()) == ["b0", "b1", "b2"]
