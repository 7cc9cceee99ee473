"""Patient diagnosis: an incident's evidence from the patient's vitals, labs, doses and covariates, and the causes
of the knowledge base (`agents.patient_knowledge`) ranked against it, in the same shape as the reactor's
(`IncidentFinding` with a `Diagnosis`), so the workers, `biopilot diagnose` and chat take either.

The evidence of an incident is what a clinician had by `horizon` after its first alert: the vitals from
`LOOKBACK` before it (the onset) against the patient's own baseline, the labs reported by then (those sampled from
`LAB_LOOKBACK` before it are the incident's), the co-medications and warfarin doses given, and the genotype. Each
cause's match in [0, 1]:
- vitals causes: how well the vitals' deviation at their most abnormal moment points the way the event's pattern
  does at some stage after onset (cosine), times how far it went; a bleed also by the fall of Hb, and by its
  order (the pulse climbs hours before the pressure falls; a primary hypotension moves both at once);
- INR causes: how far the incident's INR is out of range, split between the causes by the doses: a co-medication
  started in the weeks before (drug_interaction), warfarin doses missed in the days before (nonadherence); an
  incident opened by the medication itself (amiodarone just started, doses just missed) names it before the INR
  moves; when the alerts name only vitals, a lab out of range is background and counts less;
- sensor faults: how long a reading was frozen (beyond what it does normally, and not at the monitor's limit) or
  missing, or how far one reading wandered, slowly, on its own, in a pattern no event of the patient explains.

>>> from datetime import UTC, datetime
>>> t = datetime(2026, 1, 20, 8, tzinfo=UTC)
>>> ev = PatientEvidence("run", "p000001", t, t, origin=datetime(2026, 1, 5, tzinfo=UTC))
>>> ev.window_labs = [LabResult(t, t, 4.6, 13.1)]
>>> ev.courses = [Course("amiodarone", datetime(2026, 1, 8, 18, tzinfo=UTC), t, 200.0)]
>>> ev.warfarin = DoseHistory(current_mg=5.0)
>>> d = rank_patient(ev)
>>> d.top.fault, d.top.evidence[0]
('drug_interaction', 'INR 4.6 on day 15, 12 days after amiodarone started (200 mg/day from day 3)')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from agents.diagnose import IncidentFinding, RunNotFound, contributions, track
from agents.evidence import SensorRun
from agents.patient_knowledge import (
    COUPLED,
    NORMAL_SPREAD,
    SIGNATURES,
    UNITS,
    Course,
    DoseHistory,
    LabResult,
    PatientSignature,
    comedication_courses,
    day_of,
    frozen_flags,
    genotype_phrase,
    lab_results,
    longest_run,
    phrase_value,
    run_origin,
    utc,
    vitals_window,
    warfarin_history,
)
from agents.troubleshooting import Diagnosis, diagnosis_of
from core.events import VITAL_SIGNALS
from sinks import delta
from sources.patient.vitals import PHYSIOLOGICAL_RANGE as MONITOR_RANGE

HORIZON = timedelta(hours=12)  # a lab result comes back hours after its sample; a bleed decompensates in hours
LOOKBACK = timedelta(hours=6)  # vitals before the first alert: where the change began
RISE_LOOKBACK = timedelta(hours=24)  # how far back a deviation's build-up is followed
RISE_SMOOTH_H = 2  # hours a deviation is averaged over before its build-up is timed
LAB_LOOKBACK = timedelta(days=1)  # a lab sampled this long before the first alert is the incident's
LAB_WAIT = timedelta(hours=6)  # a short incident's evidence still waits for a lab sampled at its start
MISSED_LOOKBACK = timedelta(days=10)  # missed doses this long before a low INR's sample explain it
NEW_INTERACTION = 0.8  # amiodarone just started on warfarin, before the INR shows it
NEW_NONADHERENCE = 0.8  # warfarin doses just missed, before the INR shows it
INTERACTION_WEEKS = 10  # amiodarone's inhibition builds over weeks: a start this long before an INR explains it
INITIATION_DAYS, INITIATION_MAX_DAYS = 7, 14  # a low INR while warfarin is being started is expected
# over-anticoagulation: INR >= 4 (REFERENCES-patient.md); subtherapeutic: < 2. A reading carries the assay's ~4 %
# error, but the patient's INR ripples with each dose and drifts over days (`inr_variability`): a reading at the
# limit may be a passing excursion, so it names the cause with 0.6, a clear one with 1
INR_HIGH, INR_HIGH_CLEAR, INR_LOW, INR_LOW_CLEAR = 4.0, 5.0, 2.0, 1.6
AT_LIMIT = 0.6
HB_DROP_FROM_G_DL, HB_DROP_FULL_G_DL = 0.8, 2.0  # a major bleed: Hb falling >= 2 g/dL
VITALS_NORM_FROM, VITALS_NORM_FULL = 2.5, 6.0  # |deviation| in NORMAL_SPREAD units: normal wander ... a clear event
FROZEN_FULL_MIN, MISSING_FULL_MIN = 60.0, 30.0
FACT_SENSOR_MIN = 30.0  # a frozen (beyond its usual repeats) or missing stretch worth stating
LONE_FROM, LONE_FULL = 2.0, 4.0  # one reading's deviation in NORMAL_SPREAD units
DRIFT_FROM_H, DRIFT_FULL_H = 1.5, 4.0  # a probe drifts over hours; a deviation built within an hour is the patient
MENTION_MOVE = 2.0  # a vital's move worth citing, in NORMAL_SPREAD units
SHOCK_ORDER = {"major_bleed": True, "hypotension": False}  # whether the pulse moves before the pressure
PULSE_FIRST_H, ORDER_WEIGHT = 1.5, 0.3  # a bleed's pulse leads its pressure by ~1.5 h or more (tau 5 h vs 40 %)
PULSE_FIRST_RANGE_H = (-3.0, 8.0)  # leads outside this no shock explains: the timing is noise
LAB_SIGNALS = ("inr", "hb_g_dl", "amiodarone", "enzyme_inducer")  # what lab and medication alerts name
BACKGROUND_LAB = 0.3  # a lab cause's weight in an incident the alerts say is about vitals
STANDING_LAB = 0.5  # a low INR from before the incident (its latest lab), not of it


@dataclass(frozen=True)
class VitalMove:
    """A vital's trailing-hour deviation from the patient's baseline at the window's most abnormal moment."""

    signal: str
    delta: float  # value - baseline, in the vital's unit
    value: float | None
    baseline: float
    ts: datetime

    @property
    def size(self) -> float:
        return self.delta / NORMAL_SPREAD[self.signal]

    def sentence(self) -> str:
        unit = UNITS[self.signal]
        verb = "above" if self.delta > 0 else "below"
        return (f"{self.signal} {phrase_value(self.signal, self.value)} at {self.ts:%Y-%m-%d %H:%M} UTC, "
                f"{abs(self.delta):.2g} {unit} {verb} this patient's {self.baseline:.3g} {unit} at that hour on "
                f"the previous days").replace("  ", " ")


