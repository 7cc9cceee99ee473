"""The INR's variability beyond the PK/PD model, split as it arises (docs/MODEL-PATIENT.md, "INR variability").

Hamberg's model puts all of it in one proportional residual error (log-SD 0.18,
`warfarin.INR_RESIDUAL_VARIANCE`). Here it has two parts:
- biological, on the true INR: the warfarin-induced rise of the INR (INR - 1: what vitamin K intake, illness
  and the like modulate; an untreated INR stays near 1) times exp(x), x a per-patient Ornstein-Uhlenbeck
  process on the log scale with correlation time `BIO_TAU_H` and stationary SD `BIO_RISE_LOG_SD`;
- the assay, on each reading: the true INR times exp(e), e ~ N(0, `ASSAY_LOG_SD`^2), reported to 0.1.
At the reference INR 2.5 the two add up to Hamberg's residual variance; below it the biological part is
smaller (at INR 1.5 a log-SD of 0.06 where Hamberg's residual has 0.18), above it larger.

The twin's likelihood (`log_likelihood`) is the same model, linearised: the log residuals of a patient's readings
are Gaussian with the assay's variance on the diagonal plus the biological part, correlated between readings
over days (`correlation`).

>>> fluct = InrFluctuation([np.random.default_rng([1, k]) for k in range(3)], dt_h=1.0)
>>> whole = fluct.step(48)
>>> again = InrFluctuation([np.random.default_rng([1, k]) for k in range(3)], dt_h=1.0)
>>> bool(np.allclose(np.hstack([again.step(20), again.step(28)]), whole))  # chunking does not change it
True
>>> true_inr(np.array([1.0, 2.5]), np.array([0.3, 0.0])).tolist()  # an untreated INR does not fluctuate
[1.0, 2.5]
"""

from __future__ import annotations

import numba
import numpy as np

from sources.patient.warfarin import INR_RESIDUAL_VARIANCE

# assay imprecision: CoaguChek XS ~4 % CV (van den Besselaar et al. 2015, Thromb Haemost), within the desirable
# < 4.5 % derived from INR's biological variation (Thromb Res 2012;130:535)
ASSAY_CV = 0.04
ASSAY_LOG_SD = float(np.sqrt(np.log1p(ASSAY_CV**2)))
# the slow fluctuation follows vitamin K intake through the clotting factors' turnover (prothrombin, Hamberg's
# slow chain: MTT2 120 h): days, not hours; INRs two weeks apart are near independent (exp(-14/5) = 0.06), as the
# biological-variation studies treat them
BIO_TAU_H = 5 * 24.0
REFERENCE_INR = 2.5  # where biological + assay variance equal Hamberg's residual: the target of therapy
BIO_RISE_LOG_SD = float(np.sqrt(INR_RESIDUAL_VARIANCE - ASSAY_LOG_SD**2) * REFERENCE_INR / (REFERENCE_INR - 1.0))
FACTOR_LAG_H = 12.0  # the INR follows a change of vitamin K over hours (factor VII's half-life ~6 h, IX-X ~1-2 days)
_LAG_SHARE = BIO_TAU_H / (BIO_TAU_H + FACTOR_LAG_H)  # var(lagged) / var(OU) = cov(OU, lagged) / var(OU)
_OU_SD = BIO_RISE_LOG_SD / float(np.sqrt(_LAG_SHARE))  # the OU's SD, so that the lagged x has BIO_RISE_LOG_SD


