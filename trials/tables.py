"""A trial's Delta tables: every simulated patient's `patients`, `labs`, `doses`, `labels` and `runs` (the
schemas and builders of `biopilot simulate --plant patient`, `sources.patient.tables`; no `vitals`: the trial
path does not simulate them), plus `trial_arms` (one row per patient: arm, stratum, follow-up, endpoints,
prognostic score) and `trial_results` (one row per endpoint, arm and comparison)."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from core.events import DOSES, LABELS, LABS, PATIENTS, RUNS, Label
from sinks import delta
from sources.patient.adverse_events import ADVERSE_EVENTS
from sources.patient.tables import doses_table, labels_table, labs_table, runs_table
from trials.run import Trial
from trials.simulate import Course

TRIAL_ARMS = pa.schema([
    pa.field("trial_id", pa.string(), False), pa.field("run_id", pa.string(), False),
    pa.field("patient_id", pa.string(), False), pa.field("arm", pa.string(), False),
    pa.field("protocol", pa.string()), pa.field("stratum", pa.string()), pa.field("enrolment_order", pa.int64()),
    pa.field("followed_days", pa.float64()), pa.field("lost_to_follow_up", pa.bool_()),
    pa.field("completed", pa.bool_()), pa.field("n_inr", pa.int64()), pa.field("ttr_pct", pa.float64()),
    pa.field("share_inr_ge_4_pct", pa.float64()), pa.field("days_to_therapeutic", pa.float64()),
    pa.field("therapeutic_reached", pa.bool_()), pa.field("days_to_inr_ge_4", pa.float64()),
    pa.field("inr_ge_4", pa.bool_()), pa.field("days_to_major_bleeding", pa.float64()),
    pa.field("major_bleeding", pa.bool_()), pa.field("primary_endpoint", pa.string()),
    pa.field("primary_value", pa.float64()), pa.field("prognostic_score", pa.float64()),
])
TRIAL_RESULTS = pa.schema([
    pa.field("trial_id", pa.string(), False), pa.field("endpoint", pa.string(), False),
    pa.field("arm", pa.string(), False), pa.field("versus", pa.string()), pa.field("analysis", pa.string()),
    pa.field("n", pa.int64()), pa.field("mean", pa.float64()), pa.field("sd", pa.float64()),
    pa.field("estimate", pa.float64()), pa.field("ci_low", pa.float64()), pa.field("ci_high", pa.float64()),
    pa.field("p_value", pa.float64()), pa.field("test", pa.string()), pa.field("results_json", pa.string()),
])
PATIENT_TABLES = (("patients", PATIENTS), ("labs", LABS), ("doses", DOSES), ("labels", LABELS))


def _float(v: object) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def arms_table(trial: Trial) -> pa.Table:
    c, ep, names = trial.course, trial.endpoints, trial.arm_names
    protocols = {a.name: a.protocol for a in trial.design.arms}
    arm = [names[a] for a in c.arm]
    score = trial.score if trial.score is not None else np.full(len(arm), np.nan)
    n = len(arm)

    def values(attr: str, scale: float = 1.0) -> list:
        """A warfarin endpoint's column (null for a metoprolol trial, which has none)."""
        v = getattr(ep, attr, None)
        if v is None:
            return [None] * n
        return [_float(x) for x in v * scale] if v.dtype.kind == "f" else v.tolist()

    cols = {"trial_id": [trial.trial_id] * n, "run_id": trial.run_ids(),
            "patient_id": trial.cohort.patient_id.tolist(), "arm": arm, "protocol": [protocols[a] for a in arm],
            "stratum": trial.stratum.tolist(), "enrolment_order": list(range(n)),
            "followed_days": c.followed_to_day.tolist(), "lost_to_follow_up": (~np.isnan(c.dropout_day)).tolist(),
            "completed": ep.completed.tolist(), "n_inr": values("n_inr"), "ttr_pct": values("ttr", 100.0),
            "share_inr_ge_4_pct": values("share_inr_over", 100.0), "days_to_therapeutic": values("days_to_therapeutic"),
            "therapeutic_reached": values("therapeutic_event"), "days_to_inr_ge_4": values("days_to_over"),
            "inr_ge_4": values("over_event"), "days_to_major_bleeding": values("days_to_bleed"),
            "major_bleeding": values("bleed_event"), "primary_endpoint": [trial.results["primary"]] * n,
            "primary_value": [_float(v) for v in ep.primary], "prognostic_score": [_float(v) for v in score]}
    return pa.Table.from_pydict(cols, schema=TRIAL_ARMS)


