"""Time stepping of warfarin and metoprolol for a whole cohort at once: one numba kernel, patients in parallel.

Warfarin (Hamberg 2007, plus R-warfarin): S-warfarin's absorption depot -> central (V1) <-> peripheral (V2),
eliminated by CL; R-warfarin absorbed alike (its depot is the S depot times R_FRACTION / S_FRACTION: same tablet,
same ka) into one compartment (r_V), eliminated by r_CL; both clearances times the step's clearance factor
(interacting drugs, adverse events). The S-equivalent concentration C = C_S + R_POTENCY C_R inhibits
clotting-factor synthesis (inflow = 1 - C^g / (EC50^g + C^g)) into a 6-compartment transit chain (MTT1) and a
1-compartment chain (MTT2); INR = 1 + 20 (1 - A6 A7)^3.61. Metoprolol: a lagged absorption depot into one compartment (V/F,
CL/F), its concentration acting on heart rate and blood pressure through `metoprolol`'s Emax model.

Each step of `dt_h` is integrated by classic Runge-Kutta in equal substeps of at most `MAX_SUBSTEP_H` (the
fastest rate, warfarin's ka 2/h, times the substep stays <= 0.2, so the error is far below the 1 % the test
asks against scipy's solve_ivp): warfarin's PK in two Runge-Kutta halves of each substep, the transit chains
on the synthesis that gives at the substep's start, middle and end (two exp/log pairs a substep instead of the
four of one Runge-Kutta step over the whole system). Both parts are linear, so their Runge-Kutta steps are
linear maps, found once per patient by stepping unit vectors (the PK's again whenever the clearance changes)
and then applied as matrices. Metoprolol is stepped exactly. Doses are taken at the start of their step; the
outputs are the values at the end of each step.

>>> import numpy as np
>>> from sources.patient.cohort import Cohort
>>> cohort = Cohort.typical(["*1/*1"], ["G/G"])
>>> days, dt_h = 42, 1.0
>>> n = int(days * 24 / dt_h)
>>> dose = np.zeros((1, n)); dose[:, ::24] = 5.0
>>> state, out = step_pkpd(PkpdState.initial(1), cohort, dose, np.zeros((1, n)), np.ones((1, n)), dt_h)
>>> bool(1.5 < out.inr[0, -1] < 2.5)  # a typical patient on 5 mg/day, six weeks on: near the 2-3 band
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numba
import numpy as np

from sources.patient import metoprolol
from sources.patient.warfarin import (
    CHAIN1_COMPARTMENTS,
    INR_EXPONENT,
    INR_MAX_RISE,
    R_FRACTION,
    R_POTENCY,
    S_FRACTION,
)

MAX_SUBSTEP_H = 0.1
# The compiled passes hand out patients to their threads this many at a time, as the threads come free, rather
# than half the cohort to each up front: while the Delta writer (another thread) holds a core, one thread would
# otherwise be left with half the pass and the other would idle (docs/PERFORMANCE.md).
PARALLEL_CHUNK_PATIENTS = 16
N1 = CHAIN1_COMPARTMENTS


@dataclass(frozen=True)
class PkpdState:
    """Per-patient compartments. Amounts in mg (warfarin: S-warfarin, already times F, and R-warfarin's central
    amount); chains are fractions of the normal clotting-factor activity (1 before warfarin). `met_pending_mg` waits `met_lag_left_h` to be
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
    war_r_central_mg: np.ndarray

    @classmethod
    def initial(cls, n: int) -> PkpdState:
        """Drug-naive patients."""
        z = np.zeros(n)
        return cls(z.copy(), z.copy(), z.copy(), np.ones((n, N1)), np.ones(n), z.copy(), z.copy(), z.copy(),
                   z.copy(), z.copy())

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

    @classmethod
    def empty(cls, n_patients: int, n_steps: int) -> Outputs:
        """Arrays to be filled (`step_pkpd(..., into=)`)."""
        return cls(*(np.empty((n_patients, n_steps)) for _ in fields(cls)))

    def span(self, first: int, end: int) -> Outputs:
        """Views of steps [first, end)."""
        return Outputs(*(getattr(self, f.name)[:, first:end] for f in fields(self)))


