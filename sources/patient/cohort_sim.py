"""A cohort of virtual patients on one scenario, advanced together: the patient plant's `Fleet`.

`PatientCohortSim` draws the cohort (one random stream per patient, so a patient is the same whatever block it is
simulated in), schedules the doses, the lab draws and the scenario's adverse events, and advances every patient
a chunk of vitals ticks at a time through the PK/PD and vitals models. Each chunk hands back Arrow data: the
measured vitals, the labs sampled in it (reported late) and the doses due in it (taken or missed). Dosing
decisions are taken at each dose time from the INRs *reported* by then, so a chunk is cut at dose times.

The pieces that only shape data (run ids, the event plan, lab sampling, the tables) are module functions, tested
on arrays built by hand (tests/test_patient_tables.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.events import DOSES, LABS, VITAL_SIGNALS, VITALS, Label
from sources.patient.adverse_events import (
    ADVERSE_EVENTS,
    VITALS_EVENTS,
    event_effects,
    pkpd_modifiers,
)
from sources.patient.cohort import draw_cohort
from sources.patient.inr_events import (
    EPISODE_MARGIN_INR,
    OVER_INR,
    SUB_INR,
    SUB_MIN_H,
    OpenEpisodes,
    cause_of,
    first_reached_h,
    hysteresis,
    initiation_end_h,
    scan_episodes,
)
from sources.patient.inr_variability import InrFluctuation, measured_inr, true_inr
from sources.patient.pkpd import Outputs, PkpdState, step_pkpd
from sources.patient.protocols import Advisor, DosingProtocol, make_protocol
from sources.patient.scenarios import SENSOR_EVENTS, EventSpec, PatientScenario
from sources.patient.tables import doses_table, labels_table, labs_table, runs_table, vitals_batch
from sources.patient.vitals import SensorFault, VitalsModel
from sources.patient.warfarin import (
    AMIODARONE_CL_FACTOR,
    AMIODARONE_ONSET_HALF_LIFE_H,
    INDUCER_CL_FACTOR,
    INDUCER_ONSET_HALF_LIFE_H,
    clearance_factor,
)

# independent random streams per patient: an adverse event never changes the noise or the cohort a patient sees
_STREAM_COHORT, _STREAM_EVENTS, _STREAM_LABS, _STREAM_DOSES, _STREAM_INR = range(5)
_STREAMS_DRAWN = (_STREAM_COHORT, _STREAM_EVENTS, _STREAM_INR)
HB_ASSAY_SD_G_DL = 0.2  # analytical SD of a haemoglobin assay (docs/MODEL-PATIENT.md, "Labs")
ESTABLISHED_H = 1e6  # hours on a co-medication that count as "taken since before the run"
# co-medications as dose rows (the agents cite them): amiodarone's maintenance dose, rifampicin's daily dose
COMEDICATION_DAILY_MG: dict[str, float] = {"amiodarone": 200.0, "enzyme_inducer": 600.0}
# a co-medication's factor on warfarin clearance moves first-order towards its full value once started (the
# half-lives of warfarin.py) and back towards 1 once stopped: amiodarone's own elimination half-life (~58 days,
# range 15-142: Cordarone prescribing information) keeps CYP2C9 inhibited for weeks; rifampicin's induction
# wears off as the enzyme turns over (warfarin needs settle ~4 weeks after stopping: Yang et al. 2021, Eur J Clin
# Pharmacol 77:341), a half-life of about a week
COMEDICATION_KINETICS: dict[str, tuple[float, float, float]] = {  # (full factor, onset, offset half-life h)
    "amiodarone": (AMIODARONE_CL_FACTOR, AMIODARONE_ONSET_HALF_LIFE_H, 58 * 24.0),
    "enzyme_inducer": (INDUCER_CL_FACTOR, INDUCER_ONSET_HALF_LIFE_H, 7 * 24.0),
}
LIVE_INTERACTION_LABEL_H = 600.0  # a live amiodarone start's drug_interaction label: as the scenario's window


def patient_run_id(scenario: PatientScenario, seed: int, index: int) -> str:
    """Deterministic: the same scenario, seed and patient always give the same run id.

    >>> from sources.patient.scenarios import load_patient_scenario
    >>> sc = load_patient_scenario("warfarin_fixed_5mg")
    >>> patient_run_id(sc, 1, 0) == patient_run_id(sc, 1, 0) != patient_run_id(sc, 1, 1)
    True
    >>> patient_run_id(sc, 1, 0).startswith("warfarin_fixed_5mg-s1-p000000-")
    True
    """
    digest = hashlib.sha1(f"patient|{scenario.model_dump_json()}|{seed}|{index}".encode()).hexdigest()[:8]
    return f"{scenario.name}-s{seed}-p{index:06d}-{digest}"  # the patient id inside: p{index:06d}


def _draw(value: float | tuple[float, float], rng: np.random.Generator) -> float:
    return float(rng.uniform(*value)) if isinstance(value, tuple) else float(value)


@dataclass(frozen=True)
class EventPlan:
    """The scenario's events as drawn for each patient: one row per (patient, event) that happens."""

    patient: np.ndarray  # int, index into the block
    name: np.ndarray  # str
    onset_h: np.ndarray  # hours since the run began
    duration_h: np.ndarray
    magnitude: np.ndarray
    signal: np.ndarray  # str or None (sensor events)

    def of(self, name: str) -> EventPlan:
        keep = self.name == name
        return EventPlan(*(getattr(self, f.name)[keep] for f in fields(self)))

    def of_signal(self, signal: str) -> EventPlan:
        keep = self.signal == signal
        return EventPlan(*(getattr(self, f.name)[keep] for f in fields(self)))

    def __len__(self) -> int:
        return len(self.patient)


