"""The twin-guided arm (`trials.twin_arm`): its batched fit reaches the MAP that `twin_fit.fit_patient` finds one
patient at a time, and its dose brings the forecast INR to the target."""

from __future__ import annotations

import numpy as np
import pytest

from sources.patient import warfarin
from sources.patient.cohort import draw_cohort
from sources.patient.inr_variability import measured_inr
from sources.patient.twin_fit import fit_patient, simulate_inr
from trials.twin_arm import TwinArm

DOSE_T_H = 24.0 * np.arange(10)
LAB_T_H = np.array([62.0, 110.0, 158.0, 230.0])  # mornings of days 3, 5, 7, 10 after evening doses


def _arm_and_readings(n: int = 4) -> tuple[TwinArm, np.ndarray, np.ndarray]:
    cohort = draw_cohort(n, np.random.default_rng(21))
    doses = np.full((n, len(DOSE_T_H)), 5.0)
    steady = warfarin.steady_state_factor(cohort.covariates())
    true = np.vstack([simulate_inr({k: v[i:i + 1] for k, v in cohort.warfarin.items()}, DOSE_T_H, doses[i], LAB_T_H,
                                   lambda t, f=steady[i]: np.full_like(t, f)) for i in range(n)])
    readings = measured_inr(true, np.random.default_rng(3))
    return TwinArm(cohort, 2.5, history=lambda: None), doses, readings


def test_the_batched_fit_reaches_the_map_of_fit_patient() -> None:
    arm, doses, readings = _arm_and_readings(2)
    who = np.arange(len(doses))
    eta = arm._fit(who, DOSE_T_H, doses, LAB_T_H, readings)
    cov = arm.cohort.covariates()
    for i in who:
        one = warfarin.Covariates(*(np.asarray(getattr(cov, f))[i:i + 1] for f in cov.__dataclass_fields__))
        fit = fit_patient(one, DOSE_T_H, doses[i], LAB_T_H, readings[i],
                          cl_factor_h=lambda t, f=arm.steady[i]: np.full_like(t, f))
        ours = arm.costs(who[i:i + 1], eta[i:i + 1], DOSE_T_H, doses[i:i + 1], LAB_T_H, readings[i:i + 1])[0][0]
        assert ours == pytest.approx(-fit.log_posterior(eta[i:i + 1])[0])  # the same objective
        assert ours <= -fit.log_posterior(fit.eta[None, :])[0] + 1e-3  # and at least as low
        assert np.allclose(eta[i], fit.eta, atol=0.05)


def test_the_chosen_dose_puts_the_forecast_near_the_target() -> None:
    arm, doses, readings = _arm_and_readings(3)
    who = np.arange(3)
    arm.eta[who] = arm._fit(who, DOSE_T_H, doses, LAB_T_H, readings)
    now_h = 24.0 * 10
    chosen = arm._choose(who, DOSE_T_H, doses, now_h)
    for i, dose in enumerate(chosen):
        t = np.r_[DOSE_T_H, now_h + 24.0 * np.arange(10)]
        inr = simulate_inr(arm.params(who[i:i + 1], arm.eta[i:i + 1]), t, np.r_[doses[i], np.full(10, dose)],
                           np.array([now_h + 24.0 * 10 - 10.0]), lambda s, f=arm.steady[i]: np.full_like(s, f))
        assert 1.9 < inr[0, 0] < 3.3, (dose, inr)


def test_a_three_arm_trial_refits_the_twin_arm_as_inrs_arrive() -> None:
    from trials.design import load_design
    from trials.run import run_trial

    trial = run_trial(load_design("eu_pact_twin"), 3, seed=4)
    twin = trial.results["twin"]
    n_twin = int((trial.course.arm == 2).sum())
    # a fit per patient at the start (the prior) and at each INR reported
    assert twin["refits"] >= n_twin * 3
    assert set(trial.results["endpoints"]["ttr"]["vs_control"]) == {"genotype", "twin"}
    doses = trial.course.dose_mg[trial.course.arm == 2]
    assert np.nanmax(doses) <= 15.0 and len(np.unique(doses[~np.isnan(doses)])) > 2  # titrated, not fixed
