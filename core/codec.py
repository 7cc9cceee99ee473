"""Wire format of telemetry and assays on NATS: Arrow IPC stream bytes (the hot path) or JSON.

`decode_rows` turns any accepted payload into a table of the expected schema, or raises `PayloadError` with a
reason a human can act on; `validate_ticks` splits a decoded batch into good rows and rejected rows (with the
reason of each rejected row), so one bad row never costs the good ones. Both take the plant kind's vocabulary
(`core.plants`): a reactor's ticks or a patient's vitals, each with its id columns, signals and plausible ranges.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit

from core.events import ASSAYS, TICKS
from core.plants import PLANTS, VITALS_PLAUSIBLE, PlantVocabulary

ARROW_CONTENT_TYPE = "application/vnd.apache.arrow.stream"
JSON_CONTENT_TYPE = "application/json"
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024

# what a sensor can physically report; outside is a transmitter or encoding fault, not a process state
PLAUSIBLE: dict[str, tuple[float, float]] = {
    "do_pct": (0.0, 200.0), "ph": (2.0, 12.0), "temp_c": (-5.0, 80.0), "agitation_rpm": (0.0, 5000.0),
    "air_sccm": (0.0, 1e6), "o2_sccm": (0.0, 1e6), "co2_sccm": (0.0, 1e6), "base_ml": (0.0, 1e7),
    "feed_ml": (0.0, 1e7), "volume_l": (0.0, 1e5), "our_mmol_l_h": (-10.0, 1000.0),
    "cer_mmol_l_h": (-10.0, 1000.0), "capacitance_pf_cm": (0.0, 1000.0),
}
PLAUSIBLE_BY_PLANT: dict[str, dict[str, tuple[float, float]]] = {"bioreactor": PLAUSIBLE,
                                                                  "patient": VITALS_PLAUSIBLE}
BIOREACTOR = PLANTS["bioreactor"]


class PayloadError(ValueError):
    """A payload that cannot become rows; the message is the dead-letter reason."""


def _one_chunk(table: pa.Table) -> pa.Table:
    """`table` with one array per column, so that every reader can use the columns in place (a column of
    several chunks is copied together by each `to_numpy`)."""
    return table.combine_chunks() if table.num_rows and any(c.num_chunks > 1 for c in table.columns) else table


def encode_arrow(batch: pa.RecordBatch | pa.Table) -> bytes:
    """One Arrow IPC stream holding one record batch (a table of several chunks is copied together here, once,
    rather than by every reader)."""
    if isinstance(batch, pa.Table):
        batch = _one_chunk(batch)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write(batch)
    return sink.getvalue().to_pybytes()


def _from_json(payload: bytes, schema: pa.Schema) -> pa.Table:
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PayloadError(f"not Arrow IPC and not JSON: {err.__class__.__name__}: {err}") from None
    rows = obj if isinstance(obj, list) else [obj]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise PayloadError("JSON payload must be an object or a non-empty array of objects")
    missing = [f.name for f in schema if not f.nullable and any(f.name not in r for r in rows)]
    if missing:
        raise PayloadError(f"missing required field(s): {', '.join(missing)}")
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        try:
            if pa.types.is_timestamp(f.type) and any(isinstance(v, int | float) for v in values):
                # epoch seconds
                values = [None if v is None else int(round(float(v) * 1e6)) for v in values]
                columns[f.name] = pa.array(values, pa.int64()).cast(f.type)
            elif pa.types.is_timestamp(f.type):
                columns[f.name] = pa.array(values, pa.string()).cast(f.type)  # ISO-8601
            else:
                columns[f.name] = pa.array(values, f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as err:
            raise PayloadError(f"field {f.name}: {err}") from None
    return pa.table(columns, schema=schema)


def _pooled(payload: bytes) -> pa.Buffer:
    """`payload` copied into Arrow's memory pool (a small cost: docs/PERFORMANCE.md). The rows read from it are
    used in place, and the flow's Delta sink holds them until their micro-batch commits, a second or more. Read
    from the `bytes` the NATS client made, they kept those in glibc's heap that long, between the thread's
    short-lived buffers; glibc keeps what is freed, so its heaps grew to every new peak of rows in flight,
    fragmented, and the flow's RSS rose through a soak. Arrow's pool gives back what it frees."""
    buffer = pa.allocate_buffer(len(payload))
    with pa.FixedSizeBufferWriter(buffer) as writer:
        writer.write(payload)
    return buffer


def decode_rows(payload: bytes, schema: pa.Schema = TICKS) -> pa.Table:
    """Arrow IPC stream or JSON (object or array) -> a table cast to `schema`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES} byte limit")
    if not payload:
        raise PayloadError("empty payload")
    if payload[:1] in (b"{", b"[") or payload[:1].isspace():
        return _from_json(payload, schema)
    try:
        table = pa.ipc.open_stream(_pooled(payload)).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise PayloadError(f"not Arrow IPC and not JSON: {err}") from None
    table = _one_chunk(table)  # another producer's several record batches: copied together once
    if table.schema.equals(schema):  # what our own producers send: nothing to convert
        return table
    present = set(table.column_names)
    missing = [f.name for f in schema if f.name not in present and not f.nullable]
    if missing:
        raise PayloadError(f"missing required column(s): {', '.join(missing)}")
    columns = []
    for f in schema:
        if f.name in present:
            try:
                columns.append(table[f.name].cast(f.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise PayloadError(f"column {f.name}: cannot cast {table[f.name].type} to {f.type}: {err}") from None
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema.with_metadata(None))


@dataclass
class Checked:
    good: pa.Table
    bad: pa.Table
    reasons: list[str]


@dataclass(frozen=True)
class _Checks:
    """A plant kind's row checks: its columns, plausible ranges, and every reason a row can get, in the order
    the checks run (a row gets the first that applies)."""

    id_columns: tuple[str, ...]
    signals: tuple[str, ...]
    lo: np.ndarray
    hi: np.ndarray
    reasons: list[str]
    readings_from: int  # the code of the first signal's first check
    seq_negative: int


@cache
def _checks(plant: str) -> _Checks:
    vocab = PLANTS[plant]
    plausible = PLAUSIBLE_BY_PLANT[plant]
    reasons = [f"{name} is missing" for name in vocab.id_columns]
    for name in vocab.signals:
        lo, hi = plausible[name]
        reasons += [f"{name} is infinite", f"{name} outside the plausible range [{lo:g}, {hi:g}]"]
    reasons += ["seq is negative", "seq repeated or not increasing with ts within the run"]
    readings_from = len(vocab.id_columns) + 1
    return _Checks(vocab.id_columns, vocab.signals, np.array([plausible[name][0] for name in vocab.signals]),
                   np.array([plausible[name][1] for name in vocab.signals]), reasons, readings_from,
                   readings_from + 2 * len(vocab.signals))


@njit(cache=True, nogil=True)
def _check_readings(x: np.ndarray, lo: float, hi: float, infinite_code: int, code: np.ndarray) -> bool:
    """Mark the still unmarked rows whose reading is infinite (`infinite_code`) or implausible (the next code);
    whether any reading is NaN. One pass per signal, with no copy of the column."""
    has_nan = False
    for i in range(x.shape[0]):
        v = x[i]
        if np.isnan(v):
            has_nan = True
        elif code[i] == 0:
            if np.isinf(v):
                code[i] = infinite_code
            elif v < lo or v > hi:
                code[i] = infinite_code + 1
    return has_nan


def validate_ticks(table: pa.Table, vocab: PlantVocabulary = BIOREACTOR) -> Checked:
    """Row checks: identity and event time present, readings finite and physically plausible, seq unique and
    increasing with event time per run within the payload. NaN readings count as missing (null). `vocab`: whose
    readings (a reactor's ticks, a patient's vitals)."""
    checks = _checks(vocab.name)
    n = table.num_rows
    code = np.zeros(n, dtype=np.int16)  # 0 = fine, k = checks.reasons[k - 1]
    for k, name in enumerate(checks.id_columns):
        if table[name].null_count:
            missing = table[name].is_null().to_numpy(zero_copy_only=False)
            code[missing & (code == 0)] = k + 1
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in checks.signals}  # views, unless nulls
    has_nan = False
    for j, name in enumerate(checks.signals):
        first_code = checks.readings_from + 2 * j
        has_nan |= _check_readings(columns[name], checks.lo[j], checks.hi[j], first_code, code)
    seq = table["seq"].fill_null(-1).to_numpy() if table["seq"].null_count else table["seq"].to_numpy()
    code[(seq < 0) & (code == 0)] = checks.seq_negative
    _check_order(table, seq, code, checks)
    ok = code == 0
    if ok.all():
        return Checked(_nan_to_null(table, columns) if has_nan else table, table.slice(0, 0), [])
    mask = pa.array(ok)
    good = table.filter(mask)
    if has_nan:
        good = _nan_to_null(good, {name: x[ok] for name, x in columns.items()})
    return Checked(good, table.filter(pc.invert(mask)), [checks.reasons[c - 1] for c in code[~ok]])


