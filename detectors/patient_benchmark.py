"""`biopilot bench detectors --plant patient`: the patient monitor against labelled virtual patients.

Suite: each adverse event's built-in scenario with N patients (onsets and magnitudes drawn per patient from the
scenario's ranges), the composite scenario, and normal patients: `warfarin_standard` and `metoprolol_100mg`
(`normal_days` days each). Every patient's vitals, labs and doses go through `PatientMonitor` in event-time
order, as the flow sees them (`patient_monitor.replay_run`, the twin left out: alerts do not depend on it).

A label (ground truth, `sources.patient`: injected events and the INR episodes of the true INR, the natural ones
of normal patients included) is detected when an alert opens inside its window, extended by `grace_h` (an INR
episode is seen at the next lab draw, days later), or, naming one of its signals, is still open when it starts;
the delay is from the label's start (0 for an alert already open). An alert inside no
label's extended window is a false alarm. Per event: detection rate, median delay, the members that fired; per
patient-day: false alarms, on every patient and on the normal ones.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from sources.patient.cohort_sim import simulate_cohort
from sources.patient.scenarios import load_patient_scenario

EVENT_SCENARIOS = ("over_anticoagulation", "major_bleed", "subtherapeutic", "bradycardia", "hypotension", "sepsis",
                   "drug_interaction", "nonadherence", "sensor_drift", "sensor_stuck", "sensor_dropout")
COMPOSITE = "amiodarone_then_bleed"
NORMAL_SCENARIOS = ("warfarin_standard", "metoprolol_100mg")
NEVER = datetime.max.replace(tzinfo=UTC)  # an alert not closed by the run's end
GRACE_H = 96.0  # labs are drawn every few days: an INR episode is seen at the next draw
# an INR episode (true INR) that a lab can show: a reading inside it on its side of the range
LAB_SIDE = {"over_anticoagulation": lambda inr: inr >= 4.0, "subtherapeutic": lambda inr: inr < 2.0}


def _patients(scenario: str, n: int, seed: int, days: float | None) -> tuple[pa.Table, list[tuple]]:
    """(labels, [(run_id, vitals, labs, doses)]) of `n` patients on `scenario`."""
    sc = load_patient_scenario(scenario)
    if days is not None:
        sc = sc.model_copy(update={"days": days})
    cohort = simulate_cohort(sc, n, seed=seed)
    return cohort.sim.labels_table(), [(run, *cohort.of_run(run)) for run in cohort.sim.run_ids]


def run(patients: int = 5, normal_patients: int = 20, normal_days: float = 28.0, seed: int = 1,
        grace_h: float = GRACE_H, progress: Callable[[str], None] | None = None) -> dict:
    from detectors.patient_monitor import replay_run

    say = progress or (lambda _msg: None)
    plan = [(s, patients, None, False) for s in (*EVENT_SCENARIOS, COMPOSITE)]
    plan += [(s, normal_patients, normal_days, True) for s in NORMAL_SCENARIOS]
    detected: dict[str, list[float | None]] = {}
    seen_by_lab: dict[str, list[bool]] = {}  # INR episodes: whether their own label was detected, if a lab saw it
    fired_by: dict[str, Counter] = {}
    false_alarms = {"all": 0, "normal": 0}
    alerts_normal = 0
    patient_days = {"all": 0.0, "normal": 0.0}
    members, false_members = Counter(), Counter()
    started = time.perf_counter()
    for scenario, n, days, normal in plan:
        say(f"{scenario}: {n} patients")
        labels, runs = _patients(scenario, n, seed, days)
        by_run: dict[str, list[dict]] = {}
        for label in labels.to_pylist():
            by_run.setdefault(label["run_id"], []).append(label)
        for run_id, vitals, labs, doses in runs:
            _, outputs = replay_run(vitals, labs, doses)
            alerts = [a for o in outputs for a in o.alerts]
            closed = {c["alert_id"]: c["ts"] for o in outputs for c in o.clears}
            members.update(a["member"] for a in alerts)
            span_days = (vitals.num_rows * 5.0) / 1440.0
            patient_days["all"] += span_days
            if normal:
                patient_days["normal"] += span_days
                alerts_normal += len(alerts)
            mine = by_run.get(run_id, [])
            for label in mine:
                end = label["end_ts"] + timedelta(hours=grace_h)
                # an alert on the label's signals still open when it starts covers it too (the INR oscillating
                # about 4: one alert, several episodes of the true INR)
                signals = set(label["signals"] or ())
                hits = [a for a in alerts if label["start_ts"] <= a["ts"] <= end or (
                    a["ts"] < label["start_ts"] <= closed.get(a["alert_id"], NEVER)
                    and signals & {s["name"] for s in a["signals"]})]
                first = min(hits, key=lambda a: a["ts"]) if hits else None
                detected.setdefault(label["fault"], []).append(
                    None if first is None else max(0.0, (first["ts"] - label["start_ts"]).total_seconds() / 3600.0))
                if label["fault"] in LAB_SIDE and any(
                        label["start_ts"] <= r["sample_ts"] <= label["end_ts"] and r["inr"] is not None
                        and LAB_SIDE[label["fault"]](r["inr"]) for r in labs.to_pylist()):
                    seen_by_lab.setdefault(label["fault"], []).append(first is not None)
                fired_by.setdefault(label["fault"], Counter()).update({a["member"] for a in hits})
            for a in alerts:
                inside = any(lb["start_ts"] - timedelta(hours=1) <= a["ts"] <= lb["end_ts"] + timedelta(hours=grace_h)
                             for lb in mine)
                if not inside:
                    false_members[a["member"]] += 1
                    false_alarms["all"] += 1
                    false_alarms["normal"] += int(normal)
    events = {}
    for fault, delays in sorted(detected.items()):
        seen = [d for d in delays if d is not None]
        events[fault] = {"labels": len(delays), "detection_rate": round(len(seen) / len(delays), 3),
                         "median_delay_h": None if not seen else round(float(np.median(seen)), 2),
                         "members": dict(fired_by[fault].most_common())}
        if fault in LAB_SIDE:  # the lab rules' own rate: among the episodes a lab reading showed
            shown = seen_by_lab.get(fault, [])
            events[fault]["seen_by_a_lab"] = len(shown)
            events[fault]["detection_rate_seen_by_a_lab"] = round(sum(shown) / len(shown), 3) if shown else None
    return {
        "patients_per_event_scenario": patients, "normal_patients_per_scenario": normal_patients,
        "normal_days": normal_days, "normal_scenarios": list(NORMAL_SCENARIOS), "seed": seed, "grace_h": grace_h,
        "events": events,
        "false_alarms_per_patient_day": round(false_alarms["all"] / max(patient_days["all"], 1e-9), 4),
        "false_alarms_per_patient_day_normal": round(false_alarms["normal"] / max(patient_days["normal"], 1e-9), 4),
        "false_alarms": false_alarms["all"], "false_alarms_normal": false_alarms["normal"],
        "alerts_on_normal_patients": alerts_normal, "patient_days": round(patient_days["all"], 1),
        "alerts_by_member": dict(members.most_common()), "false_alarms_by_member": dict(false_members.most_common()), "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(result: dict) -> str:
    lines = ["| event | labels | detected | median delay (h) | seen by a lab: detected | members |",
             "|---|---|---|---|---|---|"]
    for fault, e in result["events"].items():
        delay = "-" if e["median_delay_h"] is None else f"{e['median_delay_h']:.1f}"
        who = ", ".join(f"{m} {k}" for m, k in e["members"].items())
        lab = "" if "seen_by_a_lab" not in e else (
            f"{e['seen_by_a_lab']}: {e['detection_rate_seen_by_a_lab']:.0%}" if e["seen_by_a_lab"] else "0")
        lines.append(f"| {fault} | {e['labels']} | {e['detection_rate']:.0%} | {delay} | {lab} | {who} |")
    lines.append("")
    lines.append(f"False alarms per patient-day: {result['false_alarms_per_patient_day']:.4f} (all patients), "
                 f"{result['false_alarms_per_patient_day_normal']:.4f} (normal patients: "
                 f"{result['false_alarms_normal']} outside any label, {result['alerts_on_normal_patients']} alerts "
                 f"in all); {result['patient_days']:.0f} patient-days.")
    return "\n".join(lines)
