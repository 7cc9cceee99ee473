"""A patient's own twin: individual warfarin parameters estimated from the doses taken and the INR readings so
far (maximum a posteriori, the population model as prior), their uncertainty (Laplace approximation, its draws
importance-weighted to the exact posterior), an INR forecast (posterior median) with a band under any future
dosing, and the stable dose for the target INR.

The parameters estimated are log-multipliers `eta` of the typical parameters (`warfarin.typical_params`) for
`ETA_KEYS`: every parameter the population varies (`warfarin.BPV_CV`: clearance and EC50, which set the stable
dose, the volumes and the two chains' transit times, which set how fast the INR gets there), with the
population's log-normal variability as prior, so the prior is the one the virtual patients are drawn from and no
varying parameter is held at its typical value. The INR readings' likelihood is the simulator's variability
model (`inr_variability.log_likelihood`): the assay's error on each reading plus the patient's slow biological
fluctuation, correlated between readings days apart. The INR is simulated with the cohort simulator's kernel
(`pkpd.step_pkpd`), so twin and virtual patient share one model; the optimiser evaluates the objective and its
central-difference gradient as one batch of patients. A refit can start from the previous fit (`start_eta`) and stop
at a deadline of its thread's CPU time (`cpu_deadline_s`, `TwinFit.converged` False then), which keeps a live
refit within its time.

>>> import numpy as np
>>> from sources.patient import warfarin
>>> cov = warfarin.Covariates.typical(["*1/*1"], ["G/G"])
>>> truth = {k: v.copy() for k, v in warfarin.typical_params(cov).items()}
>>> truth["ec50_mg_l"] *= 0.5  # a sensitive patient
>>> doses_t_h = 24.0 * np.arange(7)
>>> t_obs_h = np.array([72.0, 120.0, 168.0])
>>> inr_obs = simulate_inr(truth, doses_t_h, np.full(7, 5.0), t_obs_h)[0]
>>> fit = fit_patient(cov, doses_t_h, np.full(7, 5.0), t_obs_h, inr_obs)
>>> population = fit_patient(cov, doses_t_h, np.full(7, 5.0), np.array([]), np.array([]))
>>> bool(fit.eta[ETA_KEYS.index("ec50_mg_l")] < 0) and fit.stable_weekly_dose_mg()[0] < 0.8 * population.stable_weekly_dose_mg()[0]
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np
from scipy.optimize import minimize

from sources.patient import metoprolol, warfarin
from sources.patient.dose_advice import daily_dose_for_inr
from sources.patient.inr_variability import log_likelihood
from sources.patient.pkpd import PkpdState, step_pkpd

# the keys of `warfarin.typical_params` that `warfarin.individual_params` varies (one per `BPV_CV` entry); fitting
# fewer would hold the others at their typical values, a misspecified prior (docs/MODEL-PATIENT.md, the twin)
ETA_KEYS = ("cl_l_h", "v1_l", "v2_l", "ec50_mg_l", "mtt1_h", "mtt2_h")
DT_H = 1.0  # simulation step: INR and concentrations move over hours to days
FD_STEP = 1e-3  # central-difference step in eta (log scale)


def _omega(keys: tuple[str, ...]) -> np.ndarray:
    """Prior SD of each eta: the log-normal SD of the parameter's coefficient of variation."""
    cv = np.array([warfarin.BPV_CV[k.split("_")[0]] for k in keys])
    return np.sqrt(np.log1p(cv * cv))


def _grid(t_end_h: float, dt_h: float) -> int:
    return max(1, int(np.ceil(t_end_h / dt_h - 1e-9)))


def simulate_inr(params: dict[str, np.ndarray], dose_times_h: np.ndarray, doses_mg: np.ndarray,
                 t_h: np.ndarray, cl_factor_h: object = None, dt_h: float = DT_H) -> np.ndarray:
    """INR at times `t_h` (> 0) for each parameter set in `params` (arrays of length m), taking `doses_mg` at
    `dose_times_h` (hours from the first; `doses_mg` 1-D: the same for all, or (m, n_doses)). `cl_factor_h`: a
    function of the step times (hours) giving the clearance factor (interacting drugs), (n_steps,) for all or
    (m, n_steps), default 1. Returns
    (m, len(t_h))."""
    m = len(params["cl_l_h"])
    t_h = np.asarray(t_h, float)
    n_steps = _grid(float(t_h.max()), dt_h)
    idx = np.floor(np.asarray(dose_times_h, float) / dt_h + 1e-9).astype(int)
    keep = (idx >= 0) & (idx < n_steps)
    amounts = np.broadcast_to(np.asarray(doses_mg, float), (m, len(idx)))[:, keep]
    dose_grid = np.zeros((m, n_steps))
    np.add.at(dose_grid, (slice(None), idx[keep]), amounts)
    step_t_h = dt_h * np.arange(n_steps)
    clf = np.ones(n_steps) if cl_factor_h is None else np.asarray(cl_factor_h(step_t_h), float)  # type: ignore[operator]
    clf = np.ascontiguousarray(np.broadcast_to(clf, (m, n_steps)))  # (n_steps,) shared or (m, n_steps)
    patients = SimpleNamespace(warfarin={k: np.broadcast_to(np.asarray(v, float), (m,)) for k, v in params.items()},
                               metoprolol=metoprolol.typical_params(np.full(m, "M"), np.full(m, "NM")))
    _, out = step_pkpd(PkpdState.initial(m), patients, dose_grid,
                       np.zeros((m, n_steps)), clf, dt_h)
    # outputs are the values at the end of each step
    at = np.clip(np.round(t_h / dt_h).astype(int) - 1, 0, n_steps - 1)
    return out.inr[:, at]


