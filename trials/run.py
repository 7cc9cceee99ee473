"""One trial, end to end: screen, randomise, simulate every arm, compute the endpoints per patient, analyse each
arm against the first (the control) with the pre-specified tests, optionally with PROCOVA; the results as a
dict (`--json`), the Delta tables (`trials.tables`) and the report (`trials.report`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sources.patient.cohort import Cohort
from trials import analysis, procova
from trials.design import Design
from trials.endpoints import HrEndpoints, PatientEndpoints, patient_endpoints
from trials.simulate import (
    STREAM_RANDOMISE,
    Course,
    HrCourse,
    Screening,
    randomise,
    screen,
    simulate_course,
    strata,
    stream,
)

# per drug: continuous endpoints (key, label, attribute, scale; the first is the primary), proportions (key,
# label, attribute) and times to an event (key, label, time attribute, event attribute)
ENDPOINTS = {
    "warfarin": {
        "continuous": (("ttr", "time in therapeutic range (%)", "ttr", 100.0),
                       ("share_inr_ge_4", "INR readings >= 4 (% of a patient's)", "share_inr_over", 100.0)),
        "proportion": (("any_inr_ge_4", "patients with an INR >= 4 (%)", "over_event"),),
        "time_to_event": (("time_to_therapeutic", "first INR in range", "days_to_therapeutic", "therapeutic_event"),
                          ("over_anticoagulation", "first INR >= 4", "days_to_over", "over_event"),
                          ("major_bleeding", "major bleeding", "days_to_bleed", "bleed_event"))},
    "metoprolol": {
        "continuous": (("hr_reduction", "resting heart-rate reduction, last week (bpm)", "hr_reduction_bpm", 1.0),
                       ("hr_control", "mornings with resting HR in the target range (%)", "hr_control_pct", 1.0)),
        "proportion": (("bradycardia_final_visit", "patients with bradycardia at the final visit (%)",
                        "bradycardia_final"),),
        "time_to_event": (("bradycardia", "first resting HR below the severe-bradycardia limit", "days_to_bradycardia",
                           "bradycardia_event"),)},
}


def trial_id(design: Design, patients_per_arm: int, seed: int, population_note: str = "") -> str:
    """Deterministic: the same design, size and seed give the same id (and run ids)."""
    digest = hashlib.sha1(f"{design.model_dump_json()}|{patients_per_arm}|{seed}|{population_note}".encode())
    return f"{design.name}-n{patients_per_arm}-s{seed}-{digest.hexdigest()[:8]}"


@dataclass
class Trial:
    design: Design
    trial_id: str
    seed: int
    patients_per_arm: int
    cohort: Cohort
    screening: Screening
    stratum: np.ndarray
    course: Course | HrCourse
    endpoints: PatientEndpoints | HrEndpoints
    score: np.ndarray | None
    results: dict

    @property
    def arm_names(self) -> list[str]:
        return [a.name for a in self.design.arms]

    def run_ids(self) -> list[str]:
        return [f"{self.trial_id}-{self.arm_names[a]}-{pid}" for a, pid in zip(self.course.arm,
                                                                                 self.cohort.patient_id, strict=True)]


def run_trial(design: Design, patients_per_arm: int, seed: int, population_table: object = None,
              use_procova: bool = False, historical_patients: int = procova.HISTORICAL_PATIENTS,
              twin_progress: Callable[[int], None] | None = None, population_note: str = "") -> Trial:
    t0 = time.perf_counter()
    ratio = np.asarray(design.randomisation.ratio)
    n_total = int(patients_per_arm * ratio.sum() / ratio.min())
    cohort, screening = screen(design, n_total, seed, population_table)
    stratum = strata(cohort, design.randomisation.stratify_by)
    arm = randomise(stratum, design.randomisation.ratio, design.randomisation.block_size,
                    stream(seed, STREAM_RANDOMISE))
    course = simulate_course(design, cohort, arm, seed, twin_progress)
    ep = patient_endpoints(design, course)
    score, model = None, None
    if use_procova:
        model = procova.train(design, seed, historical_patients)
        score = model.score(cohort)
    trial = Trial(design, trial_id(design, patients_per_arm, seed, population_note), seed, patients_per_arm, cohort,
                  screening, stratum, course, ep, score, {})
    trial.results = analyse(trial, model)
    trial.results["seconds"] = round(time.perf_counter() - t0, 2)
    return trial


def flow(trial: Trial) -> dict:
    """CONSORT-like counts: assessed, excluded (by reason), randomised; per arm allocated, lost to follow-up,
    withdrawn after a major bleed, completed, analysed for the primary endpoint."""
    c, ep = trial.course, trial.endpoints
    bled = getattr(ep, "bleed_event", np.zeros(len(c.arm), bool))
    arms = {}
    for a, name in enumerate(trial.arm_names):
        m = c.arm == a
        arms[name] = {"allocated": int(m.sum()), "lost_to_follow_up": int((m & ~np.isnan(c.dropout_day)).sum()),
                      "withdrawn_major_bleeding": int((m & bled).sum()),
                      "completed": int((m & ep.completed).sum()), "analysed": int((m & ~np.isnan(ep.primary)).sum())}
    return {"assessed": trial.screening.assessed, "excluded": trial.screening.excluded,
            "randomised": len(c.arm), "arms": arms}


def analyse(trial: Trial, model: procova.PrognosticModel | None = None) -> dict:
    d, c, ep = trial.design, trial.course, trial.endpoints
    alpha = d.endpoints.alpha
    names = trial.arm_names
    spec = ENDPOINTS[d.drug]
    out: dict = {"design": d.name, "trial_id": trial.trial_id, "seed": trial.seed, "drug": d.drug,
                 "patients_per_arm": trial.patients_per_arm, "arms": names, "primary": spec["continuous"][0][0],
                 "protocols": {a.name: a.protocol for a in d.arms}, "flow": flow(trial), "endpoints": {}}
    for key, label, attr, scale in spec["continuous"]:
        y = getattr(ep, attr) * scale
        res = {"label": label, "primary": key == out["primary"],
               "per_arm": {n: analysis.describe(y[c.arm == a]) for a, n in enumerate(names)}, "vs_control": {}}
        for a in range(1, len(names)):
            m = (c.arm == 0) | (c.arm == a)
            res["vs_control"][names[a]] = analysis.compare(y[m], c.arm[m] == a, alpha=alpha).as_dict()
        out["endpoints"][key] = res
    for key, label, attr in spec["proportion"]:
        event = getattr(ep, attr)
        out["endpoints"][key] = {
            "label": label,
            "per_arm": {n: {"n": int((c.arm == a).sum()), "share": float(event[c.arm == a].mean())}
                        for a, n in enumerate(names)},
            "vs_control": {names[a]: analysis.proportions(event[(c.arm == 0) | (c.arm == a)],
                                                          c.arm[(c.arm == 0) | (c.arm == a)] == a, alpha).as_dict()
                           for a in range(1, len(names))}}
    for key, label, t_attr, e_attr in spec["time_to_event"]:
        t, e = getattr(ep, t_attr), getattr(ep, e_attr)
        res = {"label": label, "per_arm": {}, "vs_control": {}, "curves": {}}
        for a in range(1, len(names)):
            m = (c.arm == 0) | (c.arm == a)
            s = analysis.survival(t[m], e[m], c.arm[m] == a, (names[0], names[a]), alpha)
            for n in (names[0], names[a]):
                res["per_arm"][n] = {"events": s.events[n], "median_days": s.median_days[n]}
                res["curves"][n] = s.curves[n]
            res["vs_control"][names[a]] = {"hazard_ratio": s.hazard_ratio, "ci_low": s.hr_ci_low,
                                           "ci_high": s.hr_ci_high, "p_value": s.p_value,
                                           "test": "Cox hazard ratio, log-rank p"}
        out["endpoints"][key] = res
    if getattr(c, "twin_refits", 0):
        out["twin"] = {"refits": c.twin_refits, "refit_s_total": round(c.twin_refit_s, 1),
                       "refit_s_mean": round(c.twin_refit_s / c.twin_refits, 4)}
    if trial.score is not None and model is not None:
        out["procova"] = procova_summary(trial, model)
    return out


def procova_summary(trial: Trial, model: procova.PrognosticModel) -> dict:
    """The primary endpoint by ANCOVA on the prognostic score beside the unadjusted analysis, per comparison."""
    c, alpha = trial.course, trial.design.endpoints.alpha
    y = trial.endpoints.primary
    ok = ~np.isnan(y)
    centred = y - np.array([np.nanmean(y[c.arm == a]) for a in c.arm])  # within arms: the score's own correlation
    rho = float(np.corrcoef(trial.score[ok], centred[ok])[0, 1])
    out = {"historical_patients": model.n_train, "model_r2_held_out": round(model.train_r2_held_out, 4), "rho": round(rho, 4),
           "expected_variance_ratio": round(1 - rho**2, 4), "comparisons": {}}
    names = trial.arm_names
    for a in range(1, len(names)):
        m = (c.arm == 0) | (c.arm == a)
        plain = analysis.compare(y[m], c.arm[m] == a, alpha=alpha)
        adj = analysis.compare(y[m], c.arm[m] == a, trial.score[m], alpha=alpha)
        out["comparisons"][names[a]] = {
            "unadjusted": plain.as_dict(), "adjusted": adj.as_dict(),
            "observed_variance_ratio": round(adj.residual_variance / plain.residual_variance, 4),
            "ci_width_unadjusted": round(plain.ci_high - plain.ci_low, 4),
            "ci_width_adjusted": round(adj.ci_high - adj.ci_low, 4),
            # at equal power the sample size scales with the residual variance
            "sample_size_saved_share": round(1 - adj.residual_variance / plain.residual_variance, 4)}
    return out
