"""`biopilot bench twin`: the patient's own twin against the population model, on simulated patients whose
true parameters are known (`draw_cohort`: covariate model x between-patient variability).

Every patient takes 5 mg/day (evening doses from day 1); INR is sampled on the mornings of days 3, 5 and 7 with
the model's residual error. Forecast: the INR on the morning of day 14 under the same dose, from the twin fitted
to those three readings (`twin_fit.fit_patient`, its posterior median) beside the population model (the typical
parameters for the patient's covariates). Dose advice: from day 8 each patient takes the fitted twin's stable
dose for INR 2.5; beside it the same patients take the IWPC formula's dose from day 1; the share with INR 2-3 on
the morning of day 28 (the true INR, no measurement error).

Caveat: the simulated patients follow the twin's own model, so this measures what the readings add (fit vs
population), not the model's truth; the IWPC arm is an outside formula, fitted on real patients, judged here by
the model (docs/MODEL-PATIENT.md, "Dose advice", on the model's level against IWPC).
"""

from __future__ import annotations

import time

import numpy as np

from sources.patient import warfarin
from sources.patient.cohort import draw_cohort
from sources.patient.iwpc import iwpc_weekly_dose_mg
from sources.patient.twin_fit import ETA_KEYS, fit_patient, simulate_inr

DAY_H = 24.0
DOSE_HOUR = 18.0  # evening doses, morning samples: as the cohort simulator does
SAMPLE_HOUR = 8.0
READING_DAYS = (3, 5, 7)
FORECAST_DAY = 14
IN_RANGE_DAY = 28
START_DOSE_MG = 5.0
THERAPEUTIC_INR = (2.0, 3.0)


def _morning_h(day: int) -> float:
    """Hours from the first dose (day 1 at DOSE_HOUR) to the morning of `day`."""
    return (day - 1) * DAY_H + SAMPLE_HOUR - DOSE_HOUR


def run(patients: int = 200, seed: int = 11, target_inr: float = 2.5,
        keys: tuple[str, ...] = ETA_KEYS) -> dict[str, float]:
    """The figures of the module docstring on `patients` drawn patients (`keys`: the parameters the twin fits)."""
    rng = np.random.default_rng(seed)
    cohort = draw_cohort(patients, rng)
    cov = cohort.covariates()
    truth = cohort.warfarin
    steady = warfarin.steady_state_factor(cov)

    def factor_of(i: int):
        return lambda t_h: np.full_like(t_h, steady[i])

    dose_t_h = DAY_H * np.arange(IN_RANGE_DAY)
    read_t_h = np.array([_morning_h(d) for d in READING_DAYS])
    day14_h, day28_h = _morning_h(FORECAST_DAY), _morning_h(IN_RANGE_DAY)
    every = lambda t_h: steady[:, None] * np.ones_like(t_h)[None, :]  # noqa: E731 (co-medications established)
    first_two_weeks = np.full(FORECAST_DAY, START_DOSE_MG)
    true_inr = simulate_inr(truth, dose_t_h[:FORECAST_DAY], first_two_weeks, np.r_[read_t_h, day14_h], every)
    population = simulate_inr(warfarin.typical_params(cov), dose_t_h[:FORECAST_DAY], first_two_weeks, [day14_h],
                              every)[:, 0]
    readings = true_inr[:, :-1] * np.exp(rng.normal(0.0, np.sqrt(warfarin.INR_RESIDUAL_VARIANCE),
                                                    (patients, len(READING_DAYS))))
    start = time.perf_counter()
    forecast = np.empty(patients)
    twin_daily = np.empty(patients)
    first_days = READING_DAYS[-1]
    for i in range(patients):
        one_cov = warfarin.Covariates(cov.age_years[i:i + 1], cov.weight_kg[i:i + 1], cov.cyp2c9[i:i + 1],
                                      cov.vkorc1[i:i + 1], cov.amiodarone[i:i + 1], cov.enzyme_inducer[i:i + 1])
        fit = fit_patient(one_cov, dose_t_h[:first_days], np.full(first_days, START_DOSE_MG), read_t_h,
                          readings[i], cl_factor_h=factor_of(i), keys=keys)
        forecast[i] = fit.forecast(np.array([day14_h]), dose_t_h[first_days:FORECAST_DAY],
                                   np.full(FORECAST_DAY - first_days, START_DOSE_MG))[0][0]
        twin_daily[i] = fit.stable_weekly_dose_mg(target_inr, n_draws=2)[0] / 7.0
    fit_s = time.perf_counter() - start
    iwpc_daily = iwpc_weekly_dose_mg(cohort.age_years, cohort.height_cm, cohort.weight_kg, cohort.vkorc1_1639,
                                     cohort.cyp2c9, cohort.ancestry, cohort.enzyme_inducer,
                                     cohort.amiodarone) / 7.0
    twin_doses = np.where(np.arange(IN_RANGE_DAY)[None, :] < first_days, START_DOSE_MG, twin_daily[:, None])
    iwpc_doses = np.broadcast_to(iwpc_daily[:, None], (patients, IN_RANGE_DAY))
    inr28_twin = simulate_inr(truth, dose_t_h, twin_doses, [day28_h], every)[:, 0]
    inr28_iwpc = simulate_inr(truth, dose_t_h, iwpc_doses, [day28_h], every)[:, 0]
    lo, hi = THERAPEUTIC_INR
    return {
        "patients": patients,
        "fit_mae_inr_day14": float(np.abs(forecast - true_inr[:, -1]).mean()),
        "population_mae_inr_day14": float(np.abs(population - true_inr[:, -1]).mean()),
        "fit_to_population_mae": float(np.abs(forecast - true_inr[:, -1]).mean()
                                       / np.abs(population - true_inr[:, -1]).mean()),
        "in_range_day28_twin": float(((inr28_twin >= lo) & (inr28_twin <= hi)).mean()),
        "in_range_day28_iwpc": float(((inr28_iwpc >= lo) & (inr28_iwpc <= hi)).mean()),
        "median_weekly_dose_twin_mg": float(np.median(7.0 * twin_daily)),
        "median_weekly_dose_iwpc_mg": float(np.median(7.0 * iwpc_daily)),
        "fit_s_per_patient": fit_s / patients,
    }