@dataclass
class PatientEvidence:
    run_id: str
    reactor_id: str  # the patient's id (the generic incident key)
    start_ts: datetime
    end_ts: datetime
    origin: datetime | None = None  # day 0 of the run
    patient: dict | None = None  # the `patients` row: covariates and genotype
    moves: dict[str, VitalMove] = field(default_factory=dict)
    lead_onset_h: float = 0.0  # how long the most deviating vital took to build its deviation
    onsets: dict[str, datetime] = field(default_factory=dict)  # when each clearly moved vital reached half its move
    sensor_runs: list[SensorRun] = field(default_factory=list)
    usual_frozen_min: dict[str, float] = field(default_factory=dict)  # longest repeat the day before
    frozen_pinned: dict[str, bool] = field(default_factory=dict)  # frozen at the monitor's floor or ceiling
    labs: list[LabResult] = field(default_factory=list)  # everything reported by `end_ts`
    window_labs: list[LabResult] = field(default_factory=list)  # the incident's own
    courses: list[Course] = field(default_factory=list)
    warfarin: DoseHistory = field(default_factory=DoseHistory)
    contributions: dict[str, float] = field(default_factory=dict)
    ticks_seen: int = 0
    scorer: None = None  # the reactor's windowed scorer and soft sensors have no patient counterpart
    soft: None = None
    operator_changes: list = field(default_factory=list)  # nor its operators' recipe changes (IncidentFinding)

    def day(self, ts: datetime) -> int:
        return day_of(ts, self.origin) if self.origin else 0

    def size(self) -> np.ndarray:
        """The deviation vector in NORMAL_SPREAD units (0 where a vital has no reading)."""
        return np.array([self.moves[s].size if s in self.moves else 0.0 for s in VITAL_SIGNALS])

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PatientRun:
    """One patient's tables: what the evidence is read from."""

    run_id: str
    vitals: pa.Table
    labs: pa.Table | None = None
    doses: pa.Table | None = None
    patient: dict | None = None

    @property
    def patient_id(self) -> str:
        return self.vitals["patient_id"][0].as_py()