def true_inr(model_inr: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The patient's true INR: the model's, its rise above 1 scaled by exp(x) (x: the fluctuation)."""
    return 1.0 + (np.asarray(model_inr, float) - 1.0) * np.exp(x)


def measured_inr(true: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lab INR: the true one with the assay's proportional error, to 0.1 as reported."""
    return np.round(true * np.exp(rng.normal(0.0, ASSAY_LOG_SD, np.shape(true))), 1)


class InrFluctuation:
    """The biological fluctuation x of n patients at ticks `dt_h` apart, each from its own random stream (so a
    patient's fluctuation is the same whatever cohort, block or chunking it is simulated in). An OU process
    seen through a first-order lag of `FACTOR_LAG_H` (the clotting factors' synthesis): smooth over hours, so
    the true INR crosses a limit once, not back and forth every tick. It starts from the stationary
    distribution (the patient had their diet before the run)."""

    def __init__(self, rngs: list[np.random.Generator], dt_h: float) -> None:
        self.rngs = rngs
        self.decay = float(np.exp(-dt_h / BIO_TAU_H))
        self.lag = float(np.exp(-dt_h / FACTOR_LAG_H))
        self.innovation_sd = _OU_SD * float(np.sqrt(1.0 - self.decay**2))
        first = np.array([r.standard_normal(2) for r in rngs]).reshape(len(rngs), 2)
        # at the tick before the first: the OU and its lagged view, jointly stationary
        self.ou = _OU_SD * first[:, 0]
        self.x = _LAG_SHARE * self.ou + BIO_RISE_LOG_SD * np.sqrt(1.0 - _LAG_SHARE) * first[:, 1]

    def step(self, n_ticks: int) -> np.ndarray:
        """(n, n_ticks): x at the next `n_ticks` ticks (the OU discretised exactly, then the lag)."""
        x = np.empty((len(self.rngs), n_ticks))
        for r, row in zip(self.rngs, x, strict=True):
            r.standard_normal(out=row)  # drawn in place: no list of rows to stack
        _ou_through_lag(x, self.innovation_sd, self.decay, 1.0 - self.lag, self.lag, self.ou, self.x)
        return x


@numba.njit(cache=True)
def _ou_through_lag(x: np.ndarray, innovation_sd: float, decay: float, gain: float, lag: float, ou: np.ndarray,
                    lagged: np.ndarray) -> None:
    """In place: x (n, nt) standard normals -> the lagged OU; `ou`, `lagged` (n,) the states, updated. The
    operations of the two first-order `scipy.signal.lfilter` passes it replaces, in their order (same bits)."""
    for k in range(x.shape[0]):
        o, v = ou[k], lagged[k]
        for j in range(x.shape[1]):
            o = decay * o + x[k, j] * innovation_sd
            v = lag * v + gain * o
            x[k, j] = v
        ou[k], lagged[k] = o, v


def correlation(lag_h: np.ndarray) -> np.ndarray:
    """Correlation of the fluctuation `lag_h` hours apart (an OU through a first-order lag)."""
    h = np.abs(np.asarray(lag_h, float))
    return (BIO_TAU_H * np.exp(-h / BIO_TAU_H) - FACTOR_LAG_H * np.exp(-h / FACTOR_LAG_H)) / (BIO_TAU_H - FACTOR_LAG_H)


def log_likelihood(inr: np.ndarray, predicted: np.ndarray, t_h: np.ndarray) -> np.ndarray:
    """Log likelihood (up to a constant) of readings `inr` (k,) taken at `t_h` (k,) given each row of the model's
    `predicted` INRs (m, k): log residuals Gaussian with the assay's variance plus the biological fluctuation's,
    linearised (d log INR / dx = (INR - 1) / INR), correlated over time. Returns (m,)."""
    predicted = np.atleast_2d(predicted)
    resid = np.log(np.asarray(inr, float))[None, :] - np.log(predicted)
    slope = (predicted - 1.0) / predicted  # (m, k)
    t_h = np.asarray(t_h, float)
    cov = (BIO_RISE_LOG_SD**2 * slope[:, :, None] * slope[:, None, :] * correlation(t_h[:, None] - t_h[None, :])[None]
           + ASSAY_LOG_SD**2 * np.eye(len(t_h))[None])
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, resid[:, :, None])[:, :, 0]
    return -0.5 * (z**2).sum(axis=1) - np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)
