"""`biopilot bench agents --plant patient`: root-cause quality of the patient agents over a labelled cohort.

Suite: every adverse-event scenario (one event each) and every composite (several events) x `seeds` patients
(seed 500, patients 0..seeds-1: each draws its cohort, event timing and noise from its own random streams, so
they are as independent as seeds), plus `normal_runs` normal patients (seed 700, half `warfarin_standard`, half
`metoprolol_100mg`). Each cohort is simulated in memory by the simulator `biopilot simulate --plant patient`
writes to the lake with (`PatientCohortSim`, the same chunks, hence the same `vitals`, `labs`, `doses`,
`patients` and `labels` rows; the agents may not import `biopilot`, and the Delta round trip adds nothing but
time). Each patient goes through the live monitor (`detectors.patient_monitor.replay_run`: its alerts and clears
in event time) and the agents (`agents.patient_diagnose.diagnose_patient`), as `biopilot diagnose` does.

Scoring, per label (the simulator's ground truth; the agents never read it):
- the label's incident is the first one led by a signal of the label that alerts inside its window (+ `grace`:
  2 h, or a week for an INR event, which only a weekly lab can show), else the first such one that overlaps it;
- an INR episode (the true INR >= 4, or < 2 for 72 h) in which no lab read out of range (none was drawn, or the
  assay's ~18 % error put it back in range) can be seen by nobody: it is counted apart (`unobservable_labels`),
  not scored;
- an incident that was already open when the label began (a low INR running for weeks, then doses missed) is
  judged by its diagnosis as of its first alert inside the label's window, as a clinician re-reads it then;
- top-1 counts when the leading (not abstained) cause is the label's cause: the event itself, or for an INR
  episode the injected cause that drove it (amiodarone started: drug_interaction; doses missed: nonadherence);
  top-3 when it is among the three best. Accuracies are over all labels (a missed event counts as wrong).
Incidents on normal patients about none of their labels (led by none of its signals inside its window + grace)
are false incidents (`incidents_on_normal_runs`); a normal patient's own INR episodes (a dose that suits them
badly) are labels like any other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from agents.benchmark import AgentResult, LabelOutcome
from agents.patient_diagnose import PatientFinding, PatientRun, diagnose_patient, monitor_messages, rediagnose
from agents.troubleshooting import Diagnosis
from sources.patient.adverse_events import ADVERSE_EVENTS
from sources.patient.inr_events import INR_CAUSES, OVER_INR, SUB_INR

NORMAL_SCENARIOS = ("warfarin_standard", "metoprolol_100mg")
EVENT_SEED, NORMAL_SEED = 500, 700
GRACE = timedelta(hours=2)
INR_GRACE = timedelta(days=7)


@dataclass
class PatientAgentResult(AgentResult):
    labels_on_normal_runs: int = 0
    unobservable_labels: int = 0
    normal_incidents_by_member: dict[str, int] = field(default_factory=dict)  # what opened them
    spurious_by_member: dict[str, int] = field(default_factory=dict)  # on event patients, matching no label
    seconds_simulate: float = 0.0
    seconds_score: float = 0.0
    patients: int = 0

    def as_json(self) -> dict:
        return _finite(super().as_json()) | {"plant": "patient", "patients": self.patients,
                      "labels_on_normal_runs": self.labels_on_normal_runs,
                      "unobservable_labels": self.unobservable_labels,
                      "incidents_on_normal_runs_by_member": self.normal_incidents_by_member,
                      "spurious_incidents_on_fault_runs_by_member": self.spurious_by_member,
                      "seconds_simulate": round(self.seconds_simulate, 1),
                      "seconds_score": round(self.seconds_score, 1)}


def _finite(value: object) -> object:
    """NaN (a rate over no labels) as null: the JSON stays standard."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and value != value else value