def load_patient_run(lake: str | Path, run_id: str) -> PatientRun:
    vitals = delta.read(lake, "vitals", run_ids=[run_id])
    if vitals is None or vitals.num_rows == 0:
        known = sorted(delta.run_ids(lake))
        hint = f"; runs in {lake}: {', '.join(known[:5])}{' ...' if len(known) > 5 else ''}" if known else ""
        raise RunNotFound(f"no vitals for run {run_id!r} in {lake}{hint}",
                          for_api=f"no vitals for run {run_id!r}; see GET /api/runs")
    patients = delta.read(lake, "patients", run_ids=[run_id])
    patient = patients.to_pylist()[0] if patients is not None and patients.num_rows else None
    return PatientRun(run_id, vitals, delta.read(lake, "labs", run_ids=[run_id]),
                      delta.read(lake, "doses", run_ids=[run_id]), patient)


# ---- evidence ---------------------------------------------------------------------------------------------
def gather_patient(run: PatientRun, start_ts: datetime, end_ts: datetime,
                   contributions: dict[str, float] | None = None) -> PatientEvidence:
    """The evidence of an incident that began at `start_ts`, as known at `end_ts`."""
    ev = PatientEvidence(run.run_id, run.patient_id, start_ts, end_ts, run_origin(run.vitals, run.doses),
                         run.patient, contributions=dict(contributions or {}))
    _vitals_evidence(ev, run.vitals, start_ts - LOOKBACK, end_ts)
    ev.labs = lab_results(run.labs, end_ts)
    ev.window_labs = [r for r in ev.labs if r.sample_ts >= start_ts - LAB_LOOKBACK]
    if "inr" in ev.contributions:
        ev.window_labs[:0] = _confirmed_inr(ev.labs, ev.window_labs, start_ts - LAB_LOOKBACK)
    ev.courses = comedication_courses(run.doses, end_ts)
    sampled = max((r.sample_ts for r in ev.window_labs), default=end_ts)
    ev.warfarin = warfarin_history(run.doses, sampled - MISSED_LOOKBACK, sampled)
    return ev


def _confirmed_inr(labs: list[LabResult], window: list[LabResult], since: datetime) -> list[LabResult]:
    """The reading before the window when the window's INR confirms it: the monitor holds a marginal INR beyond
    a limit and alerts at the next reading still out of the range that side (`detectors.patient_monitor`), so
    the incident is about both."""
    before = [r for r in labs if r.inr is not None and r.sample_ts < since][-1:]
    now = [r.inr for r in window if r.inr is not None][:1]
    if not before or not now:
        return []
    held, inr = before[0].inr, now[0]
    high = held >= INR_HIGH and inr > INR_HIGH - 0.5
    low = held < INR_LOW and inr < INR_LOW - 0.5
    return before if high or low else []


