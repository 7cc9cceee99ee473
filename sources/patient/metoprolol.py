"""Metoprolol's population model: one compartment with first-order absorption after a lag, apparent clearance
(CL/F) set by sex and the CYP2D6 metaboliser phenotype, and an Emax effect of the concentration on heart rate
and blood pressure (beta-1 blockade lowers both). Vectorised over patients.

CL/F and ka are those of an elderly population PK study; the phenotype factors make a poor metaboliser's CL/F
about 5.9x lower and half-life about 2.3x longer than a normal metaboliser's; the Emax model's EC50 is
calibrated so poor metabolisers end 3-8.5 bpm slower than normal ones at 100 mg/day (docs/MODEL-PATIENT.md,
"Metoprolol", cites each constant and says which we chose).

>>> import numpy as np
>>> p = typical_params(sex=np.array(["M", "M"]), cyp2d6=np.array(["NM", "PM"]))
>>> np.round(p["cl_l_h"], 1).tolist(), np.round(half_life_h(p), 1).tolist()
([105.0, 17.8], [3.5, 8.0])
>>> effect = hr_effect_bpm(average_concentration(p, 100.0), p)
>>> bool(3.0 < effect[0] - effect[1] < 8.5)  # the PM's heart rate is lower: its effect more negative
True
"""

from __future__ import annotations

import numba
import numpy as np

from sources.patient.genetics import CYP2D6_PHENOTYPES

CL_F_MALE_L_PER_H = 105.0  # CL/F of a normal metaboliser, men
CL_F_FEMALE_L_PER_H = 59.0  # and women
KA_PER_H = 0.235
LAG_H = 0.47
HALF_LIFE_NM_H = 3.5  # sets V/F for normal metabolisers (terminal half-life 3-4 h)
# CL/F relative to a normal metaboliser, and the half-life relative to one (PM: CL/F 5.9x lower, t1/2 2.3x)
CYP2D6_CL_FACTOR = {"PM": 1.0 / 5.9, "IM": 0.5, "NM": 1.0, "UM": 1.6}
CYP2D6_HALF_LIFE_FACTOR = {"PM": 2.3, "IM": 1.3, "NM": 1.0, "UM": 0.85}
# Emax model: delta = -emax * C / (EC50 + C); the same EC50 for heart rate and blood pressure
EMAX_HR_BPM = 20.0
EMAX_SBP_MMHG = 14.0
EMAX_DBP_MMHG = 9.0
EC50_MG_PER_L = 0.025
# between-patient variability, CVs of log-normal parameters
BPV_CV = {"cl": 0.40, "v": 0.25, "ka": 0.30, "ec50": 0.40}


def _check(values: np.ndarray, allowed: tuple[str, ...], what: str) -> None:
    unknown = sorted(set(np.asarray(values).tolist()) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; allowed: {', '.join(allowed)}")


def typical_params(sex: np.ndarray, cyp2d6: np.ndarray) -> dict[str, np.ndarray]:
    """The population's typical parameters for each patient's sex ("M"/"F") and CYP2D6 phenotype."""
    sex, cyp2d6 = np.asarray(sex), np.asarray(cyp2d6)
    _check(sex, ("M", "F"), "sex")
    _check(cyp2d6, CYP2D6_PHENOTYPES, "CYP2D6 phenotype")
    n = len(sex)
    cl_nm = np.where(sex == "M", CL_F_MALE_L_PER_H, CL_F_FEMALE_L_PER_H)
    cl_factor = np.array([CYP2D6_CL_FACTOR[p] for p in cyp2d6])
    t_half = HALF_LIFE_NM_H * np.array([CYP2D6_HALF_LIFE_FACTOR[p] for p in cyp2d6])
    cl = cl_nm * cl_factor
    return {
        "cl_l_h": cl,
        # V/F = CL/F t1/2 / ln 2: a poor metaboliser's higher F shrinks V/F too (so t1/2 rises less than CL falls)
        "v_l": cl * t_half / np.log(2.0),
        "ka_per_h": np.full(n, KA_PER_H),
        "lag_h": np.full(n, LAG_H),
        "ec50_mg_l": np.full(n, EC50_MG_PER_L),
        "emax_hr_bpm": np.full(n, EMAX_HR_BPM),
        "emax_sbp_mmhg": np.full(n, EMAX_SBP_MMHG),
        "emax_dbp_mmhg": np.full(n, EMAX_DBP_MMHG),
    }


def individual_params(sex: np.ndarray, cyp2d6: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Typical parameters times log-normal between-patient variability (`BPV_CV`)."""
    params = typical_params(sex, cyp2d6)
    n = len(params["cl_l_h"])
    for short, cv in BPV_CV.items():
        key = next(k for k in params if k.startswith(short + "_"))
        params[key] = params[key] * np.exp(rng.normal(0.0, np.sqrt(np.log1p(cv * cv)), n))
    return params


def half_life_h(params: dict[str, np.ndarray]) -> np.ndarray:
    return np.log(2.0) * params["v_l"] / params["cl_l_h"]


def average_concentration(params: dict[str, np.ndarray], daily_dose_mg: float | np.ndarray) -> np.ndarray:
    """The average steady-state concentration (mg/L) on a daily dose (CL is already apparent, CL/F)."""
    return np.asarray(daily_dose_mg, float) / 24.0 / params["cl_l_h"]


@numba.vectorize(["float64(float64, float64, float64)"], cache=True)
def emax_delta(conc_mg_l: float, emax: float, ec50_mg_l: float) -> float:
    """The Emax model's delta, -emax C / (EC50 + C), C clipped at 0: a compiled ufunc (one pass where the numpy
    expression took five), which the PK/PD kernel calls too."""
    c = max(conc_mg_l, 0.0)
    return -emax * c / (ec50_mg_l + c)


def _emax(conc_mg_l: np.ndarray, params: dict[str, np.ndarray], key: str) -> np.ndarray:
    return emax_delta(conc_mg_l, params[key], params["ec50_mg_l"])


def hr_effect_bpm(conc_mg_l: np.ndarray, params: dict[str, np.ndarray]) -> np.ndarray:
    """The additive change of heart rate (negative: slower)."""
    return _emax(conc_mg_l, params, "emax_hr_bpm")


def bp_effect_mmhg(conc_mg_l: np.ndarray, params: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The additive changes of systolic and diastolic pressure."""
    return _emax(conc_mg_l, params, "emax_sbp_mmhg"), _emax(conc_mg_l, params, "emax_dbp_mmhg")