def suite_plan(seeds: int, normal_runs: int, only: tuple[str, ...] | None = None) -> list[tuple[str, int, int, bool]]:
    """(scenario, seed, patients, normal) of each cohort of the suite; `only`: these event scenarios."""
    from sources.patient.scenarios import load_patient_scenario, patient_scenario_names

    events = [n for n in patient_scenario_names() if load_patient_scenario(n).events and (not only or n in only)]
    plan = [(n, EVENT_SEED, seeds, False) for n in events]
    for i, name in enumerate(NORMAL_SCENARIOS):
        share = normal_runs // len(NORMAL_SCENARIOS) + (i < normal_runs % len(NORMAL_SCENARIOS))
        if share:
            plan.append((name, NORMAL_SEED, share, True))
    return plan


@dataclass
class SimulatedPatient:
    run: PatientRun
    labels: list[dict]
    scenario: str
    index: int  # the patient's index in its cohort (its random streams)
    normal: bool


def simulated_patients(name: str, seed: int, n: int, normal: bool) -> list[SimulatedPatient]:
    """`n` patients of a scenario, simulated to their end, with their tables and labels."""
    from sources.patient.cohort_sim import simulate_cohort
    from sources.patient.scenarios import load_patient_scenario

    cohort = simulate_cohort(load_patient_scenario(name), n, seed=seed)
    sim = cohort.sim
    patients, labels = sim.patients_table(), sim.labels_table()
    out = []
    for i, run_id in enumerate(sim.run_ids):
        vitals, labs, doses = cohort.of_run(run_id)
        out.append(SimulatedPatient(PatientRun(run_id, vitals, labs, doses,
                                               _by_run(patients, run_id).to_pylist()[0]),
                                    _by_run(labels, run_id).to_pylist(), name, i, normal))
    return out


def _by_run(table: pa.Table | None, run_id: str) -> pa.Table | None:
    return None if table is None else table.filter(pc.equal(table["run_id"], run_id))


def expected_cause(label: dict) -> str:
    """The cause a diagnosis should name for a label: an INR episode's injected cause when its root cause says one
    drove it (amiodarone, missed doses), else the label's own event."""
    for cause in INR_CAUSES.get(label["fault"], ()):
        if cause != label["fault"] and label["root_cause"] == ADVERSE_EVENTS[cause].root_cause:
            return cause
    return label["fault"]


def label_incidents(label: dict, findings: list[PatientFinding], run_end: datetime) -> list[PatientFinding]:
    """The incidents about a label: led by one of its signals, overlapping its window (+ grace); those alerting
    inside it first (one that only runs on through it says less), in time order."""
    grace = INR_GRACE if "inr" in (label["signals"] or []) else GRACE
    lo, hi = label["start_ts"], label["end_ts"] + grace
    led = [f for f in findings if f.incident["start_ts"] <= hi and (f.incident["end_ts"] or run_end) >= lo
           and set(f.incident["signals"]) & set(label["signals"] or [])]
    return sorted(led, key=lambda f: not any(lo <= a["ts"] <= hi for a in f.alerts))


def label_incident(label: dict, findings: list[PatientFinding], run_end: datetime) -> PatientFinding | None:
    """The incident that answers a label (see the module docstring)."""
    about = label_incidents(label, findings, run_end)
    return about[0] if about else None


def judged_diagnosis(run: PatientRun, found: PatientFinding, label: dict) -> Diagnosis:
    """The diagnosis a label is judged by: its incident's, or, for an incident already open when the label began,
    as re-read at its first alert inside the label's window."""
    if found.incident["start_ts"] < label["start_ts"]:
        later = [a for a in found.alerts if a["ts"] >= label["start_ts"]]
        if later:
            return rediagnose(run, found, later[0]["ts"]).diagnosis
    return found.diagnosis


