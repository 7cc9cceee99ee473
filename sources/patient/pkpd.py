"""Time stepping of warfarin and metoprolol for a whole cohort at once: one numba kernel, patients in parallel.

Warfarin (S-enantiomer, Hamberg 2007): absorption depot -> central (V1) <-> peripheral (V2), eliminated by CL
times the step's clearance factor (interacting drugs, adverse events); the concentration inhibits clotting-factor
synthesis (inflow = 1 - C^g / (EC50^g + C^g)) into a 6-compartment transit chain (MTT1) and a 1-compartment
chain (MTT2); INR = 1 + 20 (1 - A6 A7)^3.61. Metoprolol: a lagged absorption depot into one compartment (V/F,
CL/F), its concentration acting on heart rate and blood pressure through `metoprolol`'s Emax model.

Each step of `dt_h` is integrated by classic Runge-Kutta in equal substeps of at most `MAX_SUBSTEP_H` (the
fastest rate, warfarin's ka 2/h, times the substep stays <= 0.2, so the error is far below the 1 % the test
asks against scipy's solve_ivp). Doses are taken at the start of their step; the outputs are the values at the
end of each step.

>>> import numpy as np
>>> from sources.patient.cohort import Cohort
>>> cohort = Cohort.typical(["*1/*1"], ["G/G"])
>>> days, dt_h = 42, 1.0
>>> n = int(days * 24 / dt_h)
>>> dose = np.zeros((1, n)); dose[:, ::24] = 5.0
>>> state, out = step_pkpd(PkpdState.initial(1), cohort, dose, np.zeros((1, n)), np.ones((1, n)), dt_h)
>>> round(float(out.inr[0, -1]), 1)
1.9
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numba
import numpy as np

from sources.patient import metoprolol
from sources.patient.warfarin import CHAIN1_COMPARTMENTS, INR_EXPONENT, INR_MAX_RISE, S_FRACTION

MAX_SUBSTEP_H = 0.1
N1 = CHAIN1_COMPARTMENTS


@dataclass(frozen=True)
class PkpdState:
    """Per-patient compartments. Amounts in mg (warfarin: S-warfarin, already times F); chains are fractions of
    the normal clotting-factor activity (1 before warfarin). `met_pending_mg` waits `met_lag_left_h` to be
    absorbed (metoprolol's absorption lag)."""

    war_depot_mg: np.ndarray
    war_central_mg: np.ndarray
    war_periph_mg: np.ndarray
    chain1: np.ndarray  # (n_patients, 6)
    chain2: np.ndarray
    met_pending_mg: np.ndarray
    met_lag_left_h: np.ndarray
    met_depot_mg: np.ndarray
    met_central_mg: np.ndarray

    @classmethod
    def initial(cls, n: int) -> PkpdState:
        """Drug-naive patients."""
        z = np.zeros(n)
        return cls(z.copy(), z.copy(), z.copy(), np.ones((n, N1)), np.ones(n), z.copy(), z.copy(), z.copy(),
                   z.copy())

    def copy(self) -> PkpdState:
        return replace(self, **{k: v.copy() for k, v in self.__dict__.items()})


@dataclass(frozen=True)
class Outputs:
    """(n_patients, n_steps) each, at the end of each step; effects are additive deltas on the vitals."""

    warfarin_conc_mg_l: np.ndarray
    inr: np.ndarray
    metoprolol_conc_mg_l: np.ndarray
    hr_effect_bpm: np.ndarray
    sbp_effect_mmhg: np.ndarray
    dbp_effect_mmhg: np.ndarray


@numba.njit(cache=True, fastmath=False, inline="always")
def _war_rhs(y, dy, ka, cl, inv_v1, inv_v2, q, ec50g, gamma, k1, k2):
    """y: depot, central, periph, chain1[0..5], chain2 (amounts mg; chains fractions)."""
    c = y[1] * inv_v1
    cg = math.exp(gamma * math.log(c)) if c > 0.0 else 0.0  # c ** gamma; pow costs twice as much
    inflow = 1.0 - cg / (ec50g + cg)
    absorb = ka * y[0]
    dy[0] = -absorb
    dy[1] = absorb - cl * c - q * c + q * y[2] * inv_v2
    dy[2] = q * c - q * y[2] * inv_v2
    dy[3] = k1 * (inflow - y[3])
    for i in range(1, N1):
        dy[3 + i] = k1 * (y[2 + i] - y[3 + i])
    dy[3 + N1] = k2 * (inflow - y[3 + N1])


@numba.njit(cache=True, parallel=True)
def _kernel(wdep, wc1, wc2, ch1, ch2, mpend, mlag, mdep, mc,
            w_cl, w_v1, w_v2, w_q, w_ka, w_f, w_ec50, w_gamma, w_mtt1, w_mtt2,
            m_cl, m_v, m_ka, m_lag,
            dose_w, dose_m, clf, dt, n_sub, s_fraction,
            out_wc, out_inr, out_mc):
    n_p, n_s = dose_w.shape
    h = dt / n_sub
    ns = 4 + N1
    for p in numba.prange(n_p):
        y = np.empty(ns)
        y[0] = wdep[p]
        y[1] = wc1[p]
        y[2] = wc2[p]
        for i in range(N1):
            y[3 + i] = ch1[p, i]
        y[3 + N1] = ch2[p]
        k1s, k2s, k3s, k4s, tmp = np.empty(ns), np.empty(ns), np.empty(ns), np.empty(ns), np.empty(ns)
        ec50g = w_ec50[p] ** w_gamma[p]
        k1 = N1 / w_mtt1[p]
        k2 = 1.0 / w_mtt2[p]
        mk = m_cl[p] / m_v[p]
        inv_v1, inv_v2 = 1.0 / w_v1[p], 1.0 / w_v2[p]
        # metoprolol is linear: one substep's exact propagator, the same for every substep of this patient
        ka = m_ka[p]
        ea, ek = math.exp(-ka * h), math.exp(-mk * h)
        into_central = ka / (mk - ka) * (ea - ek) if abs(ka - mk) > 1e-9 else ka * h * ek
        md, mcc, pend, lag = mdep[p], mc[p], mpend[p], mlag[p]
        for s in range(n_s):
            y[0] += s_fraction * w_f[p] * dose_w[p, s]
            if dose_m[p, s] > 0.0:
                if pend <= 0.0:
                    lag = m_lag[p]
                pend += dose_m[p, s]  # a second dose inside the lag rides with the first (documented)
            cl = w_cl[p] * clf[p, s]
            for _ in range(n_sub):
                if pend > 0.0 and lag <= 1e-9:
                    md += pend
                    pend = 0.0
                _war_rhs(y, k1s, w_ka[p], cl, inv_v1, inv_v2, w_q[p], ec50g, w_gamma[p], k1, k2)
                for i in range(ns):
                    tmp[i] = y[i] + 0.5 * h * k1s[i]
                _war_rhs(tmp, k2s, w_ka[p], cl, inv_v1, inv_v2, w_q[p], ec50g, w_gamma[p], k1, k2)
                for i in range(ns):
                    tmp[i] = y[i] + 0.5 * h * k2s[i]
                _war_rhs(tmp, k3s, w_ka[p], cl, inv_v1, inv_v2, w_q[p], ec50g, w_gamma[p], k1, k2)
                for i in range(ns):
                    tmp[i] = y[i] + h * k3s[i]
                _war_rhs(tmp, k4s, w_ka[p], cl, inv_v1, inv_v2, w_q[p], ec50g, w_gamma[p], k1, k2)
                for i in range(ns):
                    y[i] += h / 6.0 * (k1s[i] + 2.0 * k2s[i] + 2.0 * k3s[i] + k4s[i])
                # metoprolol: linear, stepped exactly (depot -> central -> out)
                mcc = mcc * ek + md * into_central
                md *= ea
                if pend > 0.0:
                    lag -= h
            out_wc[p, s] = y[1] / w_v1[p]
            rem = 1.0 - y[3 + N1 - 1] * y[3 + N1]
            out_inr[p, s] = 1.0 + INR_MAX_RISE * (rem if rem > 0.0 else 0.0) ** INR_EXPONENT
            out_mc[p, s] = mcc / m_v[p]
        wdep[p], wc1[p], wc2[p] = y[0], y[1], y[2]
        for i in range(N1):
            ch1[p, i] = y[3 + i]
        ch2[p] = y[3 + N1]
        mdep[p], mc[p], mpend[p], mlag[p] = md, mcc, pend, lag


def _shaped(name: str, arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; expected (n_patients, n_steps) = {shape}")
    return arr


def step_pkpd(state: PkpdState, cohort, dose_warfarin_mg: np.ndarray, dose_metoprolol_mg: np.ndarray,
              cl_factor: np.ndarray, dt_h: float) -> tuple[PkpdState, Outputs]:
    """Advance every patient by `n_steps` steps of `dt_h` hours. `cohort` needs `.warfarin` and `.metoprolol`
    parameter dicts (a `Cohort`). The input state is not modified."""
    if not dt_h > 0:
        raise ValueError(f"dt_h {dt_h!r} must be > 0 hours")
    dose_w = np.asarray(dose_warfarin_mg, dtype=np.float64)
    if dose_w.ndim != 2:
        raise ValueError(f"dose_warfarin_mg has shape {dose_w.shape}; expected (n_patients, n_steps)")
    shape = dose_w.shape
    dose_w = _shaped("dose_warfarin_mg", dose_w, shape)
    dose_m = _shaped("dose_metoprolol_mg", dose_metoprolol_mg, shape)
    clf = _shaped("cl_factor", cl_factor, shape)
    if len(state.war_central_mg) != shape[0]:
        raise ValueError(f"state has {len(state.war_central_mg)} patients; the doses have {shape[0]}")
    if (dose_w < 0).any() or (dose_m < 0).any() or (clf <= 0).any():
        raise ValueError("doses must be >= 0 mg and cl_factor > 0")
    st = state.copy()
    w, m = cohort.warfarin, cohort.metoprolol
    f = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in w.items()}
    g = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in m.items()}
    out_wc, out_inr, out_mc = np.empty(shape), np.empty(shape), np.empty(shape)
    n_sub = max(1, math.ceil(dt_h / MAX_SUBSTEP_H - 1e-9))
    _kernel(st.war_depot_mg, st.war_central_mg, st.war_periph_mg, st.chain1, st.chain2, st.met_pending_mg,
            st.met_lag_left_h, st.met_depot_mg, st.met_central_mg,
            f["cl_l_h"], f["v1_l"], f["v2_l"], f["q_l_h"], f["ka_per_h"], f["bioavailability"], f["ec50_mg_l"],
            f["gamma"], f["mtt1_h"], f["mtt2_h"], g["cl_l_h"], g["v_l"], g["ka_per_h"], g["lag_h"],
            dose_w, dose_m, clf, float(dt_h), n_sub, S_FRACTION, out_wc, out_inr, out_mc)
    hr = metoprolol.hr_effect_bpm(out_mc, {k: v[:, None] for k, v in m.items()})
    sbp, dbp = metoprolol.bp_effect_mmhg(out_mc, {k: v[:, None] for k, v in m.items()})
    return st, Outputs(out_wc, out_inr, out_mc, hr, sbp, dbp)


def daily_doses(n_patients: int, n_steps: int, dt_h: float, dose_mg: float | np.ndarray, hour: float = 18.0,
                interval_h: float = 24.0, t0_h: float = 0.0) -> np.ndarray:
    """A dose array that gives `dose_mg` every `interval_h` at `hour` of the day (steps from `t0_h`): a helper
    for tests and simple scenarios."""
    t = t0_h + dt_h * np.arange(n_steps)
    phase = np.mod(t - hour, interval_h)
    at = (phase < dt_h - 1e-9) | (phase > interval_h - 1e-9)
    return np.where(at[None, :], np.broadcast_to(np.asarray(dose_mg, float).reshape(-1, 1),
                                                 (n_patients, 1)), 0.0)