def results_table(trial: Trial) -> pa.Table:
    rows = []
    r = trial.results

    def row(endpoint: str, arm: str, versus: str | None, analysis: str, **values: object) -> None:
        rows.append({"trial_id": trial.trial_id, "endpoint": endpoint, "arm": arm, "versus": versus,
                     "analysis": analysis, "n": values.get("n"), "mean": _float(values.get("mean")),
                     "sd": _float(values.get("sd")), "estimate": _float(values.get("estimate")),
                     "ci_low": _float(values.get("ci_low")), "ci_high": _float(values.get("ci_high")),
                     "p_value": _float(values.get("p_value")), "test": values.get("test"),
                     "results_json": json.dumps(values.get("extra")) if values.get("extra") else None})

    control = trial.arm_names[0]
    for key, res in r["endpoints"].items():
        for arm, s in res["per_arm"].items():
            row(key, arm, None, "per arm", n=s.get("n", s.get("events")), mean=s.get("mean", s.get("share")),
                sd=s.get("sd"), estimate=s.get("median_days"))
        for arm, cmp in res["vs_control"].items():
            est = cmp.get("difference", cmp.get("hazard_ratio"))
            row(key, arm, control, "hazard ratio" if "hazard_ratio" in cmp else "difference", estimate=est,
                ci_low=cmp["ci_low"], ci_high=cmp["ci_high"], p_value=cmp["p_value"], test=cmp["test"])
    for arm, cmp in r.get("procova", {}).get("comparisons", {}).items():
        adj = cmp["adjusted"]
        row("ttr", arm, control, "PROCOVA", estimate=adj["difference"], ci_low=adj["ci_low"],
            ci_high=adj["ci_high"], p_value=adj["p_value"], test=adj["test"],
            extra={k: v for k, v in cmp.items() if not isinstance(v, dict)} | {"rho": r["procova"]["rho"]})
    return pa.Table.from_pylist(rows, schema=TRIAL_RESULTS)


def patient_tables(trial: Trial) -> dict[str, pa.Table]:
    """The patient plant's tables for every simulated patient (no vitals)."""
    d, c, cohort = trial.design, trial.course, trial.cohort
    run_ids, patient_ids = trial.run_ids(), cohort.patient_id.tolist()
    start = d.arm_scenario(d.arms[0]).start
    labs = LABS.empty_table()
    if isinstance(c, Course):  # a metoprolol trial draws no labs
        who, col = np.nonzero(~np.isnan(c.lab_inr))
        labs = labs_table(run_ids, patient_ids, start, who, c.lab_h[col], c.reported_h[who, col],
                          c.lab_inr[who, col], np.round(cohort.hb_g_dl[who], 1))
    doses = []
    for day, at_h in enumerate(c.dose_h):
        on = ~np.isnan(c.dose_mg[:, day])
        if on.any():
            idx = np.flatnonzero(on)
            doses.append(doses_table([run_ids[i] for i in idx], [patient_ids[i] for i in idx], start, float(at_h),
                                     d.drug, c.dose_mg[idx, day], c.taken[idx, day]))
    bleed = ADVERSE_EVENTS["major_bleed"]
    labels = [Label(run_ids[k], patient_ids[k], "major_bleed", start + timedelta(days=float(c.bleed_day[k])),
                    start + timedelta(days=float(c.bleed_day[k]) + 1), list(bleed.signals), 1.0,
                    f"{bleed.root_cause}; drawn from the trial's INR-dependent bleeding hazard", bleed.action)
              for k in np.flatnonzero(~np.isnan(getattr(c, "bleed_day", np.full(len(run_ids), np.nan))))]
    runs = []
    for a, spec in enumerate(d.arms):
        idx = np.flatnonzero(c.arm == a)
        if len(idx):
            runs.append(runs_table([run_ids[i] for i in idx], [patient_ids[i] for i in idx], d.arm_scenario(spec),
                                   trial.seed, float(d.duration_days * 24)))
    return {"patients": cohort.patients_table(run_ids), "labs": labs,
            "doses": pa.concat_tables(doses) if doses else DOSES.empty_table(),
            "labels": labels_table(labels), "runs": pa.concat_tables(runs) if runs else RUNS.empty_table()}


def write(trial: Trial, lake: str | Path) -> list[str]:
    """Write the trial's tables to `lake`; a trial already there (its runs) is not written twice. Returns the
    tables written."""
    ids = trial.run_ids()
    if ids[0] in delta.run_ids(lake):
        return []
    tables = patient_tables(trial)
    delta.delete_runs(lake, [name for name, _ in PATIENT_TABLES] + ["trial_arms"], ids)  # an interrupted write
    results = delta.open_table(lake, "trial_results")
    if results is not None:
        results.delete(f"trial_id = '{trial.trial_id}'")
    for name, schema in PATIENT_TABLES:
        delta.append(lake, name, tables[name], schema)
    delta.append(lake, "trial_arms", arms_table(trial), TRIAL_ARMS)
    delta.append(lake, "trial_results", results_table(trial), TRIAL_RESULTS)
    delta.append(lake, "runs", tables["runs"], RUNS)  # last: marks the runs complete
    return [name for name, _ in PATIENT_TABLES] + ["trial_arms", "trial_results", "runs"]
