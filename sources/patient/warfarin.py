"""Warfarin's population PK/PD model (Hamberg et al. 2007) with R-warfarin added: S-warfarin in two compartments
with first-order absorption, clearance by CYP2C9 genotype, age, body size and interacting drugs; R-warfarin (the
other half of the racemic tablet, cleared by CYP1A2/CYP3A4, not CYP2C9) in one compartment; the S-equivalent
concentration (S + R times R's relative potency) inhibits clotting factor synthesis (Emax with Hill gamma, EC50
by VKORC1 -1639 genotype), and two transit chains delay it into the INR. Vectorised over patients: every function
takes numpy arrays of covariates (one entry per patient).

The parameters, their sources and where we chose otherwise: docs/MODEL-PATIENT.md, "Warfarin".

>>> import numpy as np
>>> cov = Covariates.typical(cyp2c9=["*1/*1", "*1/*1", "*1/*3", "*3/*3"], vkorc1=["G/G", "A/A", "G/A", "A/A"])
>>> p = typical_params(cov)
>>> np.round(steady_state_inr(p, 5.0), 1).tolist()  # 5 mg/day; at day 42 *3/*3 is not yet at steady state
[2.2, 3.4, 3.3, 7.5]
>>> np.round(half_life_h(p)[[0, 3]]).tolist()  # S-warfarin, *1/*1 and *3/*3
[45.0, 304.0]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sources.patient.genetics import CYP2C9_GENOTYPES, VKORC1_GENOTYPES

S_FRACTION = 0.5  # racemic tablets: half the dose is S-warfarin, the active enantiomer
KA_PER_H = 2.0
# Hamberg's CL, V1, V2 and Q are apparent oral values (CL/F ...: fitted to oral doses only), so F is already in
# them; the 0.9 once here came from a textbook via a re-implementation and counted F twice (MODEL-PATIENT.md)
BIOAVAILABILITY = 1.0
V1_L = 13.8
V2_L = 6.59
Q_L_PER_H = 0.131
CL_L_PER_H = 0.314  # CYP2C9 *1/*1 at REFERENCE_AGE_YEARS
REFERENCE_AGE_YEARS = 71.0
CL_AGE_SLOPE_PER_YEAR = 0.0091  # clearance falls 0.91 % per year of age above the reference (and rises below)
REFERENCE_WEIGHT_KG = 70.0  # allometric scaling: clearances by weight^0.75, volumes by weight^1
# S-warfarin clearance lost by genotype (Hamberg 2007), except *2/*2: Hamberg 2010's per-allele clearances (*1 0.174,
# *2 0.0879 L/h), as Hamberg 2007's 72.2 % (few patients) puts *2/*2 below *2/*3, against the dose data
CL_REDUCTION = {"*1/*1": 0.0, "*1/*2": 0.315, "*1/*3": 0.453, "*2/*2": 0.495, "*2/*3": 0.690, "*3/*3": 0.852}
# R-warfarin: one compartment, the same absorption; not cleared by CYP2C9 (CYP1A2, CYP3A4), so no genotype effect
R_FRACTION = 1.0 - S_FRACTION
R_CL_L_PER_H = 0.161  # 2.30 mL/h/kg at steady state in stable patients (Chirality 1997;9:13) x 70 kg
R_V_L = 10.0  # warfarin's volume, 10 L/70 kg (Holford, Clin Pharmacokinet 1986;11:483): half-life 43 h
R_POTENCY = 1.0 / 3.0  # R's effect per mg/L relative to S (S 2-5x as potent: label)
# EC50 by VKORC1 -1639 (Hamberg 2007), except G/A: G/G's times Hamberg 2010's per-allele ratio (2.05 + 0.96) / 4.10,
# as Hamberg 2007's 3.02 makes G/A's dose 34 % below G/G's where dose data put it 18-27 % below. They were fitted to
# S-warfarin alone; the effect now follows S + R_POTENCY R, so they are scaled to S-equivalent concentrations (the
# scale: docs/MODEL-PATIENT.md, "Warfarin")
EC50_MG_PER_L = {"G/G": 4.61, "G/A": 3.38, "A/A": 2.20}
EC50_S_EQUIVALENT_SCALE = 1.3
GAMMA = 0.424
MTT1_H = 11.6  # the six-compartment chain
MTT2_H = 120.0  # the one-compartment chain
CHAIN1_COMPARTMENTS = 6
INR_MAX_RISE = 20.0
INR_EXPONENT = 3.61
# between-patient variability, read as coefficients of variation of log-normal parameters
BPV_CV = {"cl": 0.310, "v1": 0.262, "v2": 0.991, "ec50": 0.409, "mtt1": 0.141, "mtt2": 1.020}
INR_RESIDUAL_VARIANCE = 0.0325  # proportional (log-scale) residual error of a measured INR
# interacting drugs: the factor on both enantiomers' clearance once established (amiodarone inhibits CYP2C9 and
# CYP3A4, the inducers induce both paths), and how fast it establishes
AMIODARONE_CL_FACTOR = 0.55  # CYP2C9 (and CYP3A4) inhibition
AMIODARONE_ONSET_HALF_LIFE_H = 7 * 24.0
INDUCER_CL_FACTOR = 1.8  # rifampicin, carbamazepine, phenytoin
INDUCER_ONSET_HALF_LIFE_H = 4 * 24.0


@dataclass(frozen=True)
class Covariates:
    """One entry per patient. Genotype strings as in `sources.patient.genetics`."""

    age_years: np.ndarray
    weight_kg: np.ndarray
    cyp2c9: np.ndarray
    vkorc1: np.ndarray
    amiodarone: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    enzyme_inducer: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        n = len(self.cyp2c9)
        for name in ("amiodarone", "enzyme_inducer"):
            if len(getattr(self, name)) == 0:
                object.__setattr__(self, name, np.zeros(n, bool))
        for genotype, allowed in ((self.cyp2c9, CYP2C9_GENOTYPES), (self.vkorc1, VKORC1_GENOTYPES)):
            unknown = sorted(set(np.asarray(genotype).tolist()) - set(allowed))
            if unknown:
                raise ValueError(f"unknown genotype {unknown[0]!r}; allowed: {', '.join(allowed)}")

    @classmethod
    def typical(cls, cyp2c9: list[str], vkorc1: list[str]) -> Covariates:
        """Patients of the reference age and weight, no interacting drugs."""
        n = len(cyp2c9)
        return cls(np.full(n, REFERENCE_AGE_YEARS), np.full(n, REFERENCE_WEIGHT_KG), np.asarray(cyp2c9),
                   np.asarray(vkorc1))


def typical_params(cov: Covariates) -> dict[str, np.ndarray]:
    """The population's typical parameters for each patient's covariates, interacting drugs not yet acting
    (`clearance_factor` applies them over time)."""
    n = len(cov.cyp2c9)
    size = np.asarray(cov.weight_kg, float) / REFERENCE_WEIGHT_KG
    age = np.clip(1.0 - CL_AGE_SLOPE_PER_YEAR * (np.asarray(cov.age_years, float) - REFERENCE_AGE_YEARS), 0.4, 1.6)
    genotype = 1.0 - np.array([CL_REDUCTION[g] for g in cov.cyp2c9])
    allometric = size**0.75
    return {
        "cl_l_h": CL_L_PER_H * genotype * age * allometric,
        "v1_l": V1_L * size,
        "v2_l": V2_L * size,
        "q_l_h": Q_L_PER_H * allometric,
        "r_cl_l_h": R_CL_L_PER_H * age * allometric,
        "r_v_l": R_V_L * size,
        "ka_per_h": np.full(n, KA_PER_H),
        "bioavailability": np.full(n, BIOAVAILABILITY),
        "ec50_mg_l": EC50_S_EQUIVALENT_SCALE * np.array([EC50_MG_PER_L[g] for g in cov.vkorc1]),
        "gamma": np.full(n, GAMMA),
        "mtt1_h": np.full(n, MTT1_H),
        "mtt2_h": np.full(n, MTT2_H),
    }


def individual_params(cov: Covariates, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Typical parameters times log-normal between-patient variability (`BPV_CV`)."""
    params = typical_params(cov)
    n = len(cov.cyp2c9)
    for key, omega in _BPV_OMEGA.items():
        params[key] = params[key] * np.exp(rng.normal(0.0, omega, n))
    return params


