"""Control loops, physical faults and the fleet integrator (numba, parallel over reactors).

Every reactor advances tick by tick: the digital controllers act once per tick on the true state (as a
well-calibrated redundant probe would; sensor faults act only on the reported readings), then the physics is
integrated with explicit Euler sub-steps of at most `MAX_SUBSTEP_S`. The loop over reactors is `prange`d, so
a fleet of 1,000 reactors costs one compiled pass per tick instead of 1,000 Python calls.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from sources.kinetics import (
    F_CER,
    F_OUR,
    N_FLUX,
    N_INPUT,
    N_STATE,
    P_DO_SAT,
    S_BACT,
    S_BASE_ML,
    S_DCO2,
    S_DO,
    S_FEED_ML,
    S_HCO3,
    S_QP_ADAPT,
    S_TEMP,
    S_VOL,
    S_XD,
    S_XV,
    U_AGIT,
    U_AIR,
    U_BASE_L_H,
    U_CO2,
    U_FEED_L_H,
    U_KLA_FACTOR,
    U_O2,
    U_TEMP_TARGET,
    derivatives,
    ph_of,
)

MAX_SUBSTEP_S = 20.0

# ---- setpoints and controller tuning (per reactor, changeable live) -----------------------------------
CONTROL_NAMES = (
    "do_setpoint_pct", "ph_setpoint", "ph_deadband", "temp_setpoint_c", "temp_shift_c", "temp_shift_h",
    "agitation_min_rpm", "agitation_max_rpm", "air_min_sccm", "air_max_sccm", "o2_max_sccm", "co2_max_sccm",
    "base_max_ml_min", "feed_pump_ml_min", "do_kp", "do_ki_1_h", "ph_kp", "ph_ki_1_h", "sample_ml",
    "continuous_feed_ml_h", "continuous_feed_start_h", "continuous_feed_end_h",
)
N_CONTROL = len(CONTROL_NAMES)
C = {name: i for i, name in enumerate(CONTROL_NAMES)}
(C_DO_SP, C_PH_SP, C_PH_DB, C_TEMP_SP, C_TEMP_SHIFT, C_SHIFT_H, C_AGIT_MIN, C_AGIT_MAX, C_AIR_MIN, C_AIR_MAX,
 C_O2_MAX, C_CO2_MAX, C_BASE_MAX, C_FEED_PUMP, C_DO_KP, C_DO_KI, C_PH_KP, C_PH_KI, C_SAMPLE_ML, C_CONT_FEED,
 C_CONT_START, C_CONT_END) = range(N_CONTROL)

# ---- controller memory --------------------------------------------------------------------------------
K_DO_INT, K_PH_INT, K_AGIT, K_AIR, K_O2, K_CO2, K_BASE_L_H, K_FEED_L_H, K_TEMP_TARGET = range(9)
N_MEMORY = 9

# ---- fault archetypes (docs/MODEL.md, "Faults"); the measurement-layer ones are in measurement.py ----
FAULT_NAMES = (
    "overfeed", "underfeed", "do_limitation", "ph_excursion", "temperature_spike", "sensor_drift",
    "sensor_stuck", "sensor_dropout", "contamination",
)
N_FAULT = len(FAULT_NAMES)
FLT_OVERFEED, FLT_UNDERFEED, FLT_DO_LIMIT, FLT_PH_EXC, FLT_TEMP_SPIKE, FLT_DRIFT, FLT_STUCK, FLT_DROPOUT, \
    FLT_CONTAM = range(N_FAULT)

# ---- true (noise-free) online signals, in the order of the ticks schema -------------------------------
SIGNAL_NAMES = (
    "do_pct", "ph", "temp_c", "agitation_rpm", "air_sccm", "o2_sccm", "co2_sccm", "base_ml", "feed_ml",
    "volume_l", "our_mmol_l_h", "cer_mmol_l_h", "capacitance_pf_cm",
)
N_SIGNAL = len(SIGNAL_NAMES)
(O_DO, O_PH, O_TEMP, O_AGIT, O_AIR, O_O2, O_CO2, O_BASE, O_FEED, O_VOL, O_OUR, O_CER, O_CAP) = range(N_SIGNAL)


@njit(cache=True, inline="always")
def _active(f: np.ndarray, r: int, k: int, t_h: float) -> bool:
    return f[r, k, 0] <= t_h < f[r, k, 1]


@njit(cache=True)
def _control(r: int, y: np.ndarray, c: np.ndarray, mem: np.ndarray, p: np.ndarray, bolus: np.ndarray,
             faults: np.ndarray, t_h: float, dt_h: float, u: np.ndarray) -> None:
    """One digital control period: DO cascade, split-range pH, temperature, feed pump."""
    # DO cascade: one PI output in [0, 3] drives agitation, then air, then O2 (anti-windup by clamping)
    do_pct = y[S_DO] / p[P_DO_SAT] * 100.0
    err = (c[r, C_DO_SP] - do_pct) / max(c[r, C_DO_SP], 1.0)
    mem[r, K_DO_INT] = min(3.0, max(0.0, mem[r, K_DO_INT] + c[r, C_DO_KI] * err * dt_h))
    out = min(3.0, max(0.0, c[r, C_DO_KP] * err + mem[r, K_DO_INT]))
    agit = c[r, C_AGIT_MIN] + min(out, 1.0) * (c[r, C_AGIT_MAX] - c[r, C_AGIT_MIN])
    air = c[r, C_AIR_MIN] + min(max(out - 1.0, 0.0), 1.0) * (c[r, C_AIR_MAX] - c[r, C_AIR_MIN])
    o2_max = c[r, C_O2_MAX]
    kla_factor = 1.0
    if _active(faults, r, FLT_DO_LIMIT, t_h):  # sparger fouling + O2 supply loss
        m = faults[r, FLT_DO_LIMIT, 2]
        o2_max *= max(0.0, 1.0 - m)
        kla_factor = max(0.05, 1.0 - 0.85 * m)
    o2 = min(max(out - 2.0, 0.0), 1.0) * c[r, C_O2_MAX]
    o2 = min(o2, o2_max)

    # pH: split range on one PI output; > 0 opens CO2, < 0 runs the base pump; dead-band around setpoint
    ph = ph_of(p, y[S_HCO3], y[S_DCO2])
    sp = c[r, C_PH_SP]
    db = c[r, C_PH_DB]
    e = 0.0
    if ph > sp + db:
        e = ph - (sp + db)
    elif ph < sp - db:
        e = ph - (sp - db)
    mem[r, K_PH_INT] = min(1.0, max(-1.0, mem[r, K_PH_INT] + c[r, C_PH_KI] * e * dt_h))
    ph_out = min(1.0, max(-1.0, c[r, C_PH_KP] * e + mem[r, K_PH_INT]))
    co2 = max(ph_out, 0.0) * c[r, C_CO2_MAX]
    base_l_h = max(-ph_out, 0.0) * c[r, C_BASE_MAX] * 0.06  # mL/min -> L/h
    if _active(faults, r, FLT_PH_EXC, t_h):  # CO2 mass-flow valve stuck open
        co2 = max(co2, faults[r, FLT_PH_EXC, 2] * c[r, C_CO2_MAX])

    # temperature with an optional shift; a jacket failure drives it above the setpoint
    target = c[r, C_TEMP_SHIFT] if t_h >= c[r, C_SHIFT_H] else c[r, C_TEMP_SP]
    if _active(faults, r, FLT_TEMP_SPIKE, t_h):
        target += faults[r, FLT_TEMP_SPIKE, 2]

    # feed pump: scheduled boluses at pump speed plus an optional continuous profile
    pump_l_h = c[r, C_FEED_PUMP] * 0.06
    feed_l_h = 0.0
    for k in range(bolus.shape[1]):
        start = bolus[r, k, 0]
        vol_l = bolus[r, k, 1] / 1000.0
        if vol_l > 0.0 and start <= t_h < start + vol_l / pump_l_h:
            feed_l_h += pump_l_h
    if c[r, C_CONT_START] <= t_h < c[r, C_CONT_END]:
        feed_l_h += c[r, C_CONT_FEED] / 1000.0
    if _active(faults, r, FLT_UNDERFEED, t_h):  # pump omission / partial delivery
        feed_l_h *= max(0.0, 1.0 - faults[r, FLT_UNDERFEED, 2])
    if _active(faults, r, FLT_OVERFEED, t_h):  # uncontrolled pump: `magnitude` extra daily feeds in the window
        window_h = max(faults[r, FLT_OVERFEED, 1] - faults[r, FLT_OVERFEED, 0], 1e-3)
        daily_l = 0.0
        for k in range(bolus.shape[1]):
            daily_l = max(daily_l, bolus[r, k, 1] / 1000.0)
        daily_l = max(daily_l, c[r, C_CONT_FEED] * 24.0 / 1000.0)
        feed_l_h += faults[r, FLT_OVERFEED, 2] * daily_l / window_h
    if _active(faults, r, FLT_CONTAM, t_h) and y[S_BACT] <= 0.0:
        y[S_BACT] = 1e-3 * faults[r, FLT_CONTAM, 2]

    mem[r, K_AGIT] = agit
    mem[r, K_AIR] = air
    mem[r, K_O2] = o2
    mem[r, K_CO2] = co2
    mem[r, K_BASE_L_H] = base_l_h
    mem[r, K_FEED_L_H] = feed_l_h
    mem[r, K_TEMP_TARGET] = target
    u[U_AGIT] = agit
    u[U_AIR] = air
    u[U_O2] = o2
    u[U_CO2] = co2
    u[U_FEED_L_H] = feed_l_h
    u[U_BASE_L_H] = base_l_h
    u[U_TEMP_TARGET] = target
    u[U_KLA_FACTOR] = kla_factor


@njit(cache=True, inline="always")
def _clamp_state(y: np.ndarray) -> None:
    for i in range(y.shape[0]):
        if i != S_TEMP and y[i] < 0.0:
            y[i] = 0.0


@njit(cache=True, parallel=True, nogil=True)
def advance_fleet(y: np.ndarray, mem: np.ndarray, p: np.ndarray, c: np.ndarray, bolus: np.ndarray,
                  faults: np.ndarray, t_h: np.ndarray, seq: np.ndarray, dt_s: float, n_ticks: int,
                  sample_every: int, sample_phase: int, signals: np.ndarray, samples: np.ndarray,
                  n_samples: np.ndarray) -> None:
    """Advance every reactor by `n_ticks` ticks of `dt_s` seconds.

    y[r, N_STATE], mem[r, N_MEMORY], p[r, N_PARAM], c[r, N_CONTROL], bolus[r, K, (start_h, ml)],
    faults[r, N_FAULT, (start_h, end_h, magnitude)], t_h[r] (hours since the run began), seq[r] (next tick
    number). Writes signals[tick, r, N_SIGNAL] (true values) and, at every `sample_every`-th tick
    (offset `sample_phase`), a row of [seq, state...] into samples[r, j, :]; the volume drawn for the sample
    leaves the reactor. Advances t_h and seq in place.
    """
    n_r = y.shape[0]
    n_sub = max(1, int(math.ceil(dt_s / MAX_SUBSTEP_S)))
    dt_h = dt_s / 3600.0
    h = dt_h / n_sub
    for r in prange(n_r):
        u = np.zeros(N_INPUT)
        dydt = np.zeros(N_STATE)
        flux = np.zeros(N_FLUX)
        yr = y[r]
        n_samples[r] = 0
        for i in range(n_ticks):
            if seq[r] % sample_every == sample_phase:
                j = n_samples[r]
                samples[r, j, 0] = seq[r]
                for k in range(N_STATE):
                    samples[r, j, k + 1] = yr[k]
                n_samples[r] = j + 1
                yr[S_VOL] = max(yr[S_VOL] - c[r, C_SAMPLE_ML] / 1000.0, 1e-3)
            _control(r, yr, c, mem, p[r], bolus, faults, t_h[r], dt_h, u)
            for _ in range(n_sub):
                derivatives(yr, u, p[r], dydt, flux)
                for k in range(N_STATE):
                    yr[k] += h * dydt[k]
                _clamp_state(yr)
            t_h[r] += dt_h
            seq[r] += 1
            out = signals[i, r]
            out[O_DO] = yr[S_DO] / p[r, P_DO_SAT] * 100.0
            out[O_PH] = ph_of(p[r], yr[S_HCO3], yr[S_DCO2])
            out[O_TEMP] = yr[S_TEMP]
            out[O_AGIT] = u[U_AGIT]
            out[O_AIR] = u[U_AIR]
            out[O_O2] = u[U_O2]
            out[O_CO2] = u[U_CO2]
            out[O_BASE] = yr[S_BASE_ML]
            out[O_FEED] = yr[S_FEED_ML]
            out[O_VOL] = yr[S_VOL]
            out[O_OUR] = flux[F_OUR]
            out[O_CER] = flux[F_CER]
            # capacitance follows viable biovolume; cells swell after the temperature shift
            out[O_CAP] = 0.85 * yr[S_XV] * (1.0 + 0.25 * yr[S_QP_ADAPT]) + 0.02 * yr[S_XD]
