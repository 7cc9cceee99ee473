"""The twin-guided arm, all its patients at once: at each dose time, every patient with a new INR has its own
twin refitted (the maximum a posteriori of `twin_fit`: the same parameters `ETA_KEYS`, the same population
prior and the same log-normal INR error), then gets the constant daily dose, in half tablets, whose forecast INR
on the mornings `LOOKAHEAD_DAYS` after is nearest the target (least squared log error; the MAP's forecast).

`twin_fit.fit_patient` finds that MAP one patient at a time by BFGS with a finite-difference Hessian (0.3-0.8 s a
refit here); this finds it for the whole batch by Levenberg-Marquardt on the same objective (its gradient by
forward differences, every patient's shifted points in one kernel call), started from the patient's last fit.
`tests/test_trial_twin.py` checks that both reach the same parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from sources.patient import metoprolol, warfarin
from sources.patient.cohort import Cohort
from sources.patient.inr_variability import log_likelihood
from sources.patient.pkpd import PkpdState, step_pkpd
from sources.patient.protocols import MAX_DOSE_MG, MIN_DOSE_MG, TABLET_STEP_MG
from sources.patient.twin_fit import DT_H, ETA_KEYS, _omega, simulate_inr

CANDIDATES_MG = np.arange(MIN_DOSE_MG, MAX_DOSE_MG + 1e-9, TABLET_STEP_MG)
LOOKAHEAD_DAYS = (3, 4, 5, 6, 7, 8, 9, 10)  # mornings after the decision whose INR should be on target
SAMPLE_BEFORE_DOSE_H = 10.0  # the forecast's mornings: 08:00 after an 18:00 dose
FD_STEP = 1e-3
MAX_ITERATIONS = 40
# a fit has converged when a step lowers minus the log posterior by less than this (its MAP then moves by
# ~0.01 in log parameters), or a step is refused once steps are this small in eta
TOLERANCE = 1e-4
SMALLEST_STEP = 1e-3


class TwinArm:
    """The advisor of the twin protocol (`protocols.TwinProtocol`) for a block of patients. `history(now)` gives
    (dose times h, doses taken (n, doses), lab times h (labs,), INRs reported by now (n, labs), NaN elsewhere)."""

    def __init__(self, cohort: Cohort, target_inr: float, history: Callable[[], tuple],
                 progress: Callable[[int], None] | None = None) -> None:
        self.cohort, self.target_inr, self.history, self.progress = cohort, target_inr, history, progress
        cov = cohort.covariates()
        self.typical = warfarin.typical_params(cov)
        self.steady = warfarin.steady_state_factor(cov)
        self.omega = _omega(ETA_KEYS)
        n = len(cohort)
        self.eta = np.zeros((n, len(ETA_KEYS)))
        self.n_seen = np.full(n, -1)
        self.dose_mg = np.zeros(n)
        self.refits, self.refit_s = 0, 0.0

    def params(self, who: np.ndarray, eta: np.ndarray) -> dict[str, np.ndarray]:
        """Parameter sets of patients `who` (m,) at log-multipliers `eta` (m, k)."""
        out = {key: v[who].astype(float) for key, v in self.typical.items()}
        for j, key in enumerate(ETA_KEYS):
            out[key] = out[key] * np.exp(eta[:, j])
        return out

    def __call__(self, day: int, last_inr: np.ndarray, current_dose_mg: np.ndarray) -> np.ndarray:
        dose_t_h, taken_mg, lab_t_h, lab_inr, now_h = self.history()
        seen = (~np.isnan(lab_inr)).sum(axis=1)
        new = np.flatnonzero(seen != self.n_seen)
        if len(new):
            t0 = time.perf_counter()
            readings = lab_inr[new][:, (~np.isnan(lab_inr[new])).any(axis=0)]
            times = lab_t_h[(~np.isnan(lab_inr[new])).any(axis=0)]
            if readings.shape[1]:
                self.eta[new] = self._fit(new, dose_t_h, taken_mg[new], times, readings)
            self.dose_mg[new] = self._choose(new, dose_t_h, taken_mg[new], now_h)
            self.n_seen[new] = seen[new]
            self.refits += len(new)
            self.refit_s += time.perf_counter() - t0
            if self.progress:
                self.progress(len(new))
        return self.dose_mg.copy()

    def _clf(self, who: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        factor = self.steady[who][:, None]
        return lambda t_h: factor * np.ones((1, len(t_h)))

    def costs(self, who: np.ndarray, eta: np.ndarray, dose_t_h: np.ndarray, taken_mg: np.ndarray,
              lab_t_h: np.ndarray, inr: np.ndarray, per_patient: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(minus the log posterior of each row of `eta` (m, k), as `TwinFit.log_posterior`: the population prior
        and the readings' likelihood `inr_variability.log_likelihood`; the predicted INRs (m, readings)). Rows come
        in runs of `per_patient` for the same patient, whose readings are the matching row of `inr` (NaN: none)."""
        predicted = simulate_inr(self.params(who, eta), dose_t_h, np.repeat(taken_mg, per_patient, axis=0), lab_t_h,
                                 self._clf(who))
        cost = 0.5 * ((eta / self.omega) ** 2).sum(axis=1)
        for p, readings in enumerate(inr):
            has = ~np.isnan(readings)
            rows = slice(p * per_patient, (p + 1) * per_patient)
            if has.any():
                cost[rows] -= log_likelihood(readings[has], predicted[rows][:, has], lab_t_h[has])
        return cost, predicted

    def _fit(self, who: np.ndarray, dose_t_h: np.ndarray, taken_mg: np.ndarray, lab_t_h: np.ndarray,
             inr: np.ndarray) -> np.ndarray:
        """The MAP eta of each patient `who`, started from its last fit: Levenberg-Marquardt steps on the exact
        gradient (forward differences: the k shifted points of every patient in one batch), with the
        Gauss-Newton matrix of the readings' log residuals at Hamberg's residual SD as the curvature (the
        likelihood's correlations and variance shape left out of the metric only); a step is kept only if the
        exact objective falls."""
        k = len(ETA_KEYS)
        eta = self.eta[who].copy()
        damping = np.full(len(who), 1e-2)
        sigma = np.sqrt(warfarin.INR_RESIDUAL_VARIANCE)
        cost, predicted = self.costs(who, eta, dose_t_h, taken_mg, lab_t_h, inr)
        active = np.arange(len(who))
        for _ in range(MAX_ITERATIONS):
            if not len(active):
                break
            m = len(active)
            shifted = np.repeat(eta[active], k, axis=0) + FD_STEP * np.tile(np.eye(k), (m, 1))
            c_shift, p_shift = self.costs(np.repeat(who[active], k), shifted, dose_t_h, taken_mg[active], lab_t_h,
                                          inr[active], per_patient=k)
            grad = (c_shift.reshape(m, k) - cost[active][:, None]) / FD_STEP
            has = ~np.isnan(inr[active])[:, None, :]
            jac = np.where(has, (np.log(p_shift.reshape(m, k, -1)) - np.log(predicted[active])[:, None, :])
                           / (FD_STEP * sigma), 0.0)  # (m, k, readings)
            curvature = np.einsum("mkr,mjr->mkj", jac, jac) + np.diag(1.0 / self.omega**2)[None]
            marquardt = np.eye(k)[None] * np.einsum("mkk->mk", curvature)[:, :, None]
            step = -np.linalg.solve(curvature + damping[active, None, None] * marquardt, grad[..., None])[..., 0]
            trial = eta[active] + step
            new_cost, new_pred = self.costs(who[active], trial, dose_t_h, taken_mg[active], lab_t_h, inr[active])
            better = new_cost < cost[active]
            done = (~better & (np.abs(step).max(axis=1) < SMALLEST_STEP)) | (better & (cost[active] - new_cost < TOLERANCE))
            idx = active[better]
            eta[idx], cost[idx], predicted[idx] = trial[better], new_cost[better], new_pred[better]
            damping[active] = np.where(better, damping[active] / 3.0, damping[active] * 4.0)
            active = active[~done]
        return eta

    def _choose(self, who: np.ndarray, dose_t_h: np.ndarray, taken_mg: np.ndarray, now_h: float) -> np.ndarray:
        """Each patient's candidate dose with the least squared log error of its forecast INR from the target:
        the history simulated once per patient, then every candidate from the state it leaves."""
        params = self.params(who, self.eta[who])
        m, c = len(who), len(CANDIDATES_MG)
        n_hist = int(np.ceil(now_h / DT_H - 1e-9))
        hist = np.zeros((m, n_hist))
        idx = np.floor(dose_t_h / DT_H + 1e-9).astype(int)
        np.add.at(hist, (slice(None), idx[idx < n_hist]), taken_mg[:, idx < n_hist])
        state, _ = step_pkpd(PkpdState.initial(m), _patients(params), hist, np.zeros_like(hist),
                             np.repeat(self.steady[who][:, None], n_hist, axis=1), DT_H)
        horizon = int(max(LOOKAHEAD_DAYS) * 24 / DT_H)
        future = np.zeros((m * c, horizon))
        future[:, ::int(24 / DT_H)] = np.tile(CANDIDATES_MG, m)[:, None]
        many = PkpdState(*(np.repeat(getattr(state, f), c, axis=0) for f in state.__dataclass_fields__))
        _, out = step_pkpd(many, _patients({k: np.repeat(v, c) for k, v in params.items()}), future,
                           np.zeros_like(future), np.repeat(self.steady[who], c)[:, None] * np.ones((1, horizon)),
                           DT_H)
        at = (24.0 * np.asarray(LOOKAHEAD_DAYS) - SAMPLE_BEFORE_DOSE_H) / DT_H
        inr = out.inr[:, np.round(at).astype(int) - 1].reshape(m, c, -1)
        loss = ((np.log(inr) - np.log(self.target_inr)) ** 2).mean(axis=2)
        return CANDIDATES_MG[np.argmin(loss, axis=1)]


def _patients(params: dict[str, np.ndarray]) -> SimpleNamespace:
    """What `step_pkpd` needs of a cohort: warfarin parameters, and metoprolol's (unused, typical)."""
    n = len(params["cl_l_h"])
    return SimpleNamespace(warfarin=params, metoprolol=metoprolol.typical_params(np.full(n, "M"), np.full(n, "NM")))
