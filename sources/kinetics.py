"""CHO fed-batch kinetics and reactor mass balances (one reactor, compiled with numba).

The cell model follows Xing et al. 2010 (Biotechnol. Prog. 26:208, "Modeling kinetics of a large-scale
fed-batch CHO cell culture by Markov chain Monte Carlo"): Monod growth on glucose and glutamine, lactate and
ammonia inhibition, lactate/ammonia driven death, glutamine maintenance and spontaneous degradation. Additions
that the paper lacks, each named where it is used: a lactate shift (logistic switch on glucose times growth),
starvation death, temperature and osmolality effects, specific productivity that rises after a temperature
shift, host-cell protein from secretion plus lysis, a bicarbonate/CO2 pH model, oxygen transfer and a
bacterial contaminant.

`derivatives` is the single source of truth for the physics: the vectorised fleet integrator
(`sources.reactor`) and the per-reactor `solve_ivp` baseline (`biopilot bench simulate`) both call it.
Time is in hours inside the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numba import njit

# ---- state vector -------------------------------------------------------------------------------------
S_XV, S_XD, S_GLC, S_GLN, S_LAC, S_AMM, S_TITER, S_HCP, S_OSM_SALTS, S_VOL, S_DO, S_DCO2, S_HCO3, S_TEMP, \
    S_BACT, S_FEED_ML, S_BASE_ML, S_QP_ADAPT, S_AGE_H, S_TEMP_ACCLIM = range(20)
N_STATE = 20
STATE_NAMES = (
    "vcd_e6_per_ml", "dead_e6_per_ml", "glucose_mm", "glutamine_mm", "lactate_mm", "ammonia_mm", "titer_g_l",
    "hcp_ng_ml", "osm_salts_mosm_kg", "volume_l", "do_mm", "dco2_mm", "hco3_mm", "temp_c", "bacteria_e6_per_ml",
    "feed_ml", "base_ml", "qp_adapt", "culture_age_h", "temp_acclimated_c",
)

# ---- inputs from the control layer (per reactor, per step) --------------------------------------------
U_AGIT, U_AIR, U_O2, U_CO2, U_FEED_L_H, U_BASE_L_H, U_TEMP_TARGET, U_KLA_FACTOR = range(8)
N_INPUT = 8

# ---- fluxes reported back for the off-gas sensors ------------------------------------------------------
F_OUR, F_CER, F_MU = range(3)
N_FLUX = 3

GLUCOSE_G_PER_MMOL = 180.16 / 1000.0
LACTATE_G_PER_MMOL = 90.08 / 1000.0


@dataclass(frozen=True)
class KineticParams:
    """Model parameters. Defaults: Xing et al. 2010 (cell kinetics), REFERENCES.md (ranges); the ones the paper
    does not have are calibrated so the `normal` scenario lands in the typical industrial ranges."""

    mu_max_1_h: float = 0.06  # Xing 2010 fit 0.029 (a 2000s clone); calibrated for a modern high-density clone
    mud_max_1_h: float = 0.0015  # Xing 2010 fit 0.016; calibrated down with the extra death terms below
    mud_amm_1_h: float = 0.002  # calibrated: ammonia-only death, keeps viability falling after the lactate shift
    kd_amm_late_mm: float = 14.0  # calibrated: half-effect ammonia of that death (Hill 4)
    mud_age_1_h: float = 0.005  # calibrated: apoptosis with culture age (Hill 4) ...
    age_half_h: float = 250.0  # ... half-effect age
    k_glc_mm: float = 0.084  # Xing 2010
    k_gln_mm: float = 0.047  # Xing 2010
    ki_lac_mm: float = 60.0  # Xing 2010 fit 43; calibrated (lactate-tolerant clone)
    ki_amm_mm: float = 10.0  # Xing 2010 fit 6.51; calibrated (ammonia-tolerant clone)
    kd_lac_mm: float = 45.8  # Xing 2010
    kd_amm_mm: float = 6.51  # Xing 2010
    y_x_glc_cells_mmol: float = 3.0e8  # Xing 2010 fit 1.69e8; calibrated to 2-5 pmol/cell/day uptake
    y_x_gln_cells_mmol: float = 1.6e9  # Xing 2010 fit 9.74e8; calibrated
    y_lac_glc: float = 1.23  # Xing 2010, mol/mol
    y_amm_gln: float = 0.67  # Xing 2010, mol/mol
    m_glc_mmol_cell_h: float = 6.92e-11  # Xing 2010
    a1_mmol_cell_h: float = 3.2e-12  # Xing 2010
    a2_mm: float = 2.1  # Xing 2010
    d_gln_1_h: float = 7.2e-3  # Xing 2010
    q_o2_mmol_cell_h: float = 3.2e-10  # REFERENCES.md
    # calibrated additions
    k_glc_uptake_mm: float = 0.5  # uptake saturation so glucose cannot go negative
    lac_switch_glc_mm: float = 8.0  # lactate shift: logistic switch on glucose (centre) ...
    lac_switch_k_1_mm: float = 0.6  # ... and steepness
    lac_switch_mu_1_h: float = 0.015  # ... times growth: production while growing, consumption when not
    q_lac_max_mmol_cell_h: float = 6e-11  # lactate consumption capacity
    lac_overflow_glc_mm: float = 70.0  # glucose above which lactate keeps being produced (overflow)
    k_lac_uptake_mm: float = 2.0
    starve_death_1_h: float = 0.02  # death when glucose or glutamine is exhausted
    k_starve_mm: float = 0.3
    lysis_1_h: float = 0.004  # dead-cell lysis (releases HCP)
    temp_opt_c: float = 36.8
    temp_width_c: float = 2.5  # growth falls as exp(-((T - opt)/width)^2): near-arrest at 33 C
    heat_death_1_h_c: float = 0.03  # extra death per degree above 38.5 C
    osm_inhibit_mosm_kg: float = 470.0  # osmolality where growth halves
    k_do_mm: float = 0.004  # O2 half-saturation for respiration
    qp_pg_cell_day: float = 16.0  # specific productivity at 37 C
    qp_shift_gain: float = 1.1  # relative qP rise at full temperature shift (32-34 C)
    qp_adapt_tau_h: float = 24.0
    hcp_secretion_pg_cell_day: float = 0.8
    hcp_per_lysed_cell_pg: float = 6.0
    rq: float = 0.95  # respiratory quotient
    bact_mu_1_h: float = 0.55  # contaminant (bacteria): doubling ~1.3 h
    bact_q_glc_mm_h: float = 4.0  # glucose uptake per e6/mL of contaminant
    bact_our_per_glc: float = 3.0  # mol O2 per mol glucose (partly oxidative)
    bact_acid_per_glc: float = 1.2  # organic acids per glucose
    bact_toxicity_1_h: float = 0.05  # CHO death caused by the contaminant (saturating)
    # reactor and media
    kla_ref_1_h: float = 6.0  # kLa at agit_ref and gas_ref (stirred tank: 5-20 1/h)
    kla_agit_exp: float = 1.4
    kla_gas_exp: float = 0.5
    agit_ref_rpm: float = 120.0
    gas_ref_sccm: float = 60.0
    kla_co2_ratio: float = 0.85
    do_sat_air_mm: float = 0.2  # REFERENCES.md: ~0.2 mM with air at 37 C
    co2_sat_pure_mm: float = 24.0  # CO2 solubility at 1 atm, 37 C
    pka_co2: float = 6.1
    temp_tau_h: float = 0.25  # jacket response
    temp_acclim_tau_h: float = 12.0  # cells acclimate to a new temperature within about a day
    feed_glc_mm: float = 666.0  # feed composition (overridden by the scenario's [feed])
    feed_gln_mm: float = 45.0
    feed_osm_salts_mosm_kg: float = 500.0
    base_hco3_mm: float = 1000.0  # 1 M NaHCO3
    base_osm_mosm_kg: float = 2000.0


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(KineticParams))
N_PARAM = len(PARAM_NAMES)
# module constants so numba folds the indices at compile time
(P_MU_MAX, P_MUD_MAX, P_MUD_AMM, P_KD_AMM_LATE, P_MUD_AGE, P_AGE_HALF, P_K_GLC, P_K_GLN, P_KI_LAC, P_KI_AMM, P_KD_LAC, P_KD_AMM, P_Y_X_GLC, P_Y_X_GLN, P_Y_LAC_GLC,
 P_Y_AMM_GLN, P_M_GLC, P_A1, P_A2, P_D_GLN, P_Q_O2, P_K_GLC_UP, P_LAC_SW_GLC, P_LAC_SW_K, P_LAC_SW_MU, P_Q_LAC_MAX,
 P_LAC_OVERFLOW, P_K_LAC_UP, P_STARVE, P_K_STARVE, P_LYSIS, P_T_OPT, P_T_WIDTH, P_HEAT_DEATH, P_OSM_INHIB, P_K_DO, P_QP,
 P_QP_GAIN, P_QP_TAU, P_HCP_SEC, P_HCP_LYS, P_RQ, P_BACT_MU, P_BACT_QGLC, P_BACT_OUR, P_BACT_ACID, P_BACT_TOX,
 P_KLA_REF, P_KLA_AGIT_EXP, P_KLA_GAS_EXP, P_AGIT_REF, P_GAS_REF, P_KLA_CO2, P_DO_SAT, P_CO2_SAT, P_PKA,
 P_TEMP_TAU, P_TEMP_ACCLIM_TAU, P_FEED_GLC, P_FEED_GLN, P_FEED_OSM, P_BASE_HCO3, P_BASE_OSM) = range(N_PARAM)


def param_vector(params: KineticParams) -> np.ndarray:
    return np.array([getattr(params, n) for n in PARAM_NAMES], dtype=np.float64)


@njit(cache=True, inline="always")
def kla_1_h(p: np.ndarray, agit_rpm: float, gas_sccm: float, factor: float) -> float:
    """Volumetric O2 transfer coefficient from agitation and total sparge (van 't Riet-type power law)."""
    gas = max(gas_sccm, 1.0)
    return p[P_KLA_REF] * (agit_rpm / p[P_AGIT_REF]) ** p[P_KLA_AGIT_EXP] * (gas / p[P_GAS_REF]) ** p[
        P_KLA_GAS_EXP] * factor


@njit(cache=True, inline="always")
def o2_saturation_mm(p: np.ndarray, air: float, o2: float, co2: float) -> float:
    total = air + o2 + co2
    if total <= 1e-9:
        return p[P_DO_SAT]
    y_o2 = (0.2095 * air + o2) / total
    return p[P_DO_SAT] * y_o2 / 0.2095


@njit(cache=True, inline="always")
def ph_of(p: np.ndarray, hco3_mm: float, dco2_mm: float) -> float:
    """Henderson-Hasselbalch over the bicarbonate buffer. Once acids have used up the bicarbonate, the media's
    other buffers (phosphate, amino acids) hold the pH in the 5-6 range: modelled as a 0.5 mM floor."""
    return p[P_PKA] + math.log10(max(hco3_mm, 0.5) / max(dco2_mm, 0.05))


@njit(cache=True)
def derivatives(y: np.ndarray, u: np.ndarray, p: np.ndarray, dydt: np.ndarray, flux: np.ndarray) -> None:
    """Time derivatives (per hour) of the state `y` under inputs `u`; also fills `flux` (OUR, CER, mu)."""
    xv = max(y[S_XV], 0.0)
    glc = max(y[S_GLC], 0.0)
    gln = max(y[S_GLN], 0.0)
    lac = max(y[S_LAC], 0.0)
    amm = max(y[S_AMM], 0.0)
    vol = max(y[S_VOL], 1e-6)
    do = max(y[S_DO], 0.0)
    temp = y[S_TEMP]
    bact = max(y[S_BACT], 0.0)
    cells_l = xv * 1e9  # e6 cells/mL -> cells/L

    osm = y[S_OSM_SALTS] + glc + gln + lac + amm
    f_temp_growth = math.exp(-((temp - p[P_T_OPT]) / p[P_T_WIDTH]) ** 2)
    f_temp_met = 2.0 ** ((temp - 37.0) / 10.0)  # Q10 = 2 for respiration and maintenance
    f_do = do / (p[P_K_DO] + do)
    f_osm = 1.0 / (1.0 + math.exp((osm - p[P_OSM_INHIB]) / 20.0))

    mu = (p[P_MU_MAX] * glc / (p[P_K_GLC] + glc) * gln / (p[P_K_GLN] + gln)
          * p[P_KI_LAC] / (p[P_KI_LAC] + lac) * p[P_KI_AMM] / (p[P_KI_AMM] + amm)
          * f_temp_growth * f_do * f_osm)
    ks2 = p[P_K_STARVE] * p[P_K_STARVE]
    # Hill-2, sharp at depletion; glutamine starvation only stops growth (CHO can synthesise glutamine)
    starve = p[P_STARVE] * ks2 / (ks2 + glc * glc)
    # heat: above 38.5 C, and a heat shock when the broth is well above what the cells are acclimated to
    heat = p[P_HEAT_DEATH] * (max(0.0, temp - 38.5) + max(0.0, temp - y[S_TEMP_ACCLIM] - 1.0))
    tox = p[P_BACT_TOX] * bact / (bact + 1.0)
    # Xing's death vanishes once lactate is consumed; ammonia toxicity on its own keeps the late decline
    amm_tox = amm / (p[P_KD_AMM] + amm)
    amm_late = amm**4 / (p[P_KD_AMM_LATE] ** 4 + amm**4)  # steep: matters once ammonia builds up late
    age = (y[S_AGE_H] / p[P_AGE_HALF]) ** 4
    ageing = p[P_MUD_AGE] * age / (1.0 + age)  # apoptosis that builds up with culture age
    mud = (p[P_MUD_MAX] * lac / (p[P_KD_LAC] + lac) * amm_tox + p[P_MUD_AMM] * amm_late + ageing + starve
           + heat + tox)

    # uptake and production (mmol/cell/h)
    q_glc = (p[P_M_GLC] * f_temp_met + mu / p[P_Y_X_GLC]) * glc / (p[P_K_GLC_UP] + glc)
    q_gln = (p[P_A1] * gln / (p[P_A2] + gln) + mu / p[P_Y_X_GLN]) * gln / (0.05 + gln)
    # lactate shift: produce while glucose is plentiful and cells grow, consume otherwise; hypoxia adds lactate
    growing = mu / (mu + p[P_LAC_SW_MU])
    overflow = glc**4 / (p[P_LAC_OVERFLOW] ** 4 + glc**4)  # excess glucose keeps glycolysis overflowing
    sigma = (1.0 / (1.0 + math.exp(-p[P_LAC_SW_K] * (glc - p[P_LAC_SW_GLC])))) * (
        growing + (1.0 - growing) * overflow)
    sigma = min(1.0, sigma + 0.6 * (1.0 - f_do))
    q_lac = sigma * p[P_Y_LAC_GLC] * q_glc - (1.0 - sigma) * p[P_Q_LAC_MAX] * lac / (p[P_K_LAC_UP] + lac)
    q_o2 = p[P_Q_O2] * f_temp_met * f_do * (0.35 + 0.65 * q_glc / (q_glc + 5e-11))

    # contaminant
    bact_glc = p[P_BACT_QGLC] * bact * glc / (glc + 1.0)  # mM/h
    mu_b = p[P_BACT_MU] * glc / (glc + 1.0) * (0.3 + 0.7 * f_do)

    d_feed = u[U_FEED_L_H] / vol
    d_base = u[U_BASE_L_H] / vol
    dil = d_feed + d_base

    our = q_o2 * cells_l + p[P_BACT_OUR] * bact_glc * f_do
    cer_bio = p[P_RQ] * q_o2 * cells_l + p[P_BACT_OUR] * bact_glc * f_do
    acid = q_lac * cells_l + p[P_BACT_ACID] * bact_glc  # mM/h of acid that titrates bicarbonate
    amm_prod = p[P_Y_AMM_GLN] * q_gln * cells_l + p[P_D_GLN] * gln

    dydt[S_XV] = (mu - mud) * xv - dil * xv
    dydt[S_XD] = mud * xv - p[P_LYSIS] * y[S_XD] - dil * y[S_XD]
    dydt[S_GLC] = -q_glc * cells_l - bact_glc + d_feed * (p[P_FEED_GLC] - glc) - d_base * glc
    dydt[S_GLN] = -q_gln * cells_l - p[P_D_GLN] * gln + d_feed * (p[P_FEED_GLN] - gln) - d_base * gln
    dydt[S_LAC] = q_lac * cells_l - dil * lac
    dydt[S_AMM] = amm_prod - dil * amm
    qp_g_cell_h = p[P_QP] * (1.0 + p[P_QP_GAIN] * y[S_QP_ADAPT]) * 1e-12 / 24.0
    degrade = 0.02 * bact / (bact + 1.0)  # proteases of the contaminant stall the titer
    dydt[S_TITER] = qp_g_cell_h * cells_l * f_do - degrade * y[S_TITER] - dil * y[S_TITER]
    dydt[S_HCP] = (p[P_HCP_SEC] / 24.0 * xv * 1e3 + p[P_HCP_LYS] * p[P_LYSIS] * y[S_XD] * 1e3) - dil * y[S_HCP]
    dydt[S_OSM_SALTS] = d_feed * (p[P_FEED_OSM] - y[S_OSM_SALTS]) + d_base * (p[P_BASE_OSM] - y[S_OSM_SALTS])
    dydt[S_VOL] = u[U_FEED_L_H] + u[U_BASE_L_H]

    kla = kla_1_h(p, u[U_AGIT], u[U_AIR] + u[U_O2] + u[U_CO2], u[U_KLA_FACTOR])
    c_star = o2_saturation_mm(p, u[U_AIR], u[U_O2], u[U_CO2])
    dydt[S_DO] = kla * (c_star - do) - our - dil * do
    total_gas = u[U_AIR] + u[U_O2] + u[U_CO2]
    co2_star = p[P_CO2_SAT] * (u[U_CO2] / total_gas if total_gas > 1e-9 else 0.0004)
    kla_co2 = p[P_KLA_CO2] * kla
    dydt[S_DCO2] = cer_bio + acid - amm_prod - kla_co2 * (y[S_DCO2] - co2_star) - dil * y[S_DCO2]
    # acids consume bicarbonate (-> CO2); ammonia production and base addition regenerate it
    dydt[S_HCO3] = -acid + amm_prod + d_base * (p[P_BASE_HCO3] - y[S_HCO3]) - d_feed * y[S_HCO3]
    dydt[S_TEMP] = (u[U_TEMP_TARGET] - temp) / p[P_TEMP_TAU]
    dydt[S_BACT] = mu_b * bact - dil * bact
    dydt[S_FEED_ML] = u[U_FEED_L_H] * 1000.0
    dydt[S_BASE_ML] = u[U_BASE_L_H] * 1000.0
    shift_target = min(1.0, max(0.0, (p[P_T_OPT] - temp) / 3.5))
    dydt[S_QP_ADAPT] = (shift_target - y[S_QP_ADAPT]) / p[P_QP_TAU]
    dydt[S_AGE_H] = 1.0
    dydt[S_TEMP_ACCLIM] = (temp - y[S_TEMP_ACCLIM]) / p[P_TEMP_ACCLIM_TAU]

    flux[F_OUR] = our
    flux[F_CER] = cer_bio
    flux[F_MU] = mu