def _vitals_evidence(ev: PatientEvidence, vitals: pa.Table, start: datetime, end: datetime) -> None:
    w = vitals_window(vitals, start - RISE_LOOKBACK, end)
    if w is None:
        return
    since = int(np.searchsorted(w.ts_us, int(start.timestamp() * 1e6)))  # the evidence window; before: the rise
    if since >= len(w):
        return
    ev.ticks_seen = len(w) - since
    spread = np.array([NORMAL_SPREAD[s] for s in VITAL_SIGNALS])
    size = np.nan_to_num(w.deviation / spread)
    at = since + int(np.argmax(np.linalg.norm(size[since:], axis=1)))
    for j, s in enumerate(VITAL_SIGNALS):
        if not np.isnan(w.deviation[at, j]):
            value = None if np.isnan(w.values[at, j]) else float(w.values[at, j])
            ev.moves[s] = VitalMove(s, float(w.deviation[at, j]), value, float(w.baseline[at, j]),
                                    _ts(w.ts_us[at]))
    hour = max(1, int(round(60.0 / w.dt_min)))
    for j, s in enumerate(VITAL_SIGNALS):
        if abs(size[at, j]) >= MENTION_MOVE:
            # over a 2-hour mean: the baseline (a median of a few past readings) jitters by about a spread
            x = np.abs(size[: at + 1, j])
            span = min(len(x), RISE_SMOOTH_H * hour)
            x = np.convolve(x, np.ones(span) / span)[: len(x)]
            half, rise_h = _rise(x, w.ts_us, hour)
            ev.onsets[s] = _ts(w.ts_us[half])
            if j == int(np.argmax(np.abs(size[at]))):
                ev.lead_onset_h = rise_h
    ts = w.ts_us[since:]
    for j, s in enumerate(VITAL_SIGNALS):
        x = w.values[since:, j]
        n, i = longest_run(np.isnan(x))
        if n >= 2:
            ev.sensor_runs.append(SensorRun(s, "missing", n * w.dt_min, _ts(ts[i])))
        n, i = longest_run(frozen_flags(x))
        if n >= 2:
            at_run = max(i - 1, 0)
            ev.sensor_runs.append(SensorRun(s, "frozen", (n + 1) * w.dt_min, _ts(ts[at_run]), float(x[at_run])))
            ev.frozen_pinned[s] = float(x[at_run]) in MONITOR_RANGE[s]
        # what this reading does normally: its longest repeat over the day before the window
        ev.usual_frozen_min[s] = (longest_run(frozen_flags(w.values[:since, j]))[0] + 1) * w.dt_min


def _rise(x: np.ndarray, ts_us: np.ndarray, hour: int) -> tuple[int, float]:
    """Where a deviation (|x|, up to its most abnormal moment) first reached half its level, and how long it took
    from a quarter to three quarters of it: a probe drifting linearly takes a good part of its time to the peak, a
    change in the patient about its time constant. The level is the median since the deviation passed half of its
    last hour's (a plateau that the circadian baseline tilts is still a plateau). A deviation already there where
    the readings begin has been building for longer than they show."""
    half = 0
    for _ in range(2):
        level = float(np.median(x[half:])) if half else float(np.median(x[-hour:]))
        calm = np.flatnonzero(x < 0.25 * level)
        first = int(calm[-1]) if len(calm) else 0
        half = first + int(np.argmax(x[first:] >= 0.5 * level))
    reached = first + int(np.argmax(x[first:] >= 0.75 * level))
    if not len(calm):
        return half, float((ts_us[len(x) - 1] - ts_us[0]) / 3.6e9)
    return half, float((ts_us[reached] - ts_us[first]) / 3.6e9)


def _ts(us: int) -> datetime:
    return utc(int(us))


# ---- matching -----------------------------------------------------------------------------------------------
def _ramp(x: float, lo: float, full: float) -> float:
    return float(np.clip((x - lo) / (full - lo), 0.0, 1.0))