def plan_events(specs: list[EventSpec], rngs: list[np.random.Generator]) -> EventPlan:
    """Each spec drawn per patient (its own stream): whether it happens (`share`), onset, duration, magnitude."""
    rows = []
    for k, rng in enumerate(rngs):
        for spec in specs:
            happens = rng.random() < spec.share
            onset_h, duration_h, magnitude = (_draw(spec.onset_day, rng) * 24.0, _draw(spec.duration_h, rng),
                                              _draw(spec.magnitude, rng))
            if happens and duration_h > 0:
                rows.append((k, spec.event, onset_h, duration_h, magnitude, spec.signal))
    cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
    return EventPlan(np.asarray(cols[0], dtype=np.int64), np.asarray(cols[1], dtype=object),
                     np.asarray(cols[2], dtype=float), np.asarray(cols[3], dtype=float),
                     np.asarray(cols[4], dtype=float), np.asarray(cols[5], dtype=object))


def active_mask(plan: EventPlan, n_patients: int, t_h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one event's plan: (active (n, nt) bool, hours since onset (n, nt), magnitude (n,)). A patient with the
    event twice gets the later onset's window where they overlap."""
    active = np.zeros((n_patients, len(t_h)), bool)
    since = np.full((n_patients, len(t_h)), np.nan)
    magnitude = np.zeros(n_patients)
    for k, onset, duration, mag in zip(plan.patient, plan.onset_h, plan.duration_h, plan.magnitude, strict=True):
        magnitude[k] = mag
        if onset + duration <= t_h[0] or onset > t_h[-1]:  # its window misses these ticks: nothing to mark
            continue
        on = (t_h >= onset) & (t_h < onset + duration)
        active[k] |= on
        since[k, on] = t_h[on] - onset
    return active, since, magnitude


def _since_onset(plan: EventPlan, n_patients: int, t_h: np.ndarray, lasting: bool) -> tuple[np.ndarray, np.ndarray]:
    """(hours since onset (n, nt), NaN where not acting; magnitude (n,)). `lasting`: acting from the onset on
    (a co-medication once started), else only inside the event's window."""
    if not lasting:
        _, since, magnitude = active_mask(plan, n_patients, t_h)
        return since, magnitude
    since = np.full((n_patients, len(t_h)), np.nan)
    magnitude = np.zeros(n_patients)
    for k, onset, mag in zip(plan.patient, plan.onset_h, plan.magnitude, strict=True):
        since[k] = np.where(t_h >= onset, t_h - onset, since[k])
        magnitude[k] = mag
    return since, magnitude


def clearance_factors(t_h: np.ndarray, amiodarone: np.ndarray, enzyme_inducer: np.ndarray, plan: EventPlan,
                      ) -> np.ndarray:
    """(n, nt) factor on warfarin clearance: co-medications taken from before the run (established), and the
    PK/PD events as `adverse_events.pkpd_modifiers` says: `drug_interaction` (amiodarone from its onset on: its
    inhibition outlasts the label's window by weeks), `over_anticoagulation` / `subtherapeutic` (while they last).

    >>> t = np.array([0.0, 24.0 * 21])
    >>> f = clearance_factors(t, np.array([False, True]), np.array([False, False]), plan_events([], []))
    >>> np.round(f, 2).tolist()
    [[1.0, 1.0], [0.55, 0.55]]
    """
    n = len(amiodarone)
    # established: one factor per patient, the same at every tick (computed once, not per tick)
    amio_h = np.where(np.asarray(amiodarone, bool)[:, None], ESTABLISHED_H, np.nan)
    inducer_h = np.where(np.asarray(enzyme_inducer, bool)[:, None], ESTABLISHED_H, np.nan)
    factor = np.repeat(clearance_factor(amio_h, inducer_h), len(t_h), axis=1)
    for name in ("drug_interaction", "over_anticoagulation", "subtherapeutic"):
        events = plan.of(name)
        if len(events):
            since, magnitude = _since_onset(events, n, t_h, lasting=name == "drug_interaction")
            factor = factor * pkpd_modifiers(name, since, magnitude[:, None])["cl_factor"]
    return factor


def missed_dose_share(t_h: np.ndarray, n_patients: int, plan: EventPlan) -> np.ndarray:
    """(n, nt) probability that a dose due then is missed, from `nonadherence` events (while they last)."""
    events = plan.of("nonadherence")
    if not len(events):
        return np.zeros((n_patients, len(t_h)))
    since, magnitude = _since_onset(events, n_patients, t_h, lasting=False)
    return pkpd_modifiers("nonadherence", since, magnitude[:, None])["missed_dose_share"]


def lab_times_h(scenario: PatientScenario) -> np.ndarray:
    """Hours since the run began of every lab draw."""
    return np.array([d * 24.0 + scenario.labs.hour for d in scenario.labs.check_days(scenario.days)])


def dose_times_h(scenario: PatientScenario) -> np.ndarray:
    """Hours since the run began of each daily dose (day 0 is the first)."""
    days = np.arange(int(np.ceil(scenario.days)))
    t = days * 24.0 + scenario.dose_hour
    return t[t < scenario.days * 24.0]


INR_EVENTS = ("over_anticoagulation", "subtherapeutic")  # labelled from the true INR (`inr_events`), not the plan


def event_labels(plan: EventPlan, run_ids: list[str], patient_ids: list[str], start: datetime,
                 catalogue: dict) -> list[Label]:
    """Ground truth of each planned event: signals, root cause and action from the adverse-event catalogue (a
    sensor event names the faulty vital). The INR events are not labelled here: an injected over_anticoagulation
    or subtherapeutic is only a cause; its label comes from the true INR reaching the event (`inr_labels`)."""
    labels = []
    for k, name, onset, duration, magnitude, signal in zip(plan.patient, plan.name, plan.onset_h, plan.duration_h,
                                                           plan.magnitude, plan.signal, strict=True):
        if name in INR_EVENTS:
            continue
        info = catalogue[name]
        signals = [signal] if name in SENSOR_EVENTS else list(info.signals)
        labels.append(Label(run_ids[k], patient_ids[k], name, start + timedelta(hours=float(onset)),
                            start + timedelta(hours=float(onset + duration)), signals, float(magnitude),
                            info.root_cause, info.action))
    return labels


def inr_label(plan: EventPlan, k: int, event: str, start_h: float, end_h: float, extreme_inr: float,
              run_ids: list[str], patient_ids: list[str], start: datetime, catalogue: dict) -> Label:
    """The label of one INR episode of patient `k`: magnitude = its peak (over) or nadir (sub) true INR; root
    cause and action those of the injected cause acting on it (`inr_events.cause_of`), else the event's own."""
    mine = plan.patient == k
    windows = [(str(name), float(onset), np.inf if name == "drug_interaction" else float(onset + duration))
               for name, onset, duration in zip(plan.name[mine], plan.onset_h[mine], plan.duration_h[mine],
                                                strict=True)]
    cause = cause_of(event, start_h, end_h, windows)
    info = catalogue[event]
    root_cause, action = info.root_cause, info.action
    if cause == event:
        root_cause = f"{info.root_cause}; injected {event}: {info.mechanism}"
    elif cause is not None:
        root_cause, action = catalogue[cause].root_cause, catalogue[cause].action
    return Label(run_ids[k], patient_ids[k], event, start + timedelta(hours=start_h), start + timedelta(hours=end_h),
                 list(info.signals), round(extreme_inr, 2), root_cause, action)


def concat_cohorts(parts: list) -> object:
    """One cohort of the patients of `parts` (Cohort dataclasses), in order: each drawn from its own stream."""
    first = parts[0]
    values = {}
    for f in fields(first):
        items = [getattr(p, f.name) for p in parts]
        values[f.name] = ({k: np.concatenate([d[k] for d in items]) for k in items[0]} if isinstance(items[0], dict)
                          else np.concatenate(items))
    return type(first)(**values)


_DRUG_EFFECTS = (("hr_bpm", "hr_effect_bpm"), ("sbp_mmhg", "sbp_effect_mmhg"), ("dbp_mmhg", "dbp_effect_mmhg"))


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """(n, nt) from the segments of a chunk, without a copy when there is one."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


@dataclass
class LiveCourse:
    """One co-medication started or stopped live, per patient. Where `live`, its factor on warfarin clearance
    moves first-order from `level` (at `since_h`) towards its full value (`taking`) or towards 1 (stopped); a
    start from nothing is `warfarin.clearance_factor` exactly. Elsewhere the scenario's own course applies.

    >>> c = LiveCourse.none("enzyme_inducer", 2)
    >>> c.change(1, taking=True, at_h=0.0, level=1.0)
    >>> t = np.array([0.0, 96.0])
    >>> bool(np.allclose(c.factor(t)[1], clearance_factor(np.full(2, np.nan), t)))
    True
    """

    drug: str
    live: np.ndarray  # bool (n,)
    taking: np.ndarray  # bool (n,)
    since_h: np.ndarray
    level: np.ndarray

    @classmethod
    def none(cls, drug: str, n: int) -> LiveCourse:
        return cls(drug, np.zeros(n, bool), np.zeros(n, bool), np.zeros(n), np.ones(n))

    def change(self, k: int, taking: bool, at_h: float, level: float) -> None:
        self.live[k], self.taking[k], self.since_h[k], self.level[k] = True, taking, at_h, level

    def factor(self, t_h: np.ndarray) -> np.ndarray:
        """(n, nt) factor on clearance (meaningful where `live`)."""
        full, onset_h, offset_h = COMEDICATION_KINETICS[self.drug]
        target = np.where(self.taking, full, 1.0)[:, None]
        half_life_h = np.where(self.taking, onset_h, offset_h)[:, None]
        elapsed = np.clip(np.asarray(t_h, float)[None, :] - self.since_h[:, None], 0.0, None)
        return target + (self.level[:, None] - target) * np.exp(-np.log(2.0) * elapsed / half_life_h)


@dataclass
class PatientChunk:
    vitals: pa.RecordBatch
    labs: pa.Table
    doses: pa.Table


class PatientCohortSim:
    """N patients running one scenario. Patient k has global index `first_index + k` (its id p{index:06d}).

    `advisor` (protocol "twin"): `advisor(day, last_inr, current_dose_mg) -> dose mg per patient`, the twin's
    feedback loop (`protocols.TwinProtocol`); without one the twin protocol is the genotype-guided one."""

    def __init__(self, scenario: PatientScenario, n_patients: int, seed: int = 0, first_index: int = 0,
                 run_ids: list[str] | None = None, advisor: Advisor | None = None) -> None:
        if n_patients <= 0:
            raise ValueError(f"n_patients {n_patients!r} must be > 0")
        self.scenario, self.seed, self.n = scenario, seed, n_patients
        self.indices = list(range(first_index, first_index + n_patients))
        self.run_ids = run_ids or [patient_run_id(scenario, seed, i) for i in self.indices]
        # only the streams drawn from (streams 2 and 3 are reserved, never drawn: making them cost a third of
        # the set-up)
        self.rngs = [{s: np.random.default_rng([seed, i, s]) for s in _STREAMS_DRAWN} for i in self.indices]
        co = scenario.cohort
        self.cohort = concat_cohorts([
            draw_cohort(1, r[_STREAM_COHORT], first_index=i, ancestry=co.ancestry, amiodarone_share=co.amiodarone_share,
                        enzyme_inducer_share=co.enzyme_inducer_share) for i, r in zip(self.indices, self.rngs, strict=True)])
        self.patient_ids = self.cohort.patient_id.tolist()
        self.started = scenario.start
        self.dt_s = scenario.vitals_every_min * 60.0
        self.dt_h = self.dt_s / 3600.0
        self.total_ticks = int(round(scenario.days * 86400.0 / self.dt_s))
        self.seq = 0
        self.plan = plan_events(scenario.events, [r[_STREAM_EVENTS] for r in self.rngs])
        # an event planned at or after the run's end never happens: no label for it (an onset past `days`, a
        # range reaching past a shortened --days), else a benchmark counts it as missed
        run_end = self.started + timedelta(days=scenario.days)
        self.labels = [label for label in event_labels(self.plan, self.run_ids, self.patient_ids, self.started,
                                                       ADVERSE_EVENTS) if label.start_ts < run_end]
        # one stream per block for what is drawn tick by tick (vitals noise, lab noise, adherence): vectorised
        block_seed = [seed, first_index, n_patients, 99]
        self.rng = np.random.default_rng(block_seed)
        self.vitals_model = VitalsModel(self.cohort, np.random.default_rng(block_seed + [1]))
        self.measure_rng = np.random.default_rng(block_seed + [2])
        self.state = PkpdState.initial(self.n)
        # the true INR's slow biological fluctuation (`inr_variability`): each patient's own stream
        self.inr_fluctuation = InrFluctuation([r[_STREAM_INR] for r in self.rngs], self.dt_h)
        self.advisor = advisor
        self.protocol = self._protocol()
        self.dose_h = dose_times_h(scenario)
        self.lab_h = lab_times_h(scenario)
        self.warfarin_dose_mg = np.zeros(self.n)  # today's decided dose
        self.last_inr = np.full(self.n, np.nan)  # the latest INR *reported*
        self.last_inr_h = np.full(self.n, np.nan)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []  # (reported_h, inr) not yet seen (NaN: seen)
        self.hb_delta_g_dl = np.zeros(self.n)
        # INR episodes open at the end of the last chunk (`inr_events`): labelled when they close or the run ends
        self.open_over, self.open_sub = OpenEpisodes.none(self.n), OpenEpisodes.none(self.n)
        self.inr_reached_h = np.full(self.n, np.nan)  # when the true INR first reached 2 (ends the initiation)
        # whether the true INR is beyond each limit at the last tick, with the episodes' hysteresis (`inr_events`)
        self.inr_beyond = {"over": np.zeros(self.n, bool), "sub": np.zeros(self.n, bool)}
        # live control (`sources.patient.live`): a clinician's prescription (NaN: the protocol's) and holds
        self.prescribed_mg = {drug: np.full(self.n, np.nan) for drug in ("warfarin", "metoprolol")}
        self.hold_left = {drug: np.zeros(self.n, int) for drug in ("warfarin", "metoprolol")}
        self.on_metoprolol = np.full(self.n, scenario.takes_metoprolol)
        self.courses = {drug: LiveCourse.none(drug, self.n) for drug in COMEDICATION_DAILY_MG}

    # ---- construction --------------------------------------------------------------------------------
    def _protocol(self) -> DosingProtocol | None:
        sc = self.scenario
        if not sc.takes_warfarin:
            return None
        return make_protocol(sc.protocol, self.cohort, target_inr=sc.target_inr, advisor=self.advisor,
                             fixed_dose_mg=sc.fixed_dose_mg)

    def _sensor_faults(self, t_h: np.ndarray) -> list:
        """The monitor faults acting in this chunk, as the vitals model's `measure` takes them."""
        out = []
        for name in SENSOR_EVENTS:
            plan = self.plan.of(name)
            for signal in sorted(set(plan.signal)):
                active, since, magnitude = active_mask(plan.of_signal(signal), self.n, t_h)
                if active.any():
                    out.append(SensorFault(name.removeprefix("sensor_"), signal, active, since,
                                           magnitude[:, None]))
        return out

    # ---- advancing ------------------------------------------------------------------------------------
    @property
    def unit_ids(self) -> list[str]:
        return self.patient_ids

    @property
    def remaining_ticks(self) -> int:
        return self.total_ticks - self.seq

    @property
    def done(self) -> bool:
        return self.remaining_ticks <= 0

    def _decide_warfarin(self, t_h: float) -> np.ndarray:
        """Today's warfarin dose per patient, from the INRs reported by `t_h`."""
        keep = []
        for reported_h, inr in self.pending:  # in order of sampling: a later sample overrides an earlier one
            seen = (reported_h <= t_h) & ~np.isnan(inr)
            self.last_inr = np.where(seen, inr, self.last_inr)
            self.last_inr_h = np.where(seen, reported_h, self.last_inr_h)
            if (reported_h > t_h).any():
                keep.append((reported_h, np.where(seen, np.nan, inr)))
        self.pending = keep
        return np.asarray(self.protocol.next_doses(int(t_h // 24), self.last_inr, self.last_inr_h), float)

    def step(self, n_ticks: int) -> PatientChunk:
        """Advance every patient by `n_ticks` vitals ticks."""
        n_ticks = min(n_ticks, self.remaining_ticks)
        if n_ticks <= 0:
            return PatientChunk(pa.RecordBatch.from_pylist([], schema=VITALS), LABS.empty_table(),
                                DOSES.empty_table())
        sc, n = self.scenario, self.n
        seq0 = self.seq
        t_h = (seq0 + np.arange(n_ticks)) * self.dt_h
        t_end = t_h[-1] + self.dt_h
        dose_w = np.zeros((n, n_ticks))
        dose_m = np.zeros((n, n_ticks))
        doses: list[pa.Table] = []
        cl_factor = self._live_clearance(t_h, clearance_factors(t_h, self.cohort.amiodarone,
                                                                 self.cohort.enzyme_inducer, self.plan))
        missed_share = missed_dose_share(t_h, n, self.plan)
        # the chunk is cut at dose times: a decision needs the INRs reported by then, which this chunk's pk/pd
        # produces; so it is integrated segment by segment (a cut a day: the patients stay vectorised)
        due = [float(h) for h in self.dose_h if t_h[0] - 1e-9 <= h < t_end - 1e-9]
        cuts = {min(n_ticks - 1, int(np.ceil((h - t_h[0]) / self.dt_h - 1e-9))): h for h in due}
        bounds = sorted({0, *cuts, n_ticks})
        fluctuation = self.inr_fluctuation.step(n_ticks)
        samples = []
        joined = Outputs.empty(n, n_ticks)  # the segments write their outputs here: no slicing, no joining
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if a in cuts:
                at_h = cuts[a]
                taken = (self.rng.random(n) < sc.adherence) & (self.rng.random(n) >= missed_share[:, a])
                if sc.takes_warfarin:
                    self.warfarin_dose_mg = self._prescribed("warfarin", self._decide_warfarin(at_h))
                    dose_w[:, a] = np.where(taken, self.warfarin_dose_mg, 0.0)
                    doses.append(doses_table(self.run_ids, self.patient_ids, self.started, at_h, "warfarin",
                                             self.warfarin_dose_mg, taken))
                if self.on_metoprolol.any():
                    dose = self._prescribed("metoprolol", np.full(n, sc.metoprolol_dose_mg))
                    dose_m[:, a] = np.where(taken & self.on_metoprolol, dose, 0.0)
                    doses.append(self._doses_of(self.on_metoprolol, at_h, "metoprolol", dose, taken))
                doses += [self._doses_of(on, at_h, drug, np.full(n, mg), np.ones(n, bool))
                          for drug, mg in COMEDICATION_DAILY_MG.items() if (on := self.taking(drug, at_h)).any()]
            self.state, out = step_pkpd(self.state, self.cohort, dose_w, dose_m, cl_factor, self.dt_h, span=(a, b),
                                        into=joined)
            for h in self.lab_h[(self.lab_h >= t_h[a] - 1e-9) & (self.lab_h < t_h[b - 1] + self.dt_h - 1e-9)]:
                j = min(b - 1, int(np.ceil((h - t_h[0]) / self.dt_h - 1e-9)))
                inr = measured_inr(true_inr(out.inr[:, j - a], fluctuation[:, j]), self.rng)
                delay = sc.labs.delay_h
                reported_h = h + (self.rng.uniform(*delay, n) if isinstance(delay, tuple) else np.full(n, delay))
                self.pending.append((reported_h, inr))
                # the Hb assay noise drawn here, in sampling order: drawn at the chunk's end it would shift the
                # stream by the chunking, and with it later lab INRs and titrated doses (labels included)
                hb_noise = self.rng.normal(0.0, HB_ASSAY_SD_G_DL, n)
                samples.append((j, float(h), reported_h, inr, hb_noise))
        # only the deltas that exist: the drugs' on pulse and pressures, the events' where they act
        effects = {key: getattr(joined, attr) for key, attr in _DRUG_EFFECTS
                   if self.on_metoprolol.any()}
        for name in sorted(set(self.plan.name) & set(VITALS_EVENTS)):
            active, since, magnitude = active_mask(self.plan.of(name), n, t_h)
            rows = np.flatnonzero(active.any(axis=1))  # the deltas of the few it acts on, not of the cohort
            if not len(rows):
                continue
            for key, delta in event_effects(name, since[rows], magnitude[rows, None]).items():
                if key not in effects:  # (setdefault would make the zeros every time)
                    effects[key] = np.zeros((n, n_ticks))
                effects[key][rows] += np.where(active[rows], delta, 0.0)
        if "hb_g_dl" not in effects:
            effects["hb_g_dl"] = np.zeros((n, n_ticks))
        true = self.vitals_model.step(t_h, {k: v for k, v in effects.items() if k in VITAL_SIGNALS})
        measured = self.vitals_model.measure(true, self.measure_rng, self._sensor_faults(t_h))
        self.seq += n_ticks
        self.last_true = {**true, "inr": true_inr(joined.inr, fluctuation)}
        if sc.takes_warfarin:
            self._inr_labels(t_h, self.last_true["inr"])
        return PatientChunk(vitals_batch(self.run_ids, self.patient_ids, self.started, self.dt_h, seq0, measured),
                            self._labs(samples, effects["hb_g_dl"]),
                            pa.concat_tables(doses) if doses else DOSES.empty_table())

    def _inr_labels(self, t_h: np.ndarray, inr: np.ndarray) -> None:
        """Label the INR episodes of the true INR that close in this chunk (or at the run's end)."""
        found = []
        over = hysteresis(inr >= OVER_INR, inr < OVER_INR - EPISODE_MARGIN_INR, self.inr_beyond["over"])
        sub = hysteresis(inr < SUB_INR, inr >= SUB_INR + EPISODE_MARGIN_INR, self.inr_beyond["sub"])
        self.inr_beyond = {"over": over[:, -1], "sub": sub[:, -1]}
        closed, self.open_over = scan_episodes(over, inr, t_h, self.open_over, np.maximum)
        found += [("over_anticoagulation", *c) for c in closed]
        # in range once clear of the limit's daily ripple (`inr_events`), as the monitor judges it from readings
        self.inr_reached_h = first_reached_h(self.inr_reached_h, inr >= SUB_INR + EPISODE_MARGIN_INR, t_h)
        begun = initiation_end_h(float(self.dose_h[0]) if len(self.dose_h) else 0.0, self.inr_reached_h)
        closed, self.open_sub = scan_episodes(sub & (t_h[None, :] >= begun[:, None]), inr, t_h, self.open_sub,
                                              np.minimum)
        found += [("subtherapeutic", *c) for c in closed]
        if self.done:  # the run's end closes what is still open
            end_h = self.total_ticks * self.dt_h
            for event, open_ in (("over_anticoagulation", self.open_over), ("subtherapeutic", self.open_sub)):
                found += [(event, int(k), float(open_.start_h[k]), end_h, float(open_.extreme[k]))
                          for k in np.nonzero(~np.isnan(open_.start_h))[0]]
        for event, k, a, b, extreme in sorted(found, key=lambda f: (f[2], f[1], f[0])):
            if event == "subtherapeutic" and b - a < SUB_MIN_H - 1e-9:
                continue
            self.labels.append(inr_label(self.plan, k, event, a, b, extreme, self.run_ids, self.patient_ids,
                                         self.started, ADVERSE_EVENTS))

    def _labs(self, samples: list, hb_delta: np.ndarray) -> pa.Table:
        if not samples:
            return LABS.empty_table()
        n = self.n
        parts = []
        for j, h, reported_h, inr, hb_noise in samples:
            hb = np.round(self.cohort.hb_g_dl + hb_delta[:, j] + hb_noise, 1)
            parts.append(labs_table(self.run_ids, self.patient_ids, self.started, np.arange(n), np.full(n, h),
                                    reported_h, inr, hb))
        return pa.concat_tables(parts)

    # ---- live control: what `sources.patient.commands` asks, from the next tick on -----------------------
    @property
    def now_h(self) -> float:
        """Hours since the run began at the next tick to simulate."""
        return self.seq * self.dt_h

    def index_of(self, patient_id: str) -> int:
        return self.patient_ids.index(patient_id)

    def set_daily_dose(self, k: int, drug: str, daily_mg: float) -> None:
        """Patient `k` gets `daily_mg` of `drug` at every dose time from the next one on, whatever the protocol
        would give (metoprolol is started if they were not on it)."""
        self._check_drug(k, drug, starting=True)
        self.prescribed_mg[drug][k] = float(daily_mg)
        if drug == "metoprolol":
            self.on_metoprolol[k] = True

    def hold(self, k: int, drug: str, days: int) -> None:
        """The next `days` daily doses of `drug` are not given (dose rows of 0 mg, as the nomogram's holds);
        then the dose goes on where it was, prescribed from now on (the clinician has taken over)."""
        self._check_drug(k, drug, starting=False)
        if np.isnan(self.prescribed_mg[drug][k]):
            self.prescribed_mg[drug][k] = (self.scenario.metoprolol_dose_mg if drug == "metoprolol"
                                           else float(self.protocol.dose_mg[k]))
        self.hold_left[drug][k] = int(days)

    def comedication(self, k: int, drug: str, action: str) -> list[Label]:
        """Start or stop amiodarone or an enzyme inducer for patient `k` now; the new labels (an amiodarone start
        is the `drug_interaction` event: its label, and the cause its INR episodes are put down to)."""
        t = self.now_h
        taking = bool(self.taking(drug, t)[k])
        if (action == "start") == taking:
            raise ValueError(f"{self.patient_ids[k]} {'already takes' if taking else 'takes no'} {drug}")
        course = self.courses[drug]
        if drug == "amiodarone" and action == "start" and not course.live[k]:
            return self.inject_event(k, "drug_interaction", 1.0, LIVE_INTERACTION_LABEL_H)
        now = np.array([t])
        level = course.factor(now) if course.live[k] else self._scenario_factor(drug, now)
        course.change(k, action == "start", t, float(level[k, 0]))
        if drug != "amiodarone" or action != "start":
            return []
        once = EventPlan(np.array([k]), np.array(["drug_interaction"], dtype=object), np.array([t]),
                         np.array([LIVE_INTERACTION_LABEL_H]), np.array([1.0]), np.array([None], dtype=object))
        labels = event_labels(once, self.run_ids, self.patient_ids, self.started, ADVERSE_EVENTS)
        self.labels += labels
        return labels

    def inject_event(self, k: int, event: str, magnitude: float, duration_h: float,
                     signal: str | None = None) -> list[Label]:
        """An adverse event or monitor fault for patient `k` starting now, as if the scenario had planned it;
        its label (none for the INR events: their labels come from the INR reaching them)."""
        if event not in ADVERSE_EVENTS:
            raise ValueError(f"unknown adverse event {event!r}; allowed: {', '.join(ADVERSE_EVENTS)}")
        if (event in SENSOR_EVENTS) != (signal is not None):
            raise ValueError(f"{event} needs the faulty vital (signal)" if event in SENSOR_EVENTS
                             else f"signal is only for sensor_* events, not {event}")
        if event in INR_EVENTS + ("nonadherence",) and not self.scenario.takes_warfarin:
            raise ValueError(f"{event} acts through warfarin; {self.patient_ids[k]} takes none")
        if event == "drug_interaction" and self.taking("amiodarone", self.now_h)[k]:
            raise ValueError(f"{self.patient_ids[k]} already takes amiodarone")
        row = EventPlan(np.array([k]), np.array([event], dtype=object), np.array([self.now_h]),
                        np.array([float(duration_h)]), np.array([float(magnitude)]), np.array([signal], dtype=object))
        self.plan = EventPlan(*(np.concatenate([getattr(self.plan, f.name), getattr(row, f.name)])
                                for f in fields(EventPlan)))
        labels = event_labels(row, self.run_ids, self.patient_ids, self.started, ADVERSE_EVENTS)
        self.labels += labels
        return labels

    def taking(self, drug: str, t_h: float) -> np.ndarray:
        """(n,) bool: who takes co-medication `drug` at `t_h` (from before the run, from a drug_interaction
        event's onset on, or as started live)."""
        course = self.courses[drug]
        if drug == "amiodarone":
            events = self.plan.of("drug_interaction")
            scenario = np.asarray(self.cohort.amiodarone, bool).copy()
            scenario[events.patient[events.onset_h <= t_h + 1e-9]] = True
        else:
            scenario = np.asarray(self.cohort.enzyme_inducer, bool)
        return np.where(course.live, course.taking, scenario)

    def _check_drug(self, k: int, drug: str, starting: bool) -> None:
        if drug == "warfarin" and not self.scenario.takes_warfarin:
            raise ValueError(f"{self.patient_ids[k]}'s scenario {self.scenario.name} gives no warfarin")
        if drug == "metoprolol" and not starting and not self.on_metoprolol[k]:
            raise ValueError(f"{self.patient_ids[k]} takes no metoprolol")

    def _prescribed(self, drug: str, decided: np.ndarray) -> np.ndarray:
        """Today's doses of `drug`: the protocol's or the prescribed, 0 where held (a hold day counted)."""
        dose = np.where(np.isnan(self.prescribed_mg[drug]), decided, self.prescribed_mg[drug])
        held = self.hold_left[drug] > 0
        if not held.any():
            return dose
        self.hold_left[drug] = np.where(held, self.hold_left[drug] - 1, 0)
        return np.where(held, 0.0, dose)

    def _doses_of(self, who: np.ndarray, at_h: float, drug: str, dose_mg: np.ndarray, taken: np.ndarray
                  ) -> pa.Table:
        """The dose rows of one dose time for the patients `who` (bool)."""
        if who.all():
            return doses_table(self.run_ids, self.patient_ids, self.started, at_h, drug, dose_mg, taken)
        idx = np.nonzero(who)[0]
        return doses_table([self.run_ids[i] for i in idx], [self.patient_ids[i] for i in idx], self.started, at_h,
                           drug, dose_mg[idx], taken[idx])

    def _scenario_factor(self, drug: str, t_h: np.ndarray) -> np.ndarray:
        """(n, nt) the factor on clearance of one co-medication as the scenario gives it (no live change)."""
        none = np.zeros(self.n, bool)
        if drug == "amiodarone":
            return clearance_factors(t_h, self.cohort.amiodarone, none, self.plan.of("drug_interaction"))
        return clearance_factors(t_h, none, self.cohort.enzyme_inducer, plan_events([], []))

    def _live_clearance(self, t_h: np.ndarray, factor: np.ndarray) -> np.ndarray:
        """The scenario's factor on clearance with each live co-medication course in place of its own."""
        for drug, course in self.courses.items():
            if course.live.any():
                factor = np.where(course.live[:, None],
                                  factor * course.factor(t_h) / self._scenario_factor(drug, t_h), factor)
        return factor

    # ---- metadata tables -------------------------------------------------------------------------------
    def runs_table(self, ended: bool = True) -> pa.Table:
        return runs_table(self.run_ids, self.patient_ids, self.scenario, self.seed,
                          self.total_ticks * self.dt_h if ended else None)

    def labels_table(self) -> pa.Table:
        return labels_table(self.labels)

    def patients_table(self) -> pa.Table:
        return self.cohort.patients_table(self.run_ids)


@dataclass
class SimulatedCohort:
    """A cohort simulated to its end in memory (what `biopilot simulate --plant patient` would write), for the
    benchmarks and tests that replay it without a lake."""

    sim: PatientCohortSim
    vitals: pa.Table
    labs: pa.Table
    doses: pa.Table

    def of_run(self, run_id: str) -> tuple[pa.Table, pa.Table, pa.Table]:
        """One patient's (vitals, labs, doses)."""
        return tuple(t.filter(pc.equal(t["run_id"], run_id))  # type: ignore[return-value]
                     for t in (self.vitals, self.labs, self.doses))


def simulate_cohort(scenario: PatientScenario, n_patients: int, seed: int = 0) -> SimulatedCohort:
    """`n_patients` of `scenario` simulated to the end, a day at a time as `biopilot simulate` steps (so the
    same rows)."""
    sim = PatientCohortSim(scenario, n_patients, seed=seed)
    chunk_ticks = max(1, int(86400 / sim.dt_s))
    vitals, labs, doses = [], [], []
    while not sim.done:
        chunk = sim.step(chunk_ticks)
        vitals.append(pa.Table.from_batches([chunk.vitals]))
        labs.append(chunk.labs)
        doses.append(chunk.doses)
    return SimulatedCohort(sim, pa.concat_tables(vitals), pa.concat_tables(labs), pa.concat_tables(doses))
