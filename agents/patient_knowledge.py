"""The patient knowledge base: how each adverse event and monitor fault shows in what the lake holds of a patient
(`vitals`, `labs`, `doses`, `patients`; never `labels`), and the evidence functions that read it.

Each cause has a *family*, which says where its evidence lives:
- "vitals" (major_bleed, sepsis, hypotension, bradycardia): the vitals move together in a known pattern. The
  expected pattern is the adverse-event catalogue's own time course (`adverse_events.event_effects`) at several
  hours after onset, in units of how far a resting patient's reading wanders (`NORMAL_SPREAD`), so a bleed
  (pulse first, pressure once it decompensates, no fever) and sepsis (fever, pulse, breathing) read differently
  at every stage; a bleed is also a fall of Hb in the labs.
- "inr_high" (over_anticoagulation, drug_interaction) and "inr_low" (subtherapeutic, nonadherence): a lab INR
  out of range; what tells the causes apart is in the doses: a co-medication (amiodarone) started in the weeks
  before, or warfarin doses missed in the days before the sample.
- "sensor" (sensor_stuck, sensor_dropout, sensor_drift): one reading frozen, missing, or wandering away slowly on
  its own while the readings that move with it in a patient stay where they were.
Root causes and actions come from the catalogue (`sources.patient.adverse_events.ADVERSE_EVENTS`), so labels and
diagnoses speak the same words.

>>> SIGNATURES["drug_interaction"].family, SIGNATURES["sensor_dropout"].sensor
('inr_high', 'missing')
>>> t = SIGNATURES["sepsis"].templates()
>>> t.shape[1] == len(VITAL_SIGNALS), bool(t[-1, VITAL_SIGNALS.index("temp_c")] > 0.5)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.events import VITAL_SIGNALS
from sources.patient.adverse_events import ADVERSE_EVENTS, event_effects
from sources.patient.warfarin import CL_REDUCTION, EC50_MG_PER_L

# how far a resting patient's reading wanders from its circadian baseline (about the OU spread of
# sources/patient/vitals.py at typical baselines): the unit in which vitals patterns are compared
NORMAL_SPREAD = {"hr_bpm": 6.5, "sbp_mmhg": 11.0, "dbp_mmhg": 7.0, "spo2_pct": 0.8, "rr_min": 1.5, "temp_c": 0.15}
UNITS = {"hr_bpm": "bpm", "sbp_mmhg": "mmHg", "dbp_mmhg": "mmHg", "spo2_pct": "%", "rr_min": "/min",
         "temp_c": "°C", "inr": "", "hb_g_dl": "g/dL"}
STAGES_H = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0)  # hours after onset at which each pattern is expected
# readings that move with each vital in a patient (a real change drags them along; a drifting probe does not)
COUPLED: dict[str, tuple[str, ...]] = {
    "hr_bpm": ("rr_min", "sbp_mmhg"), "sbp_mmhg": ("dbp_mmhg", "hr_bpm"), "dbp_mmhg": ("sbp_mmhg", "hr_bpm"),
    "spo2_pct": ("rr_min", "hr_bpm"), "rr_min": ("hr_bpm", "spo2_pct"), "temp_c": ("hr_bpm", "rr_min")}
COMEDICATIONS = ("amiodarone", "enzyme_inducer")
COMEDICATION_GAP = timedelta(days=2)  # doses further apart than this are two courses
DAY = timedelta(days=1)


@dataclass(frozen=True)
class PatientSignature:
    cause: str
    family: str  # "vitals" | "inr_high" | "inr_low" | "sensor"
    sensor: str | None = None  # "frozen" | "missing" | "lone" (family "sensor")
    checks: tuple[str, ...] = ()  # what to measure or ask to confirm

    @property
    def root_cause(self) -> str:
        return ADVERSE_EVENTS[self.cause].root_cause

    @property
    def action(self) -> str:
        return ADVERSE_EVENTS[self.cause].action

    def templates(self) -> np.ndarray:
        """(stages, vitals): the expected vitals pattern at each of `STAGES_H` after onset, each row of unit
        length in `NORMAL_SPREAD` units (family "vitals" only)."""
        return _templates(self.cause)


@cache
def _templates(cause: str) -> np.ndarray:
    effects = event_effects(cause, np.array(STAGES_H), 1.0)
    rows = np.stack([effects[s] / NORMAL_SPREAD[s] for s in VITAL_SIGNALS], axis=1)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


SIGNATURES: dict[str, PatientSignature] = {s.cause: s for s in (
    PatientSignature("major_bleed", "vitals", checks=("Hb now", "look for the source (stool, urine, wounds)",
                                                      "INR")),
    PatientSignature("sepsis", "vitals", checks=("blood cultures", "lactate", "white cell count, CRP")),
    PatientSignature("hypotension", "vitals", checks=("manual blood pressure", "fluid balance",
                                                      "antihypertensive doses")),
    PatientSignature("bradycardia", "vitals", checks=("12-lead ECG", "metoprolol dose and CYP2D6 phenotype")),
    PatientSignature("over_anticoagulation", "inr_high", checks=("repeat INR", "signs of bleeding",
                                                                 "intercurrent illness, diet, new drugs")),
    PatientSignature("drug_interaction", "inr_high", checks=("medication list: amiodarone and other CYP2C9 "
                                                             "inhibitors", "weekly INR")),
    PatientSignature("subtherapeutic", "inr_low", checks=("adherence", "diet (vitamin K)", "enzyme inducers")),
    PatientSignature("nonadherence", "inr_low", checks=("ask about missed tablets", "pill count")),
    PatientSignature("sensor_stuck", "sensor", "frozen", checks=("the monitor lead or probe",)),
    PatientSignature("sensor_dropout", "sensor", "missing", checks=("is the probe attached",)),
    PatientSignature("sensor_drift", "sensor", "lone", checks=("a manual measurement of the drifting vital",)),
)}

assert set(SIGNATURES) == set(ADVERSE_EVENTS)


# ---- evidence functions over one patient's tables (Arrow, one run) ------------------------------------------
def utc(value: datetime | int) -> datetime:
    """A datetime, from one or from microseconds since the epoch."""
    return value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1e6, tz=UTC)


def _us(ts: datetime) -> int:
    return int(ts.timestamp() * 1e6)


def day_of(ts: datetime, origin: datetime) -> int:
    """The day of treatment of `ts` (day 0: the run's first day).

    >>> day_of(datetime(2026, 1, 17, 8, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    12
    """
    return int((ts - origin) / DAY)


def run_origin(vitals: pa.Table | None, doses: pa.Table | None) -> datetime | None:
    """Day 0 of the run: its first vitals tick or first dose, whichever came first."""
    firsts = [pc.min(t["ts"]).as_py() for t in (vitals, doses) if t is not None and t.num_rows]
    return min(firsts) if firsts else None


@dataclass(frozen=True)
class LabResult:
    sample_ts: datetime
    reported_ts: datetime
    inr: float | None
    hb_g_dl: float | None


def lab_results(labs: pa.Table | None, known_by: datetime) -> list[LabResult]:
    """The lab results reported by `known_by`, in sample order: what a clinician had then."""
    if labs is None or labs.num_rows == 0:
        return []
    rows = labs.filter(pc.less_equal(labs["reported_ts"], pa.scalar(known_by, labs["reported_ts"].type)))
    return [LabResult(r["sample_ts"], r["reported_ts"], r["inr"], r["hb_g_dl"])
            for r in rows.sort_by("sample_ts").to_pylist()]


@dataclass(frozen=True)
class Course:
    """A co-medication course seen in the doses: its first dose and its last one so far."""

    drug: str
    start_ts: datetime
    last_ts: datetime
    daily_mg: float | None


def comedication_courses(doses: pa.Table | None, until: datetime) -> list[Course]:
    """Courses of each co-medication (doses of `COMEDICATIONS` taken up to `until`), oldest first."""
    if doses is None or doses.num_rows == 0:
        return []
    rows = doses.filter(pc.and_(pc.is_in(doses["drug"], pa.array(COMEDICATIONS)),
                                pc.less_equal(doses["ts"], pa.scalar(until, doses["ts"].type))))
    courses: list[Course] = []
    for drug in COMEDICATIONS:
        mine = [r for r in rows.sort_by("ts").to_pylist() if r["drug"] == drug and r["taken"] is not False]
        start = prev = None
        dose_mg: float | None = None
        for r in mine:
            if start is None or r["ts"] - prev > COMEDICATION_GAP:
                if start is not None:
                    courses.append(Course(drug, start, prev, dose_mg))
                start = r["ts"]
            prev, dose_mg = r["ts"], r["dose_mg"]
        if start is not None:
            courses.append(Course(drug, start, prev, dose_mg))
    return sorted(courses, key=lambda c: c.start_ts)


@dataclass(frozen=True)
class DoseHistory:
    """Warfarin as given up to a time: the daily doses due, which were missed, and the last dose change."""

    due: int = 0
    missed: list[datetime] = field(default_factory=list)
    current_mg: float | None = None
    previous_mg: float | None = None
    changed_ts: datetime | None = None


def warfarin_history(doses: pa.Table | None, since: datetime, until: datetime) -> DoseHistory:
    """Warfarin doses due in [since, until]: how many, the missed ones; and the dose in force at `until` with its
    last change (over the whole run up to `until`)."""
    if doses is None or doses.num_rows == 0:
        return DoseHistory()
    rows = doses.filter(pc.and_(pc.equal(doses["drug"], "warfarin"),
                                pc.less_equal(doses["ts"], pa.scalar(until, doses["ts"].type))))
    rows = rows.sort_by("ts").to_pylist()
    window = [r for r in rows if r["ts"] >= since]
    current = previous = changed = None
    for r in rows:
        if current is not None and r["dose_mg"] != current:
            previous, changed = current, r["ts"]
        current = r["dose_mg"]
    return DoseHistory(len(window), [r["ts"] for r in window if r["taken"] is False], current, previous, changed)


def genotype_phrase(patient: dict | None) -> str | None:
    """What of the patient's genotype bears on warfarin and metoprolol, e.g. 'CYP2C9 *1/*3 (S-warfarin clearance
    45 % lower)'; None when nothing does (or nothing is known).

    >>> genotype_phrase({"cyp2c9": "*1/*3", "vkorc1_1639": "G/G", "cyp2d6": "NM"})
    'CYP2C9 *1/*3 (S-warfarin clearance 45 % lower)'
    """
    if not patient:
        return None
    parts = []
    reduction = CL_REDUCTION.get(patient.get("cyp2c9") or "", 0.0)
    if reduction > 0:
        parts.append(f"CYP2C9 {patient['cyp2c9']} (S-warfarin clearance {reduction:.0%} lower)".replace("%", " %"))
    vk = patient.get("vkorc1_1639")
    if vk in EC50_MG_PER_L and vk != "G/G":
        parts.append(f"VKORC1 -1639 {vk} (more sensitive to warfarin: EC50 {EC50_MG_PER_L[vk]:g} vs "
                     f"{EC50_MG_PER_L['G/G']:g} mg/L)")
    if patient.get("cyp2d6") == "PM":
        parts.append("CYP2D6 poor metaboliser (metoprolol accumulates)")
    return "; ".join(parts) or None


# ---- the vitals against the patient's own baseline -------------------------------------------------------
BASELINE_DAYS = 3  # the same clock time on up to this many previous days ...
BASELINE_HALF_WIDTH = 2  # ... +- this many ticks around it
SMOOTH_TICKS = 12  # a trailing hour at 5-min vitals


@dataclass
class VitalsWindow:
    """One patient's vitals over a window: the readings, the personal baseline (the same clock time on the
    previous days) and the trailing-hour mean deviation from it, per vital (columns `VITAL_SIGNALS`)."""

    ts_us: np.ndarray  # (n,)
    values: np.ndarray  # (n, 6), NaN where missing
    baseline: np.ndarray  # (n, 6)
    deviation: np.ndarray  # (n, 6), trailing-hour mean of value - baseline, NaN where nothing to average
    before: np.ndarray  # (m, 6): the readings of the day before the window (what "normal" looked like)
    dt_min: float

    def __len__(self) -> int:
        return len(self.ts_us)


def _nanmedian(a: np.ndarray, axis: int) -> np.ndarray:
    """`np.nanmedian`, NaN where a slice holds no value (no previous day yet, a sensor off), without its
    RuntimeWarning: silencing that with `warnings.catch_warnings` is not thread-safe, and the agents run this
    in threads."""
    empty = np.isnan(a).all(axis=axis, keepdims=True)
    median = np.nanmedian(np.where(empty, 0.0, a), axis=axis)
    return np.where(np.squeeze(empty, axis=axis), np.nan, median)


def vitals_window(vitals: pa.Table, start: datetime, end: datetime) -> VitalsWindow | None:
    """The vitals in [start, end] of one run, against its own baseline; None when there are none there."""
    vitals = vitals.sort_by("ts")
    ts = vitals["ts"].cast(pa.int64()).to_numpy()
    X = np.column_stack([vitals[s].to_numpy(zero_copy_only=False).astype(float) for s in VITAL_SIGNALS])
    lo, hi = np.searchsorted(ts, _us(start)), np.searchsorted(ts, _us(end), side="right")
    if hi <= lo:
        return None
    dt_us = float(np.median(np.diff(ts))) if len(ts) > 1 else 300e6
    first = max(0, lo - SMOOTH_TICKS + 1)  # the smoothing's lead-in
    idx = np.arange(first, hi)
    lags = [np.searchsorted(ts, ts[idx] - k * 86_400_000_000) + j for k in range(1, BASELINE_DAYS + 1)
            for j in range(-BASELINE_HALF_WIDTH, BASELINE_HALF_WIDTH + 1)]
    lag = np.stack(lags, axis=1)  # (n, k)
    valid = (lag >= 0) & (lag < first) & (ts[np.clip(lag, 0, len(ts) - 1)] < ts[idx, None] - 43_200_000_000)
    ref = np.where(valid[:, :, None], X[np.clip(lag, 0, len(ts) - 1)], np.nan)
    base = _nanmedian(ref, axis=1)
    # the first day has no previous one: the patient's readings so far stand in
    early = _nanmedian(X[:first] if first > 0 else X[idx], axis=0)
    base = np.where(np.isnan(base), early, base)
    dev = X[idx] - base
    ok = ~np.isnan(dev)
    csum = np.cumsum(np.where(ok, dev, 0.0), axis=0)
    cnt = np.cumsum(ok, axis=0)
    pad = lambda a: np.vstack([np.zeros((1, a.shape[1])), a])  # noqa: E731
    csum, cnt = pad(csum), pad(cnt)
    w = SMOOTH_TICKS
    rows = np.arange(len(idx)) + 1
    lo_rows = np.maximum(rows - w, 0)
    total, n = csum[rows] - csum[lo_rows], cnt[rows] - cnt[lo_rows]
    with np.errstate(invalid="ignore", divide="ignore"):
        smooth = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    keep = slice(lo - first, None)
    day_before = np.searchsorted(ts, ts[lo] - 86_400_000_000)
    return VitalsWindow(ts[lo:hi], X[lo:hi], base[keep], smooth[keep], X[day_before:lo], dt_us / 6e7)


def longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(length, start index) of the longest run of True.

    >>> longest_run(np.array([True, False, True, True, True, False]))
    (3, 2)
    """
    flags = np.asarray(flags, bool)
    if not flags.any():
        return 0, 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    starts, ends = edges[::2], edges[1::2]
    k = int(np.argmax(ends - starts))
    return int(ends[k] - starts[k]), int(starts[k])


def frozen_flags(x: np.ndarray) -> np.ndarray:
    """True where a reading repeats the one before it exactly (a stuck sensor repeats one value)."""
    x = np.asarray(x, float)
    same = np.zeros(len(x), bool)
    same[1:] = (x[1:] == x[:-1]) & ~np.isnan(x[1:])
    return same


def phrase_value(signal: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "missing"
    unit = UNITS.get(signal, "")
    return f"{value:.3g} {unit}".strip()