def _vitals_match(sig: PatientSignature, ev: PatientEvidence) -> tuple[float, list[str]]:
    size = ev.size()
    norm = float(np.linalg.norm(size))
    if norm == 0.0:
        match = 0.0
    else:
        cos = float(np.max(sig.templates() @ (size / norm)))
        match = max(cos, 0.0) ** 2 * _ramp(norm, VITALS_NORM_FROM, VITALS_NORM_FULL)
    template = sig.templates()[-1]
    cited = [ev.moves[s].sentence() for j, s in sorted(enumerate(VITAL_SIGNALS), key=lambda js: -abs(size[js[0]]))
             if s in ev.moves and abs(size[j]) >= MENTION_MOVE and np.sign(size[j]) == np.sign(template[j])]
    if sig.cause in SHOCK_ORDER:
        # a bleed is compensated first (the pulse climbs for hours, then the pressure falls); a primary fall of
        # pressure drags the pulse up with it. Unknown (a move too small to time, or timings hours apart that no
        # shock explains): a bleed's compensation went unseen
        pulse_first_h = _pulse_first_h(ev)
        if pulse_first_h is None:
            match *= 1.0 - ORDER_WEIGHT / 2 if SHOCK_ORDER[sig.cause] else 1.0
        else:
            agree = _ramp(pulse_first_h, 0.0, PULSE_FIRST_H)
            match *= 1.0 - ORDER_WEIGHT * (1.0 - agree if SHOCK_ORDER[sig.cause] else agree)
    if sig.cause == "major_bleed":
        hb, sentence = _hb_drop(ev)
        if sentence:
            match = 1.0 - (1.0 - match) * (1.0 - hb)
            cited.insert(0, sentence)
        inr = _inr_peak(ev, max)
        if inr is not None and cited:
            cited.append(f"on warfarin, INR {inr.inr:.1f} on day {ev.day(inr.sample_ts)}")
    return match, cited[:4]


def _beyond(x: float, limit: float, clear: float) -> float:
    """0 short of `limit`, `AT_LIMIT` at it, 1 from `clear` on (a rising scale: negate both for a falling one)."""
    return 0.0 if x < limit else AT_LIMIT + (1.0 - AT_LIMIT) * _ramp(x, limit, clear)


def _pulse_first_h(ev: PatientEvidence) -> float | None:
    """Hours by which the pulse's rise led the pressures' fall (their mean onset), if both moved and within
    `PULSE_FIRST_RANGE_H` of each other."""
    pressures = [ev.onsets[s] for s in ("sbp_mmhg", "dbp_mmhg") if s in ev.onsets and ev.moves[s].delta < 0]
    if "hr_bpm" not in ev.onsets or ev.moves["hr_bpm"].delta <= 0 or not pressures:
        return None
    pressure = min(pressures) + (max(pressures) - min(pressures)) / 2
    lead_h = (pressure - ev.onsets["hr_bpm"]).total_seconds() / 3600.0
    return lead_h if PULSE_FIRST_RANGE_H[0] <= lead_h <= PULSE_FIRST_RANGE_H[1] else None


def _hb_drop(ev: PatientEvidence) -> tuple[float, str | None]:
    now = [r for r in ev.window_labs if r.hb_g_dl is not None]
    before = [r.hb_g_dl for r in ev.labs if r.hb_g_dl is not None and r not in ev.window_labs]
    if not now:
        return 0.0, None
    ref = float(np.median(before[-3:])) if before else (ev.patient or {}).get("baseline_hb_g_dl")
    if ref is None:
        return 0.0, None
    low = min(now, key=lambda r: r.hb_g_dl)
    drop = ref - low.hb_g_dl
    if drop < HB_DROP_FROM_G_DL:
        return 0.0, None
    return _ramp(drop, HB_DROP_FROM_G_DL, HB_DROP_FULL_G_DL), (
        f"Hb {low.hb_g_dl:.1f} g/dL on day {ev.day(low.sample_ts)}, down {drop:.1f} g/dL from {ref:.1f}")


def _inr_peak(ev: PatientEvidence, pick=max) -> LabResult | None:  # noqa: ANN001
    rows = [r for r in ev.window_labs if r.inr is not None]
    return pick(rows, key=lambda r: r.inr) if rows else None