# the log-normal SD of each varied parameter, by its `typical_params` key (in `BPV_CV`'s order: the draws' order)
_BPV_OMEGA = {next(k for k in typical_params(Covariates.typical(["*1/*1"], ["G/G"])) if k.startswith(short + "_")):
              float(np.sqrt(np.log1p(cv * cv))) for short, cv in BPV_CV.items()}


def clearance_factor(amiodarone_h: np.ndarray, inducer_h: np.ndarray) -> np.ndarray:
    """The factor on clearance of interacting drugs taken for `*_h` hours so far (NaN or <= 0: not taken)."""
    def established(hours: np.ndarray, half_life_h: float) -> np.ndarray:
        hours = np.nan_to_num(np.asarray(hours, float), nan=0.0)
        return 1.0 - np.exp(-np.log(2.0) * np.clip(hours, 0.0, None) / half_life_h)

    return ((1.0 - (1.0 - AMIODARONE_CL_FACTOR) * established(amiodarone_h, AMIODARONE_ONSET_HALF_LIFE_H))
            * (1.0 + (INDUCER_CL_FACTOR - 1.0) * established(inducer_h, INDUCER_ONSET_HALF_LIFE_H)))


def steady_state_factor(cov: Covariates) -> np.ndarray:
    """The clearance factor once the patient's interacting drugs are established."""
    return (np.where(cov.amiodarone, AMIODARONE_CL_FACTOR, 1.0)
            * np.where(cov.enzyme_inducer, INDUCER_CL_FACTOR, 1.0))