@dataclass(frozen=True)
class TwinFit:
    """One patient's fitted twin. `eta`: MAP log-multipliers of `keys`; `eta_cov`: their Laplace covariance."""

    typical: dict[str, np.ndarray]  # length-1 arrays
    keys: tuple[str, ...]
    eta: np.ndarray
    eta_cov: np.ndarray
    dose_times_h: np.ndarray
    doses_mg: np.ndarray
    cl_factor_h: object
    steady_cl_factor: float
    inr_times_h: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the readings fitted
    inr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    converged: bool = True  # False: the optimiser was stopped (deadline, iterations) before it converged
    # posterior_draws by (n_draws, seed): a refit's forecasts and dose interval share one set of weights
    _weighted: dict = field(default_factory=dict, compare=False, repr=False)

    def params(self, eta: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Parameter sets for each row of `eta` (m, k) (default: the MAP)."""
        eta = np.atleast_2d(self.eta if eta is None else eta)
        out = {k: np.repeat(v, len(eta)) for k, v in self.typical.items()}
        for j, key in enumerate(self.keys):
            out[key] = out[key] * np.exp(eta[:, j])
        return out

    def draws(self, n_draws: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).multivariate_normal(self.eta, self.eta_cov, n_draws)

    def log_posterior(self, eta: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior of each row of `eta` (m, k): the readings' likelihood (their INR simulated
        under the doses taken; `inr_variability.log_likelihood`) plus the population prior."""
        eta = np.atleast_2d(eta)
        prior = -0.5 * ((eta / _omega(self.keys)) ** 2).sum(axis=1)
        if len(self.inr) == 0:
            return prior
        predicted = simulate_inr(self.params(eta), self.dose_times_h, self.doses_mg, self.inr_times_h,
                                 self.cl_factor_h)
        return prior + log_likelihood(self.inr, predicted, self.inr_times_h)

    def posterior_draws(self, n_draws: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Draws of eta from the Laplace approximation and their importance weights (summing to 1) to the exact
        posterior: where the posterior is skewed (INR is far from linear in the parameters) the weighted draws
        follow it, not the Gaussian at its mode."""
        if (n_draws, seed) in self._weighted:
            return self._weighted[n_draws, seed]
        eta = self.draws(n_draws, seed)
        if len(self.inr) == 0:  # the prior itself
            return eta, np.full(n_draws, 1.0 / n_draws)
        dev = eta - self.eta
        log_proposal = -0.5 * np.einsum("ij,jk,ik->i", dev, np.linalg.inv(self.eta_cov), dev)
        log_w = self.log_posterior(eta) - log_proposal
        w = np.exp(log_w - log_w.max())
        self._weighted[n_draws, seed] = eta, w / w.sum()
        return self._weighted[n_draws, seed]

    def forecast(self, t_h: np.ndarray, future_dose_times_h: np.ndarray | None = None,
                 future_doses_mg: np.ndarray | None = None, quantiles: tuple[float, float] = (0.1, 0.9),
                 n_draws: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """INR at `t_h` under the doses so far plus the future ones: (median, lower, upper) over the
        parameters' posterior (the band leaves out the measurement error of a future reading). The median, not
        the INR of the MAP parameters: it is the forecast with the least expected absolute error."""
        times = np.r_[self.dose_times_h, [] if future_dose_times_h is None else future_dose_times_h]
        doses = np.r_[self.doses_mg, [] if future_doses_mg is None else future_doses_mg]
        eta, weights = self.posterior_draws(n_draws, seed)
        sims = simulate_inr(self.params(eta), times, doses, t_h, self.cl_factor_h)
        mid, lo, hi = weighted_quantiles(sims, (0.5, *quantiles), weights)
        return mid, lo, hi

    def stable_weekly_dose_mg(self, target_inr: float = 2.5, quantiles: tuple[float, float] = (0.1, 0.9),
                              n_draws: int = 400, seed: int = 0) -> tuple[float, float, float]:
        """The weekly dose holding `target_inr` at steady state for the MAP parameters, and its interval over
        the parameters' posterior."""
        best = 7.0 * daily_dose_for_inr(self.params(), target_inr, self.steady_cl_factor)[0]
        eta, weights = self.posterior_draws(n_draws, seed)
        sims = 7.0 * daily_dose_for_inr(self.params(eta), target_inr, self.steady_cl_factor)
        lo, hi = weighted_quantiles(sims[:, None], quantiles, weights)[:, 0]
        return float(best), float(lo), float(hi)


def weighted_quantiles(values: np.ndarray, quantiles: tuple[float, ...], weights: np.ndarray) -> np.ndarray:
    """Quantiles of each column of `values` (n, t) under `weights` (n,, summing to 1), interpolated between the
    weighted midpoints of the sorted values (equal weights: the Hazen quantile, close to numpy's).
    Returns (len(quantiles), t).

    >>> weighted_quantiles(np.array([[1.0], [2.0], [3.0]]), (0.5,), np.full(3, 1 / 3)).tolist()
    [[2.0]]
    """
    order = np.argsort(values, axis=0)
    ranked = np.take_along_axis(values, order, axis=0)
    w = weights[order]
    mids = np.cumsum(w, axis=0) - 0.5 * w
    return np.stack([np.interp(quantiles, mids[:, j], ranked[:, j]) for j in range(values.shape[1])], axis=1)


def fit_patient(cov: warfarin.Covariates, dose_times_h: np.ndarray, doses_mg: np.ndarray, inr_times_h: np.ndarray,
                inr: np.ndarray, cl_factor_h: object = None, keys: tuple[str, ...] = ETA_KEYS,
                start_eta: np.ndarray | None = None, max_iter: int | None = None,
                cpu_deadline_s: float | None = None) -> TwinFit:
    """MAP of the patient's parameters given the doses taken and the INR readings (times in hours from the first
    dose; `cov` holds one patient), with the Laplace approximation of their posterior. With no readings the
    answer is the prior: eta 0 and the population's variability.

    `start_eta`: where to start the optimiser (a previous fit's `eta` for the same `keys`: one more reading
    moves the MAP little); `max_iter`: at most this many BFGS iterations; `cpu_deadline_s`: a `time.thread_time()`
    value at which the optimiser stops (CPU time, not wall time: on a loaded machine a wall-clock deadline cut
    short refits that an idle one finished, so what the flow wrote depended on the machine's load). Stopped early,
    the fit is the best point reached, `converged` False."""
    if len(cov.cyp2c9) != 1:
        raise ValueError(f"fit_patient fits one patient; got {len(cov.cyp2c9)}")
    inr = np.asarray(inr, float)
    inr_times_h = np.asarray(inr_times_h, float)
    if inr.shape != inr_times_h.shape:
        raise ValueError(f"{len(inr)} INR readings but {len(inr_times_h)} reading times")
    if (inr <= 0).any() or (inr_times_h <= 0).any():
        raise ValueError("INR readings must be > 0 and taken after the first dose (time > 0 h)")
    typical = warfarin.typical_params(cov)
    omega = _omega(keys)
    k = len(keys)
    steady = float(warfarin.steady_state_factor(cov)[0])
    prior = TwinFit(typical, keys, np.zeros(k), np.diag(omega**2), np.asarray(dose_times_h, float),
                    np.asarray(doses_mg, float), cl_factor_h, steady, inr_times_h, inr)
    if len(inr) == 0:
        return prior

    def objective(etas: np.ndarray) -> np.ndarray:
        return -prior.log_posterior(etas)

    steps = FD_STEP * np.eye(k)

    def value_and_gradient(eta: np.ndarray) -> tuple[float, np.ndarray]:
        values = objective(np.vstack([eta, eta + steps, eta - steps]))  # one batch: 2k + 1 patients
        return float(values[0]), (values[1:k + 1] - values[k + 1:]) / (2 * FD_STEP)

    def past_deadline(intermediate_result: object) -> None:
        if cpu_deadline_s is not None and time.thread_time() > cpu_deadline_s:
            raise StopIteration

    eta0 = np.zeros(k) if start_eta is None else np.asarray(start_eta, float)
    options = {"gtol": 1e-5} | ({} if max_iter is None else {"maxiter": max_iter})
    result = minimize(value_and_gradient, eta0, jac=True, method="BFGS", options=options, callback=past_deadline)
    eta = result.x
    # Hessian by central differences of the objective, all points in one batch
    h = 10 * FD_STEP
    shifts = [(i, j, si, sj) for i in range(k) for j in range(i, k) for si in (1, -1) for sj in (1, -1)]
    points = np.array([eta + h * (si * np.eye(k)[i] + sj * np.eye(k)[j]) for i, j, si, sj in shifts])
    values = dict(zip(shifts, objective(points), strict=True))
    hess = np.empty((k, k))
    for i in range(k):
        for j in range(i, k):
            hess[i, j] = hess[j, i] = (values[i, j, 1, 1] - values[i, j, 1, -1] - values[i, j, -1, 1]
                                       + values[i, j, -1, -1]) / (4 * h * h)
    try:
        eta_cov = np.linalg.inv(hess)
        np.linalg.cholesky(eta_cov)
    except np.linalg.LinAlgError:  # a flat or saddle posterior: fall back on the prior's spread
        eta_cov = np.diag(omega**2)
    return replace(prior, eta=eta, eta_cov=eta_cov, converged=bool(result.success), _weighted={})