def _started_before(ev: PatientEvidence, drug: str, ts: datetime) -> Course | None:
    """The latest course of `drug` started before `ts` and within the weeks its effect takes to build."""
    found = [c for c in ev.courses if c.drug == drug and c.start_ts <= ts
             and ts - c.start_ts <= timedelta(weeks=INTERACTION_WEEKS)]
    return found[-1] if found else None


def _context(ev: PatientEvidence) -> list[str]:
    """The patient facts worth citing beside an INR: genotype, the dose in force and its last change."""
    out = []
    if phrase := genotype_phrase(ev.patient):
        out.append(phrase)
    h = ev.warfarin
    if h.current_mg is not None:
        change = (f", changed on day {ev.day(h.changed_ts)} from {h.previous_mg:g} mg"
                  if h.changed_ts is not None and h.previous_mg is not None else "")
        out.append(f"warfarin {h.current_mg:g} mg/day{change}")
    return out


def _inr_high_match(sig: PatientSignature, ev: PatientEvidence) -> tuple[float, list[str]]:
    peak = _inr_peak(ev, max)
    high = 0.0 if peak is None else _beyond(peak.inr, INR_HIGH, INR_HIGH_CLEAR)
    amio = _started_before(ev, "amiodarone", peak.sample_ts if high > 0 else ev.end_ts)
    if sig.cause == "drug_interaction" and amio is not None and ev.warfarin.current_mg is not None:
        dose = f"{amio.daily_mg:g} mg/day " if amio.daily_mg else ""
        if high > 0:
            return high, [f"INR {peak.inr:.1f} on day {ev.day(peak.sample_ts)}, "
                          f"{ev.day(peak.sample_ts) - ev.day(amio.start_ts)} days after amiodarone started ({dose}from day "
                          f"{ev.day(amio.start_ts)})", *_context(ev)]
        if amio.start_ts >= ev.start_ts - LAB_LOOKBACK:  # the incident is the start itself: the INR is yet to rise
            last = [r for r in ev.labs if r.inr is not None][-1:]
            return NEW_INTERACTION, [
                f"amiodarone started on day {ev.day(amio.start_ts)} ({dose.strip() or 'dose unknown'}) while on "
                f"warfarin: CYP2C9 inhibition, the INR rises over 1-3 weeks",
                *[f"last INR {r.inr:.1f} on day {ev.day(r.sample_ts)}" for r in last], *_context(ev)]
    if sig.cause == "drug_interaction" or high == 0:
        return 0.0, []
    return high * (0.4 if amio is not None else 1.0), [f"INR {peak.inr:.1f} on day {ev.day(peak.sample_ts)}",
                                                        *_context(ev)]


def _past_initiation(ev: PatientEvidence, lab: LabResult) -> bool:
    day = ev.day(lab.sample_ts)
    reached = any(r.inr is not None and r.inr >= INR_LOW for r in ev.labs if r.sample_ts < lab.sample_ts)
    return day >= INITIATION_MAX_DAYS or (day >= INITIATION_DAYS and reached)


def _inr_low_match(sig: PatientSignature, ev: PatientEvidence) -> tuple[float, list[str]]:
    low, standing = _inr_peak(ev, min), 1.0
    if low is None:  # no lab of its own: the latest one, if recent, is where the patient stands
        recent = [r for r in ev.labs if r.inr is not None and ev.end_ts - r.sample_ts <= MISSED_LOOKBACK]
        low, standing = (recent[-1], STANDING_LAB) if recent else (None, 0.0)
    h = ev.warfarin
    missed = _ramp(len(h.missed), 0.0, 2.0)
    below = 0.0 if low is None or low.inr >= INR_LOW or not _past_initiation(ev, low) else (
        standing * _beyond(-low.inr, -INR_LOW, -INR_LOW_CLEAR))
    if below == 0.0:
        # the incident is the missed doses themselves: the INR falls days later
        if sig.cause != "nonadherence" or not [t for t in h.missed if t >= ev.start_ts - LAB_LOOKBACK]:
            return 0.0, []
        last = [r for r in ev.labs if r.inr is not None][-1:]
        return NEW_NONADHERENCE * missed, [
            f"{len(h.missed)} of the {h.due} warfarin doses due from day {ev.day(h.missed[0])} to day "
            f"{ev.day(h.missed[-1])} not taken: the INR falls over the next days",
            *[f"last INR {r.inr:.1f} on day {ev.day(r.sample_ts)}" for r in last], *_context(ev)]
    head = f"INR {low.inr:.1f} on day {ev.day(low.sample_ts)}"
    if h.missed:
        head += (f", {len(h.missed)} of {h.due} warfarin doses missed in the {MISSED_LOOKBACK.days} days before "
                 f"(the last on day {ev.day(h.missed[-1])})")
    elif h.due:
        head += f", all {h.due} warfarin doses of the {MISSED_LOOKBACK.days} days before taken"
    inducer = _started_before(ev, "enzyme_inducer", low.sample_ts)
    cited = [head, *([f"enzyme inducer started on day {ev.day(inducer.start_ts)}"] if inducer else []), *_context(ev)]
    if sig.cause == "nonadherence":
        return below * missed, cited if missed > 0 else []
    return below * (1.0 - 0.7 * missed), cited