def inr_from_effect(inhibition: np.ndarray) -> np.ndarray:
    """INR at steady state when synthesis is inhibited by `inhibition` (both chains at 1 - inhibition)."""
    remaining = (1.0 - np.asarray(inhibition, float)) ** 2
    return 1.0 + INR_MAX_RISE * (1.0 - remaining) ** INR_EXPONENT


def inhibition(conc_mg_l: np.ndarray, ec50_mg_l: np.ndarray, gamma: np.ndarray) -> np.ndarray:
    c = np.power(np.clip(conc_mg_l, 0.0, None), gamma)
    return c / (np.power(ec50_mg_l, gamma) + c)


def average_concentration(params: dict[str, np.ndarray], daily_dose_mg: float | np.ndarray,
                          cl_factor: float | np.ndarray = 1.0) -> np.ndarray:
    """The S-equivalent average concentration (mg/L: S-warfarin + `R_POTENCY` x R-warfarin) at steady state on a
    daily racemic dose; `cl_factor` acts on both enantiomers' clearance."""
    rate_mg_h = params["bioavailability"] * np.asarray(daily_dose_mg, float) / 24.0
    return rate_mg_h / cl_factor * (S_FRACTION / params["cl_l_h"] + R_FRACTION * R_POTENCY / params["r_cl_l_h"])


def steady_state_inr(params: dict[str, np.ndarray], daily_dose_mg: float | np.ndarray,
                     cl_factor: float | np.ndarray = 1.0) -> np.ndarray:
    """INR at steady state on a daily dose, from the average S-equivalent concentration (the daily swing is small
    beside the transit chains' days-long delay)."""
    conc = average_concentration(params, daily_dose_mg, cl_factor)
    return inr_from_effect(inhibition(conc, params["ec50_mg_l"], params["gamma"]))


def half_life_h(params: dict[str, np.ndarray]) -> np.ndarray:
    """S-warfarin's effective half-life, ln 2 (V1 + V2) / CL: the one that sets how fast a dose change reaches
    steady state (the two-compartment terminal phase is longer, but holds little of the drug)."""
    return np.log(2.0) * (params["v1_l"] + params["v2_l"]) / params["cl_l_h"]