def score_run(run: PatientRun, findings: list[PatientFinding], labels: list[dict], scenario: str, seed: int,
              composite: bool) -> tuple[list[LabelOutcome], set[str], int]:
    """Each label's outcome, the incidents that answered a label, and how many INR episodes no lab sampled."""
    run_end = pc.max(run.vitals["ts"]).as_py()
    outcomes, explained, unseen = [], set(), 0
    for label in sorted(labels, key=lambda r: r["start_ts"]):
        # every incident about a label is a true one, whichever of them answers it
        explained |= {f.incident["incident_id"] for f in label_incidents(label, findings, run_end)}
        if label["fault"] in INR_CAUSES and not _sampled(run.labs, label):
            unseen += 1
            continue
        cause = expected_cause(label)
        name = label["fault"] + (" (composite)" if composite else "")
        found = label_incident(label, findings, run_end)
        if found is None:
            outcomes.append(LabelOutcome(name, scenario, seed, False, False, False, False, None))
            continue
        diagnosis = judged_diagnosis(run, found, label)
        best3 = [h.fault for h in diagnosis.ranked(3)]
        top = diagnosis.top.fault if diagnosis.top else None
        outcomes.append(LabelOutcome(name, scenario, seed, True, top == cause, cause in best3, diagnosis.abstained,
                                     top))
    return outcomes, explained, unseen


def _sampled(labs: pa.Table | None, label: dict) -> bool:
    """Whether a lab drawn during the label's INR episode reads out of range (>= 4, or < 2): what could show it."""
    if labs is None or labs.num_rows == 0:
        return False
    t, inr = labs["sample_ts"], labs["inr"]
    out = pc.greater_equal(inr, OVER_INR) if label["fault"] == "over_anticoagulation" else pc.less(inr, SUB_INR)
    inside = pc.and_(pc.and_(pc.greater_equal(t, pa.scalar(label["start_ts"], t.type)),
                             pc.less_equal(t, pa.scalar(label["end_ts"], t.type))), out)
    return pc.any(inside).as_py() or False


def evaluate(patients: list[SimulatedPatient], say: Callable[[str], None]) -> PatientAgentResult:
    composite = {p.scenario for p in patients if _events(p.scenario) > 1}
    res = PatientAgentResult(normal_runs=sum(p.normal for p in patients), patients=len(patients))
    for k, p in enumerate(patients, 1):
        findings = diagnose_patient(p.run, monitor_messages(p.run))
        outcomes, explained, unseen = score_run(p.run, findings, p.labels, p.scenario, p.index,
                                                p.scenario in composite)
        res.outcomes += outcomes
        res.unobservable_labels += unseen
        spurious = [f for f in findings if f.incident["incident_id"] not in explained]
        by_member = res.normal_incidents_by_member if p.normal else res.spurious_by_member
        for f in spurious:
            member = f.alerts[0].get("member", "?") if f.alerts else "?"
            by_member[member] = by_member.get(member, 0) + 1
        if p.normal:
            res.incidents_on_normal_runs += len(spurious)
            res.labels_on_normal_runs += len(p.labels)
        else:
            res.spurious_incidents_on_fault_runs += len(spurious)
        say(f"[{k}/{len(patients)}] {p.scenario} patient {p.index}: {len(findings)} incident(s), "
            f"{len(p.labels)} label(s)")
    return res


def _events(scenario: str) -> int:
    from sources.patient.scenarios import load_patient_scenario

    return len(load_patient_scenario(scenario).events)


def run(seeds: int = 5, normal_runs: int = 20, progress: Callable[[str], None] | None = None,
        only: tuple[str, ...] | None = None) -> PatientAgentResult:
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    patients = []
    for name, seed, n, normal in suite_plan(seeds, normal_runs, only):
        say(f"simulating {name}: {n} patient(s)")
        patients += simulated_patients(name, seed, n, normal)
    t1 = time.perf_counter()
    res = evaluate(patients, say)
    res.seconds_simulate, res.seconds_score = t1 - t0, time.perf_counter() - t1
    return res


def markdown(res: PatientAgentResult) -> str:
    from agents.benchmark import markdown as reactor_markdown

    return (reactor_markdown(res).replace("| archetype |", "| adverse event |", 1)
            + f"\nLabels on the {res.normal_runs} normal patients (their own INR episodes): "
            f"{res.labels_on_normal_runs}. INR episodes in which no lab read out of range (not scored): "
            f"{res.unobservable_labels}.")
