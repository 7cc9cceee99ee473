"""Adverse events and monitor faults of the patient plant: the catalogue (signals, root cause, recommended action:
the ground truth of labels, as the reactor's fault catalogue) and how each one is produced.

Three kinds, by where they act:
- on the vitals and Hb (`event_effects`): major_bleed, sepsis, bradycardia, hypotension, with physiological time
  courses (a bleed: Hb falls over hours, the pulse rises as compensation, pressure falls only once it fails);
- through the PK/PD (`pkpd_modifiers`): over_anticoagulation (warfarin clearance falls: intercurrent illness,
  poor intake of vitamin K raise the dose's effect), subtherapeutic (clearance rises: vitamin-K-rich diet or an
  inducer), drug_interaction (amiodarone started: CYP2C9 inhibited, building up over weeks as
  `warfarin.clearance_factor` says), nonadherence (a share of doses missed) - the INR then moves by itself;
- on the monitor (sensor_drift, sensor_stuck, sensor_dropout): `vitals.SensorFault`, the true vitals untouched.

`hours_since_onset` is NaN (or negative) where the event has not begun: the deltas are 0 there.

>>> import numpy as np
>>> d = event_effects("major_bleed", np.array([0.0, 2.0, 12.0]), 1.0)
>>> bool(d["hb_g_dl"][-1] <= -2.0), bool(d["hr_bpm"][1] > 5.0), bool(d["sbp_mmhg"][1] > -5.0 > d["sbp_mmhg"][-1])
(True, True, True)
>>> sorted(pkpd_modifiers("nonadherence", np.array([1.0]), 0.8))
['cl_factor', 'missed_dose_share']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.events import VITAL_SIGNALS
from sources.patient import warfarin

VITALS_EVENTS = ("major_bleed", "sepsis", "bradycardia", "hypotension")
PKPD_EVENTS = ("over_anticoagulation", "subtherapeutic", "drug_interaction", "nonadherence")
SENSOR_EVENTS = ("sensor_drift", "sensor_stuck", "sensor_dropout")

# major bleed at magnitude 1: the Hb lost, how fast; compensatory tachycardia; decompensation after a share lost
BLEED_HB_DROP_G_DL, BLEED_TAU_H = 3.0, 5.0
BLEED_HR_RISE_BPM, BLEED_RR_RISE_MIN = 30.0, 5.0
BLEED_DECOMPENSATION_SHARE = 0.4  # pressure holds until this share of the final loss
BLEED_SBP_FALL_MMHG, BLEED_DBP_FALL_MMHG, BLEED_SPO2_FALL_PCT = 40.0, 22.0, 2.0
# sepsis at magnitude 1: fever, tachycardia and tachypnoea over hours, then (from ~12 h) shock and hypoxaemia
SEPSIS_TEMP_RISE_C, SEPSIS_HR_RISE_BPM, SEPSIS_RR_RISE_MIN = 1.9, 32.0, 9.0
SEPSIS_EARLY_TAU_H = 3.0
SEPSIS_SHOCK_ONSET_H, SEPSIS_SHOCK_RAMP_H = 12.0, 3.0
SEPSIS_SBP_FALL_MMHG, SEPSIS_DBP_FALL_MMHG, SEPSIS_SPO2_FALL_PCT = 38.0, 20.0, 6.0
# bradycardia (conduction block or beta-blocker excess): the pulse falls within about an hour
BRADY_HR_FALL_BPM, BRADY_SBP_FALL_MMHG, BRADY_TAU_H = 30.0, 8.0, 0.5
# hypotension (vasodilatation, volume depletion): pressure falls, the baroreflex raises the pulse
HYPO_SBP_FALL_MMHG, HYPO_DBP_FALL_MMHG, HYPO_HR_RISE_BPM, HYPO_TAU_H = 38.0, 20.0, 12.0, 0.75
# PK/PD events at magnitude m: warfarin clearance x 1/(1 + OVER m) or x (1 + SUB m); the onset time constant
OVER_ANTICOAGULATION_CL_PER_MAGNITUDE = 3.0  # calibrated: magnitude 1 takes INR 2.3 past 4 in ~9 days
SUBTHERAPEUTIC_CL_PER_MAGNITUDE = 1.0
PKPD_ONSET_TAU_H = 12.0
# major bleeding's hazard on warfarin (Palareti et al. 1996, ISCOAT, Lancet 348:423): 1.1 per 100 patient-years in
# range, relative risk 7.91 at INR >= 4.5 (taken as log-linear from 2.5: x 2.81 per INR unit), 1.75 at age >= 70
MAJOR_BLEED_RATE_PER_YEAR = 0.011
MAJOR_BLEED_RR_PER_INR = 7.91 ** 0.5
MAJOR_BLEED_AGE_RR, MAJOR_BLEED_AGE_YEARS = 1.75, 70.0


@dataclass(frozen=True)
class AdverseEvent:
    name: str
    signals: tuple[str, ...]  # what shows it (vitals, labs); sensor faults: the faulty vital is the label's signal
    root_cause: str
    action: str
    mechanism: str  # how the simulator produces it


ADVERSE_EVENTS: dict[str, AdverseEvent] = {e.name: e for e in (
    AdverseEvent("over_anticoagulation", ("inr",),
                 "warfarin effect too high (INR >= 4): reduced clearance (intercurrent illness, interacting drug, "
                 "CYP2C9 variant) or too high a dose",
                 "hold 1-2 warfarin doses, recheck INR in 1-2 days, resume at a 10-20 % lower weekly dose; "
                 "vitamin K if INR > 9 or bleeding",
                 "warfarin clearance divided by 1 + magnitude while active"),
    AdverseEvent("major_bleed", ("hb_g_dl", "hr_bpm", "sbp_mmhg", "dbp_mmhg"),
                 "major haemorrhage on anticoagulation (Hb falling >= 2 g/dL, tachycardia, then hypotension)",
                 "stop warfarin, urgent review, give vitamin K and prothrombin complex concentrate, transfuse, "
                 "find the source",
                 "Hb falls over hours; HR rises with the loss; SBP/DBP fall once the loss passes decompensation"),
    AdverseEvent("subtherapeutic", ("inr",),
                 "warfarin effect too low (INR < 2 for >= 72 h): raised clearance (vitamin-K-rich diet, enzyme "
                 "inducer) or too low a dose",
                 "check adherence and diet, raise the weekly dose 10-15 %, recheck INR in 5-7 days; bridge if high "
                 "thrombotic risk",
                 "warfarin clearance multiplied by 1 + magnitude while active"),
    AdverseEvent("bradycardia", ("hr_bpm",),
                 "bradycardia (beta-blocker excess, e.g. metoprolol in a CYP2D6 poor metaboliser, or conduction "
                 "disease)",
                 "hold metoprolol, 12-lead ECG, check for AV block; atropine if symptomatic",
                 "HR falls within about an hour; a small fall of SBP"),
    AdverseEvent("hypotension", ("sbp_mmhg", "dbp_mmhg", "hr_bpm"),
                 "hypotension (vasodilatation, volume depletion or antihypertensive excess) with compensatory "
                 "tachycardia",
                 "lie the patient flat, fluid challenge, hold antihypertensives (metoprolol), look for bleeding or "
                 "sepsis",
                 "SBP/DBP fall within about an hour; the baroreflex raises HR"),
    AdverseEvent("sepsis", ("temp_c", "hr_bpm", "rr_min", "sbp_mmhg", "spo2_pct"),
                 "sepsis (fever, tachycardia, tachypnoea, then hypotension and falling SpO2)",
                 "sepsis six: cultures, IV antibiotics within 1 h, fluids, lactate, oxygen, urine output; "
                 "review warfarin (INR may rise)",
                 "fever, HR and RR rise over hours; from ~12 h SBP/DBP and SpO2 fall"),
    AdverseEvent("drug_interaction", ("inr",),
                 "amiodarone started: CYP2C9 inhibition lowers S-warfarin clearance, INR rises over 1-3 weeks",
                 "cut the warfarin dose 25-40 % when amiodarone starts, check INR weekly for 6 weeks",
                 "amiodarone from the onset: warfarin.clearance_factor (falls to 0.55 over weeks)"),
    AdverseEvent("nonadherence", ("inr",),
                 "missed warfarin doses: INR falls below range days later",
                 "ask about adherence, pill organiser or reminders; do not raise the dose for missed tablets",
                 "each dose while active is missed with probability = magnitude"),
    AdverseEvent("sensor_drift", (),
                 "monitor sensor drifting (calibration, lead or cuff problem): the reading creeps, the patient does "
                 "not",
                 "check the sensor against a manual measurement; recalibrate or replace it",
                 "the reading moves by vitals.DRIFT_PER_H x magnitude per hour"),
    AdverseEvent("sensor_stuck", (),
                 "monitor sensor stuck: the reading repeats one value",
                 "check the sensor and its connection; replace it",
                 "the reading repeats the last value before the fault"),
    AdverseEvent("sensor_dropout", (),
                 "monitor sensor disconnected (e.g. a pulse oximeter off the finger): no readings, not a clinical "
                 "change",
                 "reattach the sensor; do not treat missing readings as hypoxia",
                 "the readings are missing (NaN)"),
)}


def _check(name: str) -> None:
    if name not in ADVERSE_EVENTS:
        raise ValueError(f"unknown adverse event {name!r}; allowed: {', '.join(ADVERSE_EVENTS)}")


def _since(hours_since_onset: np.ndarray) -> np.ndarray:
    """Hours since onset, NaN/negative (not begun) as -1 so that every rise below is 0 there."""
    h = np.asarray(hours_since_onset, float)
    return np.where(np.isnan(h), -1.0, h)


def _rise(t: np.ndarray, tau_h: float) -> np.ndarray:
    """0 before onset, then 1 - exp(-t/tau)."""
    return np.where(t >= 0, -np.expm1(-np.clip(t, 0.0, None) / tau_h), 0.0)


def _sigmoid(t: np.ndarray, centre_h: float, ramp_h: float) -> np.ndarray:
    return np.where(t >= 0, 1.0 / (1.0 + np.exp(-(t - centre_h) / ramp_h)), 0.0)


def event_effects(name: str, hours_since_onset: np.ndarray, magnitude: float | np.ndarray
                  ) -> dict[str, np.ndarray]:
    """Additive deltas on the vitals and `hb_g_dl` (same shape as `hours_since_onset`, broadcast with
    `magnitude`). Events that act through the PK/PD or the monitor give no deltas (an empty dict)."""
    _check(name)
    if name not in VITALS_EVENTS:
        return {}
    t = _since(hours_since_onset)
    m = np.asarray(magnitude, float)
    zero = np.zeros(np.broadcast(t, m).shape)
    d = {key: zero.copy() for key in (*VITAL_SIGNALS, "hb_g_dl")}
    if name == "major_bleed":
        loss = _rise(t, BLEED_TAU_H)  # share of the final loss
        failing = np.clip((loss - BLEED_DECOMPENSATION_SHARE) / (1.0 - BLEED_DECOMPENSATION_SHARE), 0.0, 1.0)
        d["hb_g_dl"] = -BLEED_HB_DROP_G_DL * m * loss
        d["hr_bpm"] = BLEED_HR_RISE_BPM * m * loss
        d["rr_min"] = BLEED_RR_RISE_MIN * m * loss
        d["sbp_mmhg"] = -BLEED_SBP_FALL_MMHG * m * failing
        d["dbp_mmhg"] = -BLEED_DBP_FALL_MMHG * m * failing
        d["spo2_pct"] = -BLEED_SPO2_FALL_PCT * m * failing
    elif name == "sepsis":
        early = _rise(t, SEPSIS_EARLY_TAU_H)
        shock = _sigmoid(t, SEPSIS_SHOCK_ONSET_H, SEPSIS_SHOCK_RAMP_H) - _sigmoid(np.zeros(1), SEPSIS_SHOCK_ONSET_H,
                                                                                 SEPSIS_SHOCK_RAMP_H)
        shock = np.clip(shock, 0.0, None)
        d["temp_c"] = SEPSIS_TEMP_RISE_C * m * early
        d["hr_bpm"] = SEPSIS_HR_RISE_BPM * m * early
        d["rr_min"] = SEPSIS_RR_RISE_MIN * m * early
        d["sbp_mmhg"] = -SEPSIS_SBP_FALL_MMHG * m * shock
        d["dbp_mmhg"] = -SEPSIS_DBP_FALL_MMHG * m * shock
        d["spo2_pct"] = -SEPSIS_SPO2_FALL_PCT * m * shock
    elif name == "bradycardia":
        on = _rise(t, BRADY_TAU_H)
        d["hr_bpm"] = -BRADY_HR_FALL_BPM * m * on
        d["sbp_mmhg"] = -BRADY_SBP_FALL_MMHG * m * on
    else:  # hypotension
        on = _rise(t, HYPO_TAU_H)
        d["sbp_mmhg"] = -HYPO_SBP_FALL_MMHG * m * on
        d["dbp_mmhg"] = -HYPO_DBP_FALL_MMHG * m * on
        d["hr_bpm"] = HYPO_HR_RISE_BPM * m * on
    return d


def major_bleed_relative_hazard(inr: np.ndarray, age_years: np.ndarray | float) -> np.ndarray:
    """Major bleeding's hazard relative to a patient under 70 in range (x `MAJOR_BLEED_RATE_PER_YEAR` for the
    rate), at each `inr`; `age_years` broadcasts against `inr`'s leading axes (one age per row)."""
    age_rr = np.where(np.asarray(age_years, float) >= MAJOR_BLEED_AGE_YEARS, MAJOR_BLEED_AGE_RR, 1.0)
    rr = MAJOR_BLEED_RR_PER_INR ** np.clip(np.asarray(inr, float) - 2.5, 0.0, None)
    return rr * age_rr.reshape(age_rr.shape + (1,) * (rr.ndim - age_rr.ndim))