def _sensor_match(sig: PatientSignature, ev: PatientEvidence) -> tuple[float, list[str]]:
    if sig.sensor in ("frozen", "missing"):
        best, cited = 0.0, []
        for r in ev.sensor_runs:
            if r.kind != sig.sensor:
                continue
            if r.kind == "frozen":
                # a stuck sensor repeats the last normal reading; one at the monitor's floor or ceiling is the
                # patient beyond what it displays (a pulse below 25 reads 25)
                pinned = ev.frozen_pinned.get(r.signal, False)
                match = 0.0 if pinned else _ramp(r.minutes - ev.usual_frozen_min.get(r.signal, 0.0), 0.0,
                                                 FROZEN_FULL_MIN)
            else:
                match = _ramp(r.minutes, 0.0, MISSING_FULL_MIN)
            if match > best:
                best, cited = match, [r.sentence()]
        return best, cited
    # "lone": one reading far from the patient's baseline while the readings that move with it stay put, in a
    # pattern no event of the patient explains (a pulse falling alone is bradycardia), built slowly
    vector = ev.size()
    size = dict(zip(VITAL_SIGNALS, vector, strict=True))
    norm = float(np.linalg.norm(vector))
    explained = max((float(np.max(other.templates() @ (vector / norm))) for other in SIGNATURES.values()
                     if other.family == "vitals"), default=0.0) if norm else 0.0
    slow = 0.5 + 0.5 * _ramp(ev.lead_onset_h, DRIFT_FROM_H, DRIFT_FULL_H)
    best, cited = 0.0, []
    for s, coupled in COUPLED.items():
        own = abs(size[s])
        echo = float(np.linalg.norm([size[c] for c in coupled]))
        alone = own**2 / (own**2 + echo**2 + 1.0)
        # never as sure as a direct observation
        match = _ramp(own, LONE_FROM, LONE_FULL) * alone * (1.0 - max(explained, 0.0) ** 2) * slow * 0.9
        if match > best and s in ev.moves:
            best, cited = match, [f"{ev.moves[s].sentence()}, built over {ev.lead_onset_h:.1f} h while "
                                  f"{', '.join(coupled)} stayed near this patient's normal"]
    return best, cited


MATCHERS = {"vitals": _vitals_match, "inr_high": _inr_high_match, "inr_low": _inr_low_match,
            "sensor": _sensor_match}