@numba.njit(inline="always")
def _inflow(c, ec50g, gamma):
    """Clotting-factor synthesis left by the S-equivalent concentration c: 1 - C^g / (EC50^g + C^g); C^g as
    exp(g log C), which costs half as much as pow."""
    cg = math.exp(gamma * math.log(c)) if c > 0.0 else 0.0
    return 1.0 - cg / (ec50g + cg)


@numba.njit(inline="always")
def _pk_step(y0, y1, y2, y3, k, h):
    """Warfarin's linear PK over `h` by classic Runge-Kutta, y = (S depot, S central, S periph, R central) in mg,
    k = (ka, CL, Q, 1/V1, 1/V2, r_CL, 1/r_V, R/S fraction): y after it (scalars: no allocation)."""
    a0, a1, a2, a3 = _pk_rhs(y0, y1, y2, y3, k)
    b0, b1, b2, b3 = _pk_rhs(y0 + 0.5 * h * a0, y1 + 0.5 * h * a1, y2 + 0.5 * h * a2, y3 + 0.5 * h * a3, k)
    c0, c1, c2, c3 = _pk_rhs(y0 + 0.5 * h * b0, y1 + 0.5 * h * b1, y2 + 0.5 * h * b2, y3 + 0.5 * h * b3, k)
    d0, d1, d2, d3 = _pk_rhs(y0 + h * c0, y1 + h * c1, y2 + h * c2, y3 + h * c3, k)
    return (y0 + h / 6.0 * (a0 + 2.0 * b0 + 2.0 * c0 + d0), y1 + h / 6.0 * (a1 + 2.0 * b1 + 2.0 * c1 + d1),
            y2 + h / 6.0 * (a2 + 2.0 * b2 + 2.0 * c2 + d2), y3 + h / 6.0 * (a3 + 2.0 * b3 + 2.0 * c3 + d3))


@numba.njit
def _pk_maps(k, h, half, full):
    """`_pk_step` over h/2 as a linear map (`half`, 4 x 4: the PK is linear), and over h as two of them (`full`)."""
    for j in range(4):
        half[0, j], half[1, j], half[2, j], half[3, j] = _pk_step(
            1.0 if j == 0 else 0.0, 1.0 if j == 1 else 0.0, 1.0 if j == 2 else 0.0, 1.0 if j == 3 else 0.0, k,
            0.5 * h)
    for i in range(4):
        for j in range(4):
            full[i, j] = (half[i, 0] * half[0, j] + half[i, 1] * half[1, j] + half[i, 2] * half[2, j]
                          + half[i, 3] * half[3, j])


@numba.njit(inline="always")
def _pk_rhs(y0, y1, y2, y3, k):
    ka, cl, q, inv_v1, inv_v2, r_cl, inv_rv, r_per_s = k
    absorb, c, cp = ka * y0, y1 * inv_v1, y2 * inv_v2
    return -absorb, absorb - (cl + q) * c + q * cp, q * c - q * cp, r_per_s * absorb - r_cl * inv_rv * y3


@numba.njit
def _chain_rk4(y, u0, um, u1, k1, k2, h, work):
    """One classic Runge-Kutta substep of the transit chains, the synthesis `u0`, `um`, `u1` at its start, middle
    and end; y updated (`work`: (5, len(y)) scratch)."""
    n = len(y)
    k1s, k2s, k3s, k4s, tmp = work[0], work[1], work[2], work[3], work[4]
    _chains(y, k1s, u0, k1, k2)
    for i in range(n):
        tmp[i] = y[i] + 0.5 * h * k1s[i]
    _chains(tmp, k2s, um, k1, k2)
    for i in range(n):
        tmp[i] = y[i] + 0.5 * h * k2s[i]
    _chains(tmp, k3s, um, k1, k2)
    for i in range(n):
        tmp[i] = y[i] + h * k3s[i]
    _chains(tmp, k4s, u1, k1, k2)
    for i in range(n):
        y[i] += h / 6.0 * (k1s[i] + 2.0 * k2s[i] + 2.0 * k3s[i] + k4s[i])


