"""One patient's vitals, labs and doses as sorted arrays on one clock (epoch hours): what the model's encoding
(`outcomes.features`) and the patient twin's forecast (`outcomes.twin_features`) both read, in a module of its
own so that neither imports the other for it.

>>> PatientArrays.empty().vitals.shape
(0, 6)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from core.events import VITAL_SIGNALS

US_PER_H = 3_600_000_000


@dataclass(frozen=True)
class PatientArrays:
    """One patient's rows as sorted arrays; times in epoch hours."""

    vitals_h: np.ndarray
    vitals: np.ndarray  # [n, 6] in VITAL_SIGNALS order, NaN = missing
    lab_sample_h: np.ndarray
    lab_reported_h: np.ndarray
    inr: np.ndarray
    hb_g_dl: np.ndarray
    dose_h: np.ndarray
    dose_drug: np.ndarray  # str
    dose_mg: np.ndarray  # taken mg (0 where missed)

    @classmethod
    def empty(cls) -> PatientArrays:
        e = np.zeros(0)
        return cls(e, np.zeros((0, len(VITAL_SIGNALS))), e, e, e, e, e, np.zeros(0, dtype=object), e)

    @classmethod
    def from_tables(cls, vitals: pa.Table, labs: pa.Table, doses: pa.Table) -> PatientArrays:
        """From one patient's VITALS, LABS and DOSES tables (any order)."""
        vh = _hours(vitals["ts"])
        vo = np.argsort(vh, kind="stable")
        v = np.column_stack([vitals[s].to_numpy(zero_copy_only=False).astype(float) for s in VITAL_SIGNALS]
                            ) if vitals.num_rows else np.zeros((0, len(VITAL_SIGNALS)))
        rh = _hours(labs["reported_ts"])
        lo = np.argsort(rh, kind="stable")
        dh = _hours(doses["ts"])
        do = np.argsort(dh, kind="stable")
        taken = np.asarray(doses["taken"].fill_null(True).to_numpy(zero_copy_only=False), bool)
        mg = np.where(taken, np.nan_to_num(doses["dose_mg"].to_numpy(zero_copy_only=False).astype(float)), 0.0)
        return cls(vh[vo], v[vo], _hours(labs["sample_ts"])[lo], rh[lo],
                   labs["inr"].to_numpy(zero_copy_only=False).astype(float)[lo],
                   labs["hb_g_dl"].to_numpy(zero_copy_only=False).astype(float)[lo], dh[do],
                   np.asarray(doses["drug"].to_pylist(), dtype=object)[do], mg[do])


def _hours(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    us = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(us, float) / US_PER_H


def epoch_hours(when: datetime) -> float:
    return when.timestamp() / 3600.0