def _check_order(table: pa.Table, seq: np.ndarray, code: np.ndarray, checks: _Checks) -> None:
    """seq is strictly increasing at the source: delivery may reorder rows, but sorted by seq a run's event
    times must increase too, and a seq appears once. Rows without an identity or with a negative seq are left
    out (they are rejected already, and must not take a good neighbour with them)."""
    if code.any():
        usable = np.flatnonzero((code == 0) | ((code >= checks.readings_from) & (code < checks.seq_negative)))
    else:
        usable = None
    part = table if usable is None else table.take(usable)
    if part.num_rows < 2:
        return
    s = seq if usable is None else seq[usable]
    ts = part["ts"].cast(pa.int64()).to_numpy()
    runs = part["run_id"].combine_chunks().dictionary_encode()
    if len(runs.dictionary) == 1 and np.all(np.diff(s) > 0):  # the common case: one run, in order
        bad = np.flatnonzero(np.diff(ts) <= 0) + 1
    else:
        run = runs.indices.to_numpy()
        order = np.lexsort((s, run))
        run, s, ts = run[order], s[order], ts[order]
        bad = order[np.flatnonzero((run[1:] == run[:-1]) & ((s[1:] == s[:-1]) | (ts[1:] <= ts[:-1]))) + 1]
    rows = bad if usable is None else usable[bad]
    code[rows[code[rows] == 0]] = checks.seq_negative + 1


def _nan_to_null(table: pa.Table, columns: dict[str, np.ndarray]) -> pa.Table:
    for name, x in columns.items():
        nan = np.isnan(x)
        if nan.any():
            idx = table.schema.get_field_index(name)
            table = table.set_column(idx, table.schema.field(name), pa.array(x, mask=nan))
    return table


def decode_assays(payload: bytes) -> pa.Table:
    return decode_rows(payload, ASSAYS)


def json_safe(value: object) -> object:
    """`value` with every NaN or infinite float (a median not reached, a hazard ratio without events) as None, and
    numpy scalars as Python ones: what `--json` prints is then strict JSON.

    >>> json_safe({"a": [1.0, float("inf")], "b": np.float64("nan")})
    {'a': [1.0, None], 'b': None}
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