@numba.njit
def _chain_map(k1, k2, h):
    """`_chain_rk4` as a linear map: y' = step_map @ y + forcing @ (u0, um, u1)."""
    step_map, forcing = np.empty((N1 + 1, N1 + 1)), np.empty((N1 + 1, 3))
    unit, work = np.empty(N1 + 1), np.empty((5, N1 + 1))
    for j in range(N1 + 1):
        unit[:] = 0.0
        unit[j] = 1.0
        _chain_rk4(unit, 0.0, 0.0, 0.0, k1, k2, h, work)
        step_map[:, j] = unit
    for j in range(3):
        unit[:] = 0.0
        _chain_rk4(unit, 1.0 if j == 0 else 0.0, 1.0 if j == 1 else 0.0, 1.0 if j == 2 else 0.0, k1, k2, h, work)
        forcing[:, j] = unit
    return step_map, forcing


@numba.njit(inline="always")
def _chains(y, dy, inflow, k1, k2):
    """The transit chains' derivatives, y: chain1[0..5], chain2 (fractions of normal activity)."""
    dy[0] = k1 * (inflow - y[0])
    for i in range(1, N1):
        dy[i] = k1 * (y[i - 1] - y[i])
    dy[N1] = k2 * (inflow - y[N1])


@numba.njit(cache=True, parallel=True)
def _kernel(wdep, wc1, wc2, wrc, ch1, ch2, mpend, mlag, mdep, mc,
            w_cl, w_v1, w_v2, w_q, w_ka, w_f, w_ec50, w_gamma, w_mtt1, w_mtt2, w_rcl, w_rv,
            m_cl, m_v, m_ka, m_lag, m_ec50, m_emax_hr, m_emax_sbp, m_emax_dbp,
            dose_w, dose_m, clf, first, end, dt, n_sub, s_fraction, r_per_s, r_potency,
            out_wc, out_inr, out_mc, out_hr, out_sbp, out_dbp):
    """Steps [first, end) of the dose and clearance arrays; the outputs written at the same columns."""
    n_p = dose_w.shape[0]
    h = dt / n_sub
    for p in numba.prange(n_p):
        # the PK in two Runge-Kutta half substeps, the transit chains by classic Runge-Kutta on the synthesis
        # these give at the substep's start, middle and end: two exp/log pairs a substep, not four. Both are
        # linear, so their steps are linear maps, found once (the PK's again when the clearance changes)
        dep, cen, per, rcen = wdep[p], wc1[p], wc2[p], wrc[p]
        y = np.empty(N1 + 1)
        for i in range(N1):
            y[i] = ch1[p, i]
        y[N1] = ch2[p]
        gamma = w_gamma[p]
        ec50g = w_ec50[p] ** gamma
        k1 = N1 / w_mtt1[p]
        k2 = 1.0 / w_mtt2[p]
        inv_v1, inv_v2, inv_rv = 1.0 / w_v1[p], 1.0 / w_v2[p], 1.0 / w_rv[p]
        r_eq = r_potency * inv_rv  # R-warfarin's amount to S-equivalent concentration
        u0 = _inflow(cen * inv_v1 + rcen * r_eq, ec50g, gamma)
        step_map, forcing = _chain_map(k1, k2, h)  # lower triangular: applied in place, last row first
        pk_half, pk_full, cl_now = np.empty((4, 4)), np.empty((4, 4)), -1.0  # the PK's maps at clearance factor
        # metoprolol is linear: one substep's exact propagator, the same for every substep of this patient
        mk = m_cl[p] / m_v[p]
        ka = m_ka[p]
        ea, ek = math.exp(-ka * h), math.exp(-mk * h)
        into_central = ka / (mk - ka) * (ea - ek) if abs(ka - mk) > 1e-9 else ka * h * ek
        md, mcc, pend, lag = mdep[p], mc[p], mpend[p], mlag[p]
        for s in range(first, end):
            dep += s_fraction * w_f[p] * dose_w[p, s]
            if dose_m[p, s] > 0.0:
                if pend <= 0.0:
                    lag = m_lag[p]
                pend += dose_m[p, s]  # a second dose inside the lag rides with the first (documented)
            cl = clf[p, s]
            if cl != cl_now:
                _pk_maps((w_ka[p], w_cl[p] * cl, w_q[p], inv_v1, inv_v2, w_rcl[p] * cl, inv_rv, r_per_s), h,
                         pk_half, pk_full)
                cl_now = cl
            for _ in range(n_sub):
                if pend > 0.0 and lag <= 1e-9:
                    md += pend
                    pend = 0.0
                # the R central compartment feeds nothing back, so its column of the maps is (0, 0, 0, r)
                um = _inflow((pk_half[1, 0] * dep + pk_half[1, 1] * cen + pk_half[1, 2] * per) * inv_v1
                             + (pk_half[3, 0] * dep + pk_half[3, 3] * rcen) * r_eq, ec50g, gamma)
                dep, cen, per, rcen = (pk_full[0, 0] * dep,
                                       pk_full[1, 0] * dep + pk_full[1, 1] * cen + pk_full[1, 2] * per,
                                       pk_full[2, 0] * dep + pk_full[2, 1] * cen + pk_full[2, 2] * per,
                                       pk_full[3, 0] * dep + pk_full[3, 3] * rcen)
                u1 = _inflow(cen * inv_v1 + rcen * r_eq, ec50g, gamma)
                # the slow chain feeds on the synthesis alone (its row of the map is zero left of the diagonal)
                y[N1] = step_map[N1, N1] * y[N1] + forcing[N1, 0] * u0 + forcing[N1, 1] * um + forcing[N1, 2] * u1
                for i in range(N1 - 1, -1, -1):
                    acc = forcing[i, 0] * u0 + forcing[i, 1] * um + forcing[i, 2] * u1
                    for j in range(i + 1):
                        acc += step_map[i, j] * y[j]
                    y[i] = acc
                u0 = u1
                # metoprolol: linear, stepped exactly (depot -> central -> out)
                mcc = mcc * ek + md * into_central
                md *= ea
                if pend > 0.0:
                    lag -= h
            out_wc[p, s] = cen * inv_v1
            rem = 1.0 - y[N1 - 1] * y[N1]
            # rem ** INR_EXPONENT as exp(INR_EXPONENT log rem): pow costs twice as much
            out_inr[p, s] = 1.0 + INR_MAX_RISE * (math.exp(INR_EXPONENT * math.log(rem)) if rem > 0.0 else 0.0)
            out_mc[p, s] = conc = mcc / m_v[p]
            out_hr[p, s] = metoprolol.emax_delta(conc, m_emax_hr[p], m_ec50[p])
            out_sbp[p, s] = metoprolol.emax_delta(conc, m_emax_sbp[p], m_ec50[p])
            out_dbp[p, s] = metoprolol.emax_delta(conc, m_emax_dbp[p], m_ec50[p])
        wdep[p], wc1[p], wc2[p], wrc[p] = dep, cen, per, rcen
        for i in range(N1):
            ch1[p, i] = y[i]
        ch2[p] = y[N1]
        mdep[p], mc[p], mpend[p], mlag[p] = md, mcc, pend, lag


