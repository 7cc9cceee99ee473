"""What a clinician reads off a patient's INR course and the baselines' flattened features miss: the INR's
trend over the last week and the patient's own twin's forecast over the prediction horizon.

The twin is `sources.patient.twin_fit`'s model (the population's warfarin PK/PD with the patient's covariates,
the doses taken, the readings' likelihood `inr_variability.log_likelihood`, the clearance of amiodarone once
started), its posterior over the patient's sensitivity evaluated on a grid rather than maximised: the
direction that moves a patient's INR most (clearance and EC50 together, each by its population SD) at
`GRID_POINTS` points, all simulated in one batch with the future doses (the last one going on daily). A full
refit (`fit_patient`: BFGS over six parameters, a Laplace approximation, importance-weighted draws; the
`twin` baseline of `outcomes/baselines.py`) costs 0.1-1 s a sample - too slow to encode 12,000 training
samples or to serve within a cache miss's ~15 ms; the grid costs ~1-3 ms and forecasts the INR 72 h ahead
nearly as well (docs/OUTCOMES.md, "Inputs").

The forecast runs 14 days: the INR's over the first 7 (the INR >= 4 risk's horizon) and, over all 14 (the
bleeding risk's), major bleeding's hazard along it, ISCOAT's (`adverse_events.major_bleed_relative_hazard`, the
published rise with the INR and age): the bleeding risk the twin expects, where the INR readings alone show
only where the INR was.

`twin_features(arrays, patient, as_of_h)` returns `TWIN_STATIC`, scaled like the other static inputs.

>>> import numpy as np
>>> row = {"age_years": 70.0, "weight_kg": 70.0, "cyp2c9": "*1/*1", "vkorc1_1639": "G/G"}
>>> [round(float(v), 2) for v in twin_features(PatientArrays.empty(), row, 100.0)]  # no warfarin: no forecast; age 70
[0.0, -1.5, -1.5, -1.5, 0.0, 0.56]
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from outcomes.patient_arrays import PatientArrays
from sources.patient import warfarin
from sources.patient.adverse_events import major_bleed_relative_hazard
from sources.patient.inr_events import OVER_INR
from sources.patient.inr_variability import log_likelihood
from sources.patient.twin_fit import ETA_KEYS, TwinFit, simulate_inr, weighted_quantiles

# checkpoints before `twin_bleed_log_rr_14d` read the columns before it (`outcomes.model.from_blob`)
TWIN_STATIC: tuple[str, ...] = ("inr_trend_7d_per_d", "twin_inr_3d", "twin_inr_max_7d", "twin_inr_now",
                                "twin_p_inr_ge4_7d", "twin_bleed_log_rr_14d")
GRID_POINTS = 7
GRID_Z = np.linspace(-2.5, 2.5, GRID_POINTS)  # prior SDs along the sensitivity direction
TREND_DAYS = 7.0
HORIZON_H = 168.0  # INR >= 4 within 7 days
BLEED_HORIZON_H = 336.0  # major bleeding within 14 days
NO_INR = 1.0  # a drug-naive INR: the forecast before the first dose
UNKNOWN_AGE_YEARS, UNKNOWN_WEIGHT_KG = 68.0, 80.0  # a patient row without them: the cohort's typical patient


@dataclass(frozen=True)
class TwinInputs:
    """What the twin knows at `as_of`, on its clock (hours from the first warfarin dose)."""

    cov: warfarin.Covariates
    dose_t_h: np.ndarray
    dose_mg: np.ndarray
    inr_t_h: np.ndarray
    inr: np.ndarray
    now_h: float
    clearance: object  # the clearance factor at the twin's step times (amiodarone once started)


def twin_inputs(arrays: PatientArrays, patient: dict, as_of_h: float) -> TwinInputs | None:
    """The doses taken and INRs reported by `as_of_h` (epoch hours), None before the first warfarin dose."""
    warf = (arrays.dose_drug == "warfarin") & (arrays.dose_h <= as_of_h)
    if not warf.any():
        return None
    t0 = arrays.dose_h[warf][0]
    known = (arrays.lab_reported_h <= as_of_h) & ~np.isnan(arrays.inr) & (arrays.lab_sample_h > t0)
    cov = warfarin.Covariates(np.array([float(patient.get("age_years") or UNKNOWN_AGE_YEARS)]),
                              np.array([float(patient.get("weight_kg") or UNKNOWN_WEIGHT_KG)]),
                              np.array([patient.get("cyp2c9") or "*1/*1"]),
                              np.array([patient.get("vkorc1_1639") or "G/G"]),
                              np.array([bool(patient.get("amiodarone"))]),
                              np.array([bool(patient.get("enzyme_inducer"))]))
    amio = (arrays.dose_drug == "amiodarone") & (arrays.dose_h <= as_of_h)
    started_h = arrays.dose_h[amio][0] - t0 if amio.any() and not patient.get("amiodarone") else None
    steady = float(warfarin.steady_state_factor(cov)[0])

    def clearance(t_h: np.ndarray, started_h: float | None = started_h, steady: float = steady) -> np.ndarray:
        amio_h = t_h - started_h if started_h is not None else np.full_like(t_h, np.nan)
        return steady * warfarin.clearance_factor(amio_h, np.full_like(t_h, np.nan))

    return TwinInputs(cov, arrays.dose_h[warf] - t0, arrays.dose_mg[warf], arrays.lab_sample_h[known] - t0,
                      arrays.inr[known], as_of_h - t0, clearance)


def continued_doses(t: TwinInputs, days: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """The doses taken plus `days` more of the last one (the median taken if the last was missed)."""
    future_t = t.dose_t_h[-1] + 24.0 * np.arange(1, days + 1)
    last = t.dose_mg[-1] if t.dose_mg[-1] > 0 else float(np.median(t.dose_mg))
    return np.r_[t.dose_t_h, future_t], np.r_[t.dose_mg, np.full(days, last)]


def inr_trend_per_d(arrays: PatientArrays, as_of_h: float) -> float:
    """Least-squares slope (INR per day) of the INRs sampled in the last week and reported by `as_of_h`."""
    ok = ((arrays.lab_reported_h <= as_of_h) & ~np.isnan(arrays.inr)
          & (arrays.lab_sample_h > as_of_h - 24.0 * TREND_DAYS))
    t_d, inr = arrays.lab_sample_h[ok] / 24.0, arrays.inr[ok]
    if len(inr) < 2 or np.ptp(t_d) <= 0:
        return 0.0
    return float(np.polyfit(t_d - t_d.mean(), inr, 1)[0])


def twin_forecast(t: TwinInputs) -> tuple[float, float, float, float, float]:
    """(INR now, 72 h ahead, the 7-day maximum: posterior medians; P(INR >= 4 within 7 days); the posterior mean
    of major bleeding's relative hazard over 14 days at the patient's age)."""
    typical = warfarin.typical_params(t.cov)
    prior = TwinFit(typical, ETA_KEYS, np.zeros(len(ETA_KEYS)), np.eye(len(ETA_KEYS)), t.dose_t_h, t.dose_mg,
                    t.clearance, 1.0, t.inr_t_h, t.inr)
    omega = np.sqrt(np.log1p(np.array([warfarin.BPV_CV[k.split("_")[0]] for k in ETA_KEYS]) ** 2))
    direction = np.where(np.isin(ETA_KEYS, ("cl_l_h", "ec50_mg_l")), omega, 0.0) / np.sqrt(2.0)
    eta = GRID_Z[:, None] * direction[None, :]
    horizon = t.now_h + np.arange(1.0, BLEED_HORIZON_H + 1.0)
    times, doses = continued_doses(t)
    # one batch: the readings (the likelihood) and the horizon (the forecast); later doses do not move the past.
    # On one thread: for 7 trajectories numba's parallel workers gain nothing and, woken on every call, spin
    # against the model's torch thread (a served prediction took 40 % longer, not 15 %)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        sims = simulate_inr(prior.params(eta), times, doses, np.r_[t.inr_t_h, max(t.now_h, 1.0), horizon],
                            t.clearance)
    finally:
        numba.set_num_threads(threads)
    n_obs = len(t.inr)
    log_post = -0.5 * GRID_Z**2
    if n_obs:
        log_post = log_post + log_likelihood(t.inr, sims[:, :n_obs], t.inr_t_h)
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    ahead = sims[:, n_obs + 1:]
    week = ahead[:, :int(HORIZON_H)]
    now, in_3d, peak = weighted_quantiles(np.column_stack([sims[:, n_obs], ahead[:, 71], week.max(axis=1)]),
                                          (0.5,), w)[0]
    bleed_rr = float(w @ major_bleed_relative_hazard(ahead, t.cov.age_years[0]).mean(axis=1))
    return float(now), float(in_3d), float(peak), float(w @ (week.max(axis=1) >= OVER_INR)), bleed_rr


def twin_features(arrays: PatientArrays, patient: dict, as_of_h: float) -> np.ndarray:
    """`TWIN_STATIC` at `as_of_h`, scaled: the trend as is (clipped to +-2 INR a day), INRs less 2.5, the
    bleeding hazard's log."""
    t = twin_inputs(arrays, patient, as_of_h)
    if t is None:  # no warfarin yet: the INR stays drug-naive
        age = float(patient.get("age_years") or UNKNOWN_AGE_YEARS)
        now, in_3d, peak, p_over, bleed_rr = NO_INR, NO_INR, NO_INR, 0.0, float(major_bleed_relative_hazard(NO_INR, age))
    else:
        now, in_3d, peak, p_over, bleed_rr = twin_forecast(t)
    return np.array([float(np.clip(inr_trend_per_d(arrays, as_of_h), -2.0, 2.0)), in_3d - 2.5, peak - 2.5,
                     now - 2.5, p_over, np.log(bleed_rr)], np.float32)
