"""Row checks of a decoded tick batch: each bad row is rejected with the first reason that applies, the good
rows of the same batch pass untouched, NaN readings become nulls; a message travels as one record batch, and the
decoded rows do not keep the payload alive."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.codec import decode_rows, encode_arrow, validate_ticks
from core.events import TICK_SIGNALS, TICKS
from tests.stream_helpers import make_ticks


@pytest.fixture(scope="module")
def ticks() -> pa.Table:
    return decode_rows(encode_arrow(make_ticks(reactors=2, ticks=40, seed=2).cast(TICKS)))


def _with(table: pa.Table, name: str, row: int, value: object) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(name), table.schema.field(name),
                            pa.array(values, table.schema.field(name).type))


def test_a_clean_batch_passes_whole(ticks):
    checked = validate_ticks(ticks)
    assert checked.good.equals(ticks)
    assert checked.bad.num_rows == 0 and checked.reasons == []


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("temp_c", float("inf"), "temp_c is infinite"),
    ("ph", 14.5, "ph outside the plausible range [2, 12]"),
    ("do_pct", -3.0, "do_pct outside the plausible range [0, 200]"),
    ("seq", -1, "seq is negative"),  # and only that row: its neighbours keep their order
    ("run_id", None, "run_id is missing"),
    ("ts", None, "ts is missing"),
])
def test_a_bad_row_is_rejected_with_its_reason_and_the_rest_pass(ticks, name, value, reason):
    bad = _with(ticks, name, 7, value)
    checked = validate_ticks(bad)
    assert checked.reasons == [reason]
    assert checked.bad.num_rows == 1 and checked.good.num_rows == ticks.num_rows - 1
    assert bad.slice(7, 1)["seq"].to_pylist() == checked.bad["seq"].to_pylist()


def test_the_first_failed_check_names_the_row(ticks):
    # infinite before implausible, and the signals in their listed order
    bad = _with(_with(ticks, TICK_SIGNALS[3], 5, 1e9), TICK_SIGNALS[1], 5, float("-inf"))
    assert validate_ticks(bad).reasons == [f"{TICK_SIGNALS[1]} is infinite"]


def test_a_repeated_seq_or_time_going_backwards_within_a_run_is_rejected(ticks):
    run = ticks["run_id"][0].as_py()
    rows = np.flatnonzero(pc.equal(ticks["run_id"], run).to_numpy(zero_copy_only=False))
    repeated = _with(ticks, "seq", int(rows[3]), ticks["seq"][int(rows[2])].as_py())
    assert validate_ticks(repeated).reasons == ["seq repeated or not increasing with ts within the run"]
    backwards = _with(ticks, "ts", int(rows[3]), ticks["ts"][int(rows[1])].as_py())
    assert validate_ticks(backwards).reasons == ["seq repeated or not increasing with ts within the run"]


def test_rows_out_of_order_and_interleaved_runs_are_fine(ticks):
    shuffled = ticks.take(np.random.default_rng(0).permutation(ticks.num_rows))
    checked = validate_ticks(shuffled)
    assert checked.reasons == [] and checked.good.num_rows == ticks.num_rows


def test_nan_readings_become_nulls(ticks):
    checked = validate_ticks(_with(ticks, "ph", 4, float("nan")))
    assert checked.bad.num_rows == 0
    assert checked.good["ph"].null_count == 1 and checked.good["ph"][4].as_py() is None
    assert checked.good["temp_c"].equals(ticks["temp_c"])


def test_a_message_is_one_record_batch_and_a_payload_of_several_decodes_to_one_chunk(ticks):
    parts = pa.concat_tables([ticks.slice(0, 30), ticks.slice(30)])  # two chunks per column
    assert pa.ipc.open_stream(encode_arrow(parts)).read_all()["seq"].num_chunks == 1
    sink = pa.BufferOutputStream()  # another producer's payload: one record batch per chunk
    with pa.ipc.new_stream(sink, parts.schema) as writer:
        writer.write_table(parts)
    decoded = decode_rows(sink.getvalue().to_pybytes())
    assert all(column.num_chunks == 1 for column in decoded.columns)
    assert decoded.equals(ticks)


def test_decoded_rows_keep_no_reference_to_the_payload(ticks):
    """The flow's Delta sink holds rows for a second or more: rows read in place from the NATS client's `bytes`
    kept them in glibc's heap that long, and the flow's memory rose with every peak of rows in flight."""
    payload = encode_arrow(ticks)
    references = sys.getrefcount(payload)
    decoded = decode_rows(payload)
    assert sys.getrefcount(payload) == references
    assert decoded.equals(ticks)
