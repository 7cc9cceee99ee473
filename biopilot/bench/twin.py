"""`biopilot bench twin`: the patient's own twin against the population model, on simulated patients whose
true parameters are known (`draw_cohort`: covariate model x between-patient variability).

Every patient takes 5 mg/day (evening doses from day 1); INR is sampled on the mornings of days 3, 5 and 7 as the
cohort simulator reads it (`inr_variability`: the patient's slow biological fluctuation on the true INR, the
assay's error on the reading). Forecast: the model's INR on the morning of day 14 under the same dose (the
patient's expected INR, without the fluctuation no reading can foresee a week ahead), from the twin fitted
to those three readings (`twin_fit.fit_patient`, its posterior median) beside the population model (the typical
parameters for the patient's covariates). Dose advice: from day 8 each patient takes the fitted twin's stable
dose for INR 2.5; beside it the same patients take the IWPC formula's dose from day 1; the share with INR 2-3 on
the morning of day 28 (the true INR, no measurement error). `posterior_median_bound`: on the same patients and
readings, the MAE of the exact posterior median (importance sampling from the prior), the least any forecast from
those readings can reach: the yardstick for the fit's ratio.

Caveat: the simulated patients follow the twin's own model, so this measures what the readings add (fit vs
population), not the model's truth; the IWPC arm is an outside formula, fitted on real patients, judged here by
the model (docs/MODEL-PATIENT.md, "Dose advice", on the model's level against IWPC).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace

import numpy as np

from sources.patient import warfarin
from sources.patient.cohort import Cohort, draw_cohort
from sources.patient.inr_variability import InrFluctuation, log_likelihood, measured_inr, true_inr
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


_DOSE_T_H = DAY_H * np.arange(IN_RANGE_DAY)
_READ_T_H = np.array([_morning_h(d) for d in READING_DAYS])
_DAY14_H = _morning_h(FORECAST_DAY)


@dataclass(frozen=True)
class _Drawn:
    """The bench's patients, their true INR at the reading days and day 14, and the readings."""

    cohort: Cohort
    steady: np.ndarray  # clearance factor of each patient's established co-medications
    true_inr: np.ndarray  # (patients, readings + 1): the reading mornings, then day 14
    population: np.ndarray  # the population model's INR on day 14
    readings: np.ndarray

    def one(self, i: int) -> warfarin.Covariates:
        cov = self.cohort.covariates()
        return warfarin.Covariates(cov.age_years[i:i + 1], cov.weight_kg[i:i + 1], cov.cyp2c9[i:i + 1],
                                   cov.vkorc1[i:i + 1], cov.amiodarone[i:i + 1], cov.enzyme_inducer[i:i + 1])

    def factor_of(self, i: int):  # noqa: ANN201 - a function of hours
        return lambda t_h: np.full_like(t_h, self.steady[i])

    def every(self, t_h: np.ndarray) -> np.ndarray:
        """Every patient's clearance factor over `t_h` (co-medications established)."""
        return self.steady[:, None] * np.ones_like(t_h)[None, :]


def _draw(patients: int, seed: int) -> _Drawn:
    rng = np.random.default_rng(seed)
    cohort = draw_cohort(patients, rng)
    drawn = _Drawn(cohort, warfarin.steady_state_factor(cohort.covariates()), np.empty(0), np.empty(0),
                   np.empty(0))
    first_two_weeks = np.full(FORECAST_DAY, START_DOSE_MG)
    model_inr = simulate_inr(cohort.warfarin, _DOSE_T_H[:FORECAST_DAY], first_two_weeks, np.r_[_READ_T_H, _DAY14_H],
                             drawn.every)
    population = simulate_inr(warfarin.typical_params(cohort.covariates()), _DOSE_T_H[:FORECAST_DAY],
                              first_two_weeks, [_DAY14_H], drawn.every)[:, 0]
    hourly = InrFluctuation([np.random.default_rng([seed, i]) for i in range(patients)], dt_h=1.0)
    fluctuation = hourly.step(int(_READ_T_H.max()) + 1)[:, np.round(_READ_T_H).astype(int)]
    readings = measured_inr(true_inr(model_inr[:, :-1], fluctuation), rng)
    return replace(drawn, true_inr=model_inr, population=population, readings=readings)


def run(patients: int = 200, seed: int = 11, target_inr: float = 2.5,
        keys: tuple[str, ...] = ETA_KEYS) -> dict[str, float]:
    """The figures of the module docstring on `patients` drawn patients (`keys`: the parameters the twin fits)."""
    drawn = _draw(patients, seed)
    cohort, true_inr, population, readings = drawn.cohort, drawn.true_inr, drawn.population, drawn.readings
    truth, every, dose_t_h = cohort.warfarin, drawn.every, _DOSE_T_H
    read_t_h, day14_h, day28_h = _READ_T_H, _DAY14_H, _morning_h(IN_RANGE_DAY)
    start = time.perf_counter()
    forecast = np.empty(patients)
    twin_daily = np.empty(patients)
    first_days = READING_DAYS[-1]
    for i in range(patients):
        fit = fit_patient(drawn.one(i), dose_t_h[:first_days], np.full(first_days, START_DOSE_MG), read_t_h,
                          readings[i], cl_factor_h=drawn.factor_of(i), keys=keys)
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


def posterior_median_bound(patients: int = 200, seed: int = 11, n_draws: int = 4000,
                           draw_seed: int = 999) -> dict[str, float]:
    """The day-14 MAE of the exact posterior median on `run`'s patients and readings (same `patients`, `seed`):
    the least expected absolute error any forecast from those three readings can have under the model. Each
    patient's posterior is `n_draws` draws from the population prior (every `warfarin.BPV_CV` parameter),
    weighted by the likelihood of the readings (importance sampling), so no Laplace approximation and no
    optimiser enter it; compare its ratio with `run`'s `fit_to_population_mae`."""
    drawn = _draw(patients, seed)
    prior_rng = np.random.default_rng(draw_seed)
    best = np.empty(patients)
    for i in range(patients):
        one = drawn.one(i)
        same_patient = warfarin.Covariates(*(np.repeat(getattr(one, f.name), n_draws) for f in fields(one)))
        sims = simulate_inr(warfarin.individual_params(same_patient, prior_rng), _DOSE_T_H[:FORECAST_DAY],
                            np.full(FORECAST_DAY, START_DOSE_MG), np.r_[_READ_T_H, _DAY14_H], drawn.factor_of(i))
        log_lik = log_likelihood(drawn.readings[i], sims[:, :-1], _READ_T_H)
        weight = np.exp(log_lik - log_lik.max())
        order = np.argsort(sims[:, -1])
        cumulative = np.cumsum(weight[order]) / weight.sum()
        best[i] = sims[order[np.searchsorted(cumulative, 0.5)], -1]
    truth = drawn.true_inr[:, -1]
    mae = float(np.abs(best - truth).mean())
    population = float(np.abs(drawn.population - truth).mean())
    return {"patients": patients, "posterior_median_mae_inr_day14": mae, "population_mae_inr_day14": population,
            "posterior_median_to_population_mae": mae / population}