def _shaped(name: str, arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape}; expected (n_patients, n_steps) = {shape}")
    return arr


def step_pkpd(state: PkpdState, cohort, dose_warfarin_mg: np.ndarray, dose_metoprolol_mg: np.ndarray,
              cl_factor: np.ndarray, dt_h: float, span: tuple[int, int] | None = None,
              into: Outputs | None = None) -> tuple[PkpdState, Outputs]:
    """Advance every patient by `n_steps` steps of `dt_h` hours. `cohort` needs `.warfarin` and `.metoprolol`
    parameter dicts (a `Cohort`). The input state is not modified. For a chunk stepped in segments: `span`
    (first, end) steps only those columns of the arrays, and `into` (`Outputs.empty` of the arrays' shape)
    takes the outputs at the same columns, so the segments need no slicing and no joining; the outputs returned
    are then the span's views.

    >>> import numpy as np
    >>> from sources.patient.cohort import Cohort
    >>> c, dose = Cohort.typical(["*1/*1"], ["G/G"]), daily_doses(1, 48, 1.0, 5.0)
    >>> whole = step_pkpd(PkpdState.initial(1), c, dose, dose * 20, np.ones((1, 48)), 1.0)[1]
    >>> into = Outputs.empty(1, 48)
    >>> st, _ = step_pkpd(PkpdState.initial(1), c, dose, dose * 20, np.ones((1, 48)), 1.0, span=(0, 30), into=into)
    >>> _ = step_pkpd(st, c, dose, dose * 20, np.ones((1, 48)), 1.0, span=(30, 48), into=into)
    >>> bool(np.array_equal(into.inr, whole.inr) and np.array_equal(into.hr_effect_bpm, whole.hr_effect_bpm))
    True
    """
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
    first, end = span if span is not None else (0, shape[1])
    if not 0 <= first <= end <= shape[1]:
        raise ValueError(f"span {span!r} must lie within the {shape[1]} steps")
    if (dose_w[:, first:end] < 0).any() or (dose_m[:, first:end] < 0).any() or (clf[:, first:end] <= 0).any():
        raise ValueError("doses must be >= 0 mg and cl_factor > 0")
    out = into if into is not None else Outputs.empty(*shape)
    if any(getattr(out, f.name).shape != shape or not getattr(out, f.name).flags.c_contiguous
           for f in fields(out)):
        raise ValueError(f"into's arrays must be C-contiguous of shape {shape}")
    st = state.copy()
    w, m = cohort.warfarin, cohort.metoprolol
    f = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in w.items()}
    g = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in m.items()}
    n_sub = max(1, math.ceil(dt_h / MAX_SUBSTEP_H - 1e-9))
    with numba.parallel_chunksize(PARALLEL_CHUNK_PATIENTS):
        _kernel(st.war_depot_mg, st.war_central_mg, st.war_periph_mg, st.war_r_central_mg, st.chain1, st.chain2,
                st.met_pending_mg, st.met_lag_left_h, st.met_depot_mg, st.met_central_mg,
                f["cl_l_h"], f["v1_l"], f["v2_l"], f["q_l_h"], f["ka_per_h"], f["bioavailability"], f["ec50_mg_l"],
                f["gamma"], f["mtt1_h"], f["mtt2_h"], f["r_cl_l_h"], f["r_v_l"], g["cl_l_h"], g["v_l"], g["ka_per_h"],
                g["lag_h"], g["ec50_mg_l"], g["emax_hr_bpm"], g["emax_sbp_mmhg"], g["emax_dbp_mmhg"],
                dose_w, dose_m, clf, first, end, float(dt_h), n_sub, S_FRACTION, R_FRACTION / S_FRACTION,
                R_POTENCY, *(getattr(out, f.name) for f in fields(out)))
    return st, (out.span(first, end) if span is not None else out)


def daily_doses(n_patients: int, n_steps: int, dt_h: float, dose_mg: float | np.ndarray, hour: float = 18.0,
                interval_h: float = 24.0, t0_h: float = 0.0) -> np.ndarray:
    """A dose array that gives `dose_mg` every `interval_h` at `hour` of the day (steps from `t0_h`): a helper
    for tests and simple scenarios."""
    t = t0_h + dt_h * np.arange(n_steps)
    phase = np.mod(t - hour, interval_h)
    at = (phase < dt_h - 1e-9) | (phase > interval_h - 1e-9)
    return np.where(at[None, :], np.broadcast_to(np.asarray(dose_mg, float).reshape(-1, 1),
                                                 (n_patients, 1)), 0.0)
