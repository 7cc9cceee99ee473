"""Wire format of telemetry and assays on NATS: Arrow IPC stream bytes (the hot path) or JSON.

`decode_rows` turns any accepted payload into a table of the expected schema, or raises `PayloadError` with a
reason a human can act on; `validate_ticks` splits a decoded batch into good rows and rejected rows (with the
reason of each rejected row), so one bad row never costs the good ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biopilot.events import ASSAYS, TICK_SIGNALS, TICKS

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


_PLAUSIBLE_LO = np.array([PLAUSIBLE[name][0] for name in TICK_SIGNALS])
_PLAUSIBLE_HI = np.array([PLAUSIBLE[name][1] for name in TICK_SIGNALS])


class PayloadError(ValueError):
    """A payload that cannot become rows; the message is the dead-letter reason."""


def encode_arrow(batch: pa.RecordBatch | pa.Table) -> bytes:
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


def decode_rows(payload: bytes, schema: pa.Schema = TICKS) -> pa.Table:
    """Arrow IPC stream or JSON (object or array) -> a table cast to `schema`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES} byte limit")
    if not payload:
        raise PayloadError("empty payload")
    if payload[:1] in (b"{", b"[") or payload[:1].isspace():
        return _from_json(payload, schema)
    try:
        table = pa.ipc.open_stream(payload).read_all()
    except (pa.ArrowInvalid, OSError) as err:
        raise PayloadError(f"not Arrow IPC and not JSON: {err}") from None
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


def validate_ticks(table: pa.Table) -> Checked:
    """Row checks: identity and event time present, readings finite and physically plausible, seq unique and
    increasing with event time per run within the payload. NaN readings count as missing (null)."""
    n = table.num_rows
    code = np.zeros(n, dtype=np.int16)  # 0 = fine, k = why[k - 1]; the first failed check is the reason
    why: list[str] = []

    def reject(mask: np.ndarray, reason: str) -> None:
        if mask.any():
            why.append(reason)
            code[mask & (code == 0)] = len(why)

    for name in ("run_id", "reactor_id", "seq", "ts"):
        if table[name].null_count:
            reject(table[name].is_null().to_numpy(zero_copy_only=False), f"{name} is missing")
    # all readings at once (a live message is ~50 rows: per-column numpy calls were most of its cost)
    X = np.column_stack([table[name].to_numpy(zero_copy_only=False) for name in TICK_SIGNALS]).astype(np.float64)
    with np.errstate(invalid="ignore"):
        infinite = np.isinf(X)
        implausible = ~np.isnan(X) & ((X < _PLAUSIBLE_LO) | (X > _PLAUSIBLE_HI))
    if infinite.any() or implausible.any():  # name the reasons, signal by signal as listed
        for j, name in enumerate(TICK_SIGNALS):
            lo, hi = PLAUSIBLE[name]
            reject(infinite[:, j], f"{name} is infinite")
            reject(implausible[:, j], f"{name} outside the plausible range [{lo:g}, {hi:g}]")
    columns = {name: X[:, j] for j, name in enumerate(TICK_SIGNALS)}
    # seq is strictly increasing at the source: delivery may reorder rows, but sorted by seq a run's event
    # times must increase too, and a seq appears once
    def filled(col: pa.ChunkedArray, value: object) -> pa.ChunkedArray:
        return col.fill_null(value) if col.null_count else col

    seq = filled(table["seq"], -1).to_numpy()
    ts = filled(table["ts"].cast(pa.int64()), 0).to_numpy()
    runs = filled(table["run_id"], "").to_numpy(zero_copy_only=False)
    reject(seq < 0, "seq is negative")
    single_run = n == 0 or (runs == runs[0]).all()
    order = np.arange(n) if single_run and np.all(np.diff(seq) > 0) else np.lexsort((seq, runs))
    same_run = np.zeros(n, dtype=bool)
    same_run[1:] = runs[order][1:] == runs[order][:-1]
    bad_pair = np.zeros(n, dtype=bool)
    bad_pair[1:] = same_run[1:] & ((seq[order][1:] == seq[order][:-1]) | (ts[order][1:] <= ts[order][:-1]))
    conflict = np.zeros(n, dtype=bool)
    conflict[order] = bad_pair
    reject(conflict, "seq repeated or not increasing with ts within the run")
    ok = code == 0
    if ok.all():
        good = table
        if np.isnan(X).any():
            good = _nan_to_null(table, columns)
        return Checked(good, table.slice(0, 0), [])
    mask = pa.array(ok)
    good = _nan_to_null(table.filter(mask), {k: v[ok] for k, v in columns.items()})
    return Checked(good, table.filter(pc.invert(mask)), [why[c - 1] for c in code[~ok]])


def _nan_to_null(table: pa.Table, columns: dict[str, np.ndarray]) -> pa.Table:
    for name, x in columns.items():
        nan = np.isnan(x)
        if nan.any():
            idx = table.schema.get_field_index(name)
            table = table.set_column(idx, table.schema.field(name), pa.array(x, mask=nan))
    return table


def decode_assays(payload: bytes) -> pa.Table:
    return decode_rows(payload, ASSAYS)
