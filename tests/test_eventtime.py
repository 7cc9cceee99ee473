"""Event-time reordering of one reactor's ticks: what is released, in what order, and what is late or a duplicate
do not depend on how the ticks were batched or delivered; nothing is dropped silently."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from core.eventtime import ReorderBuffer, beyond_horizon

MINUTE_US = 60_000_000


def _ticks(seqs: list[int], run: str = "run-a", start_us: int = 0) -> pa.Table:
    seq = np.array(seqs, dtype=np.int64)
    return pa.table({"run_id": [run] * len(seq), "seq": seq,
                     "ts": pa.array(start_us + seq * MINUTE_US, pa.int64()).cast(pa.timestamp("us", tz="UTC"))})


def _drain(buffer: ReorderBuffer, batches: list[pa.Table]) -> tuple[list[int], list[int], int]:
    released, late, duplicates = [], [], 0
    for batch in batches:
        out = buffer.push(batch)
        released += [] if out.ordered is None else out.ordered["seq"].to_pylist()
        late += [] if out.late is None else out.late["seq"].to_pylist()
        duplicates += out.duplicates
    out = buffer.advance_to(10**15)
    released += [] if out.ordered is None else out.ordered["seq"].to_pylist()
    return released, late, duplicates


@pytest.mark.parametrize("seed", range(5))
def test_ticks_shuffled_within_the_lateness_come_out_in_order_however_batched(seed):
    rng = np.random.default_rng(seed)
    seqs = np.arange(300)
    jitter = seqs + rng.uniform(-4, 4, seqs.size)  # at most 8 minutes out of place; lateness 10 minutes
    shuffled = seqs[np.argsort(jitter)]
    cuts = np.sort(rng.choice(np.arange(1, 300), size=20, replace=False))
    batches = [_ticks(part.tolist()) for part in np.split(shuffled, cuts)]
    released, late, duplicates = _drain(ReorderBuffer(10 * MINUTE_US), batches)
    assert released == list(range(300)) and late == [] and duplicates == 0


def test_a_tick_behind_the_watermark_is_late_not_dropped_and_its_gap_closes():
    buffer = ReorderBuffer(5 * MINUTE_US)
    released, late, _ = _drain(buffer, [_ticks(list(range(0, 50))), _ticks(list(range(51, 100))), _ticks([50]),
                                        _ticks([50])])
    assert late == [50]  # 49 minutes behind the newest tick, beyond the 5 allowed
    assert released == [s for s in range(100) if s != 50]
    # the second copy of 50 was a duplicate: its gap had been filled by the late one
    assert buffer.push(_ticks([50])).duplicates == 1


def test_a_redelivered_batch_is_counted_as_duplicates_whether_released_or_pending():
    buffer = ReorderBuffer(10 * MINUTE_US)
    first = buffer.push(_ticks(list(range(0, 40))))
    assert first.ordered["seq"].to_pylist() == list(range(0, 30))  # the last 10 minutes wait
    again = buffer.push(_ticks(list(range(0, 40))))
    assert again.duplicates == 40 and again.ordered is None and again.late is None


def test_the_next_run_is_fresh_although_its_seqs_start_again():
    next_run = _ticks(list(range(0, 10)), run="run-b", start_us=200 * MINUTE_US)
    released, late, duplicates = _drain(ReorderBuffer(MINUTE_US), [_ticks(list(range(100, 120))), next_run])
    assert released == list(range(100, 120)) + list(range(0, 10))
    assert late == [] and duplicates == 0


def test_a_snapshot_from_before_the_pending_seq_index_still_detects_duplicates():
    buffer = ReorderBuffer(10 * MINUTE_US)
    buffer.push(_ticks(list(range(0, 40))))
    old = pickle.loads(pickle.dumps(buffer))
    del old.__dict__["pending_seq_max"]  # as pickled by the previous version
    assert old.push(_ticks([35, 36])).duplicates == 2
    assert old.push(_ticks([40, 41])).duplicates == 0


def test_pending_rows_do_not_keep_the_message_they_were_sliced_from_alive():
    buffer = ReorderBuffer(5 * MINUTE_US)
    message = _ticks(list(range(3000)))
    buffer.push(message)  # the last 5 minutes stay pending: 5 rows of the 3,000-tick message
    assert buffer.pending.num_rows == 5
    assert buffer.pending.get_total_buffer_size() < 5_000 < message.get_total_buffer_size()
    restored = pickle.loads(snapshot := pickle.dumps(buffer))  # an epoch's snapshot: the 5 rows, not the message
    assert len(snapshot) < 5_000
    assert _drain(restored, [_ticks([3002, 3000, 3001])]) == _drain(buffer, [_ticks([3002, 3000, 3001])])


def test_a_small_message_stays_pending_as_it_came():
    buffer = ReorderBuffer(5 * MINUTE_US)
    message = _ticks(list(range(50)))
    buffer.push(message)
    first = buffer.pending.column("seq").chunk(0)
    assert first.buffers()[1].address == message.column("seq").chunk(0).buffers()[1].address  # not copied


def test_a_lost_message_is_one_gap_range_and_its_late_ticks_still_close_it():
    buffer = ReorderBuffer(5 * MINUTE_US)
    released, late, _ = _drain(buffer, [_ticks(list(range(0, 100))), _ticks(list(range(10_100, 10_200)))])
    assert released == list(range(100)) + list(range(10_100, 10_200))
    gaps = buffer.gaps["run-a"]
    assert (gaps.starts.tolist(), gaps.ends.tolist()) == ([100], [10_100])  # one range, not 10,000 seqs
    assert len(pickle.dumps(buffer)) < 5_000
    lost = buffer.push(_ticks(list(range(100, 10_100))))  # redelivered at last: late, none a duplicate
    assert lost.late.num_rows == 10_000 and lost.duplicates == 0
    assert "run-a" not in buffer.gaps
    assert buffer.push(_ticks([5_000, 7_000])).duplicates == 2


def test_a_gap_filled_in_the_middle_splits_and_the_rest_still_counts_as_late():
    buffer = ReorderBuffer(MINUTE_US)
    _drain(buffer, [_ticks(list(range(0, 10))), _ticks(list(range(20, 30)))])
    assert buffer.push(_ticks([12, 15])).late["seq"].to_pylist() == [12, 15]
    again = buffer.push(_ticks([10, 11, 12, 13, 14, 15, 19]))
    assert again.late["seq"].to_pylist() == [10, 11, 13, 14, 19] and again.duplicates == 2


def test_a_snapshot_with_gaps_as_a_set_of_seqs_still_tells_late_from_duplicate():
    buffer = ReorderBuffer(MINUTE_US)
    _drain(buffer, [_ticks(list(range(0, 10))), _ticks(list(range(20, 30)))])
    state = buffer.__dict__ | {"gaps": {"run-a": set(range(10, 20))}}  # as pickled by the previous version
    old = ReorderBuffer.__new__(ReorderBuffer)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    out = old.push(_ticks([5, 15]))
    assert out.late["seq"].to_pylist() == [15] and out.duplicates == 1


HOUR_US = 60 * MINUTE_US


def test_a_message_spanning_days_in_small_steps_is_within_the_horizon():
    ts = np.arange(10_000, dtype=np.int64) * MINUTE_US  # a replay's or benchmark's week in one message
    assert beyond_horizon(ts, reference_us=-MINUTE_US, horizon_us=48 * HOUR_US) is None


def test_a_jump_past_the_horizon_is_refused_with_everything_beyond_it_in_any_row_order():
    ts = np.array([10, 9_000, 11, 9_001, 12], dtype=np.int64) * HOUR_US
    far = beyond_horizon(ts, reference_us=0, horizon_us=48 * HOUR_US)
    assert far.tolist() == [False, True, False, True, False]


def test_times_in_the_past_are_never_beyond_the_horizon():
    ts = np.array([-10_000, -5, 1], dtype=np.int64) * HOUR_US  # late, perhaps, but they move nothing forward
    assert beyond_horizon(ts, reference_us=0, horizon_us=48 * HOUR_US) is None


def test_the_latest_event_time_counts_ticks_and_explicit_watermarks():
    buffer = ReorderBuffer(lateness_us=0)
    assert buffer.latest_us is None
    buffer.push(_ticks([0, 1, 2]))
    assert buffer.latest_us == 2 * MINUTE_US
    buffer.advance_to(HOUR_US)
    assert buffer.latest_us == HOUR_US