def rank_patient(ev: PatientEvidence) -> Diagnosis:
    """Every cause of the knowledge base against the evidence, best first; abstains when none matches well.
    When the alerts name what drove the incident and no lab is among it, a lab out of range is the background
    (a low INR running for weeks does not explain a fever), and its causes count `BACKGROUND_LAB` as much."""
    background = bool(ev.contributions) and not set(ev.contributions) & set(LAB_SIGNALS)
    matches = []
    for cause, sig in SIGNATURES.items():
        match, cited = MATCHERS[sig.family](sig, ev)
        matches.append((cause, match * BACKGROUND_LAB if background and sig.family.startswith("inr") else match,
                        cited))
    size = ev.size()
    facts = [ev.moves[s].sentence() for j, s in sorted(enumerate(VITAL_SIGNALS), key=lambda js: -abs(size[js[0]]))
             if s in ev.moves and abs(size[j]) >= 3.0][:3]
    facts += [f"INR {r.inr:.1f}, Hb {r.hb_g_dl:.1f} g/dL on day {ev.day(r.sample_ts)}" for r in ev.window_labs
              if r.inr is not None and r.hb_g_dl is not None]
    facts += [r.sentence() for r in ev.sensor_runs if r.minutes - (
        ev.usual_frozen_min.get(r.signal, 0.0) if r.kind == "frozen" else 0.0) >= FACT_SENSOR_MIN]
    return diagnosis_of(matches, SIGNATURES, facts)


# ---- incidents ----------------------------------------------------------------------------------------------
@dataclass
class PatientFinding(IncidentFinding):
    evidence: PatientEvidence  # type: ignore[assignment]
    alerts: list[dict] = field(default_factory=list)  # the incident's alerts, in order

    def as_dict(self) -> dict:
        ev = self.evidence
        patient = ev.patient or {}
        return super().as_dict() | {
            "plant": "patient", "patient_id": ev.reactor_id,
            "patient": {k: patient.get(k) for k in ("age_years", "sex", "weight_kg", "cyp2c9", "vkorc1_1639",
                                                    "cyp2d6")} if patient else None,
            "labs": [{"sample_ts": r.sample_ts.isoformat(), "inr": r.inr, "hb_g_dl": r.hb_g_dl}
                     for r in ev.labs[-3:]]}


def diagnose_patient(run: PatientRun, messages: list[dict], horizon: timedelta = HORIZON) -> list[PatientFinding]:
    """Incidents of one patient from its monitor's alerts (and clears), each with its ranked causes."""
    findings = []
    for inc, alerts in track(messages):
        end = inc["start_ts"] + horizon
        if inc["end_ts"] is not None:
            end = min(end, max(inc["end_ts"], inc["start_ts"] + LAB_WAIT))
        ev = gather_patient(run, inc["start_ts"], end, contributions(alerts))
        findings.append(PatientFinding(inc, ev, rank_patient(ev), alerts))
    return sorted(findings, key=lambda f: f.incident["start_ts"])


def rediagnose(run: PatientRun, finding: PatientFinding, at: datetime, horizon: timedelta = HORIZON,
               ) -> PatientFinding:
    """An incident re-read from a later alert of it on (`at`): what a clinician makes of it then."""
    ev = gather_patient(run, at, at + horizon, finding.evidence.contributions)
    return PatientFinding(finding.incident, ev, rank_patient(ev), finding.alerts)



def monitor_messages(run: PatientRun) -> list[dict]:
    """The alerts and clears the live patient monitor raises on a stored run (`replay_run`: event time)."""
    from detectors.patient_monitor import replay_run

    _, outputs = replay_run(run.vitals, run.labs, run.doses)
    return [m for out in outputs for m in (*out.alerts, *out.clears)]


def diagnose_patient_stored(lake: str | Path, run_id: str, horizon: timedelta = HORIZON) -> list[PatientFinding]:
    """Monitoring (the live patient monitor, replayed) + troubleshooting over a stored patient run."""
    run = load_patient_run(lake, run_id)
    return diagnose_patient(run, monitor_messages(run), horizon)


def explain_incident(lake: str | Path, event: dict, start: datetime, end: datetime) -> PatientFinding:
    """A live incident's finding (the troubleshooting worker's): the patient's tables read from the lake, the
    evidence from `start` (its first alert, or an update's latest) to `end` (what the lake holds by now, at most
    `HORIZON` on)."""
    run = load_patient_run(lake, event["run_id"])
    ev = gather_patient(run, start, end, {s: 1.0 for s in event["signals"]})
    opened = event["start_ts"]
    opened = datetime.fromisoformat(opened) if isinstance(opened, str) else opened
    return PatientFinding(event | {"start_ts": opened, "end_ts": None}, ev, rank_patient(ev))