def pkpd_modifiers(name: str, hours_since_onset: np.ndarray, magnitude: float | np.ndarray
                   ) -> dict[str, np.ndarray]:
    """How a PK/PD event acts at each time: `cl_factor` (multiplies warfarin clearance) and `missed_dose_share`
    (the probability that a dose due then is missed). Other events: factor 1, share 0."""
    _check(name)
    t = _since(hours_since_onset)
    m = np.asarray(magnitude, float)
    shape = np.broadcast(t, m).shape
    cl = np.ones(shape)
    missed = np.zeros(shape)
    on = _rise(t, PKPD_ONSET_TAU_H)
    if name == "over_anticoagulation":
        cl = 1.0 / (1.0 + OVER_ANTICOAGULATION_CL_PER_MAGNITUDE * m * on)
    elif name == "subtherapeutic":
        cl = 1.0 + SUBTHERAPEUTIC_CL_PER_MAGNITUDE * m * on
    elif name == "drug_interaction":
        # amiodarone from the onset; magnitude scales how deep its inhibition goes
        full = warfarin.clearance_factor(np.where(t >= 0, t, np.nan), np.full(shape, np.nan))
        cl = np.clip(1.0 - m * (1.0 - full), 0.05, None)
    elif name == "nonadherence":
        missed = np.where(t >= 0, np.clip(m, 0.0, 1.0), 0.0) * np.ones(shape)
    return {"cl_factor": np.broadcast_to(cl, shape).copy(), "missed_dose_share": missed}
