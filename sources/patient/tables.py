"""The patient plant's Arrow tables, assembled from the simulator's arrays: vitals ticks, labs, doses, runs and
labels (schemas in core/events.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

from core.events import DOSES, LABELS, LABS, RUNS, VITAL_SIGNALS, VITALS, Label, Run, to_table
from sources.patient.scenarios import PatientScenario

US_PER_H = 3_600_000_000


def _ts(start: datetime, hours: np.ndarray) -> pa.Array:
    us = int(start.timestamp() * 1e6) + np.round(np.asarray(hours, float) * US_PER_H).astype(np.int64)
    return pa.array(us, type=pa.int64()).cast(VITALS.field("ts").type)


def _floats(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, float)
    with np.errstate(invalid="ignore"):  # inf - inf is NaN too: then the mask is built, and finds none
        if not np.isnan(values.sum()):  # no NaN (a NaN makes the sum NaN): one pass, no mask to build
            return pa.array(values)
    return pa.array(values, mask=np.isnan(values))


_REPEATED: dict[tuple, tuple[pa.Array, pa.Array]] = {}  # the id columns of the last chunk shapes (immutable)


def _repeated_ids(run_ids: list[str], patient_ids: list[str], nt: int) -> tuple[pa.Array, pa.Array]:
    """The run and patient id columns, each id repeated `nt` times. A cohort's chunks share them, so they are
    built once per shape: taking a million strings cost as much as the whole vitals pass (docs/PERFORMANCE.md)."""
    key = (tuple(run_ids), tuple(patient_ids), nt)
    if key not in _REPEATED:
        who = pa.array(np.repeat(np.arange(len(run_ids), dtype=np.int32), nt))
        if len(_REPEATED) >= 4:
            _REPEATED.pop(next(iter(_REPEATED)))
        _REPEATED[key] = (pa.array(run_ids, pa.string()).take(who), pa.array(patient_ids, pa.string()).take(who))
    return _REPEATED[key]


def vitals_batch(run_ids: list[str], patient_ids: list[str], start: datetime, dt_h: float, seq0: int,
                 vitals: dict[str, np.ndarray]) -> pa.RecordBatch:
    """Rows patient-major: every tick of patient 0, then patient 1... NaN readings become null.

    >>> from datetime import UTC, datetime
    >>> v = {name: np.full((2, 3), 1.0) for name in VITAL_SIGNALS}
    >>> v["spo2_pct"][1, 2] = np.nan
    >>> b = vitals_batch(["a", "b"], ["p1", "p2"], datetime(2026, 1, 5, tzinfo=UTC), 5 / 60, 10, v)
    >>> b.num_rows, b.column("seq").to_pylist(), b.column("spo2_pct").null_count
    (6, [10, 11, 12, 10, 11, 12], 1)
    """
    n, nt = vitals[VITAL_SIGNALS[0]].shape
    seq = np.tile(seq0 + np.arange(nt, dtype=np.int64), n)
    tick_us = round(dt_h * US_PER_H)
    # a whole number of microseconds a tick (5 min): the times in integers, as `_ts` rounds them, in one pass
    ts = (pa.array(int(start.timestamp() * 1e6) + seq * tick_us).cast(VITALS.field("ts").type)
          if abs(dt_h * US_PER_H - tick_us) < 1e-6 else _ts(start, seq * dt_h))
    cols = [*_repeated_ids(run_ids, patient_ids, nt), pa.array(seq), ts]
    cols += [_floats(vitals[name].reshape(-1)) for name in VITAL_SIGNALS]
    return pa.RecordBatch.from_arrays(cols, schema=VITALS)


def labs_table(run_ids: list[str], patient_ids: list[str], start: datetime, patient: np.ndarray,
               sample_h: np.ndarray, reported_h: np.ndarray, inr: np.ndarray, hb_g_dl: np.ndarray) -> pa.Table:
    """One row per lab draw (`patient` indexes the block's lists)."""
    who = pa.array(np.asarray(patient, np.int32))
    return pa.Table.from_arrays(
        [pa.array(run_ids, pa.string()).take(who), pa.array(patient_ids, pa.string()).take(who),
         _ts(start, sample_h), _ts(start, reported_h), _floats(inr), _floats(hb_g_dl)], schema=LABS)


def doses_table(run_ids: list[str], patient_ids: list[str], start: datetime, dose_h: float, drug: str,
                dose_mg: np.ndarray, taken: np.ndarray) -> pa.Table:
    """One row per patient for one dose time of one drug."""
    n = len(run_ids)
    return pa.Table.from_arrays(
        [pa.array(run_ids, pa.string()), pa.array(patient_ids, pa.string()), _ts(start, np.full(n, dose_h)),
         pa.array([drug] * n, pa.string()), _floats(dose_mg), pa.array(np.asarray(taken, bool))], schema=DOSES)


def runs_table(run_ids: list[str], patient_ids: list[str], scenario: PatientScenario, seed: int,
               ended_h: float | None) -> pa.Table:
    cfg = json.dumps(scenario.model_dump(mode="json"), sort_keys=True)
    end = None if ended_h is None else scenario.start + timedelta(hours=ended_h)
    return to_table([Run(rid, pid, "patient", scenario.name, seed, cfg, scenario.start, end)
                     for rid, pid in zip(run_ids, patient_ids, strict=True)], RUNS)


def labels_table(labels: list[Label]) -> pa.Table:
    return to_table(labels, LABELS)
