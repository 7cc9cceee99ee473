"""The twin's dose advice: the stable weekly warfarin dose that puts a patient at a target INR at steady state,
predicted with the mechanistic model (`sources.patient.warfarin`) from whatever covariates are known.

A missing covariate takes the population prior, that of the virtual cohort (`sources.patient.cohort`): an
unknown genotype is marginalised over the Hardy-Weinberg genotype probabilities of the patient's ancestry
(`sources.patient.genetics`), an unknown ancestry over the cohort's ancestry mix; an unknown age takes the
cohort's mean, an unknown weight the cohort's median BMI at the patient's height (or the typical height for the
patient's sex and ancestry); an unknown co-medication counts as not taken. Sex and height enter only there: the
model scales by weight (Hamberg 2007).

- The target: by default `STABLE_INR` (2.34), the median INR patients hold on the doses they are kept on (from the
  published shares of time below and above 2-3), so that the advice predicts the stable dose a patient ends on,
  as the published stable doses are; `target_inr` aims elsewhere (e.g. 2.5, the middle of the range).
- `weekly_dose_mg`: the dose for the patient's typical parameters; over unknown genotypes, the probability-
  weighted geometric mean (the dose that minimises the expected squared log error).
- `dose_lo_mg`, `dose_hi_mg`: the `INTERVAL_QUANTILES` of the doses that put each of `N_DRAWS` simulated
  patients with these covariates at the target (between-patient variability from `warfarin.individual_params`,
  unknown genotypes drawn from their prior). The draws are common to all patients (one fixed seed), so a
  patient's advice does not depend on who else is in the batch.

docs/MODEL-PATIENT.md, "Dose advice", gives the sources and the limits.

>>> import numpy as np
>>> advice = advise_doses(["a", "b", "c"], cyp2c9=["*1/*1", "*3/*3", None], vkorc1_1639=["G/G", "A/A", None],
...                       ancestry="white")
>>> np.round(advice.weekly_dose_mg).tolist()
[43.0, 5.0, 29.0]
>>> bool(np.all((advice.dose_lo_mg < advice.weekly_dose_mg) & (advice.weekly_dose_mg < advice.dose_hi_mg)))
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from sources.patient import cohort, warfarin
from sources.patient.genetics import (
    ANCESTRIES,
    CYP2C9_GENOTYPES,
    VKORC1_GENOTYPES,
    cyp2c9_probabilities,
    vkorc1_probabilities,
)
from sources.patient.iwpc import iwpc_weekly_dose_mg, taken_mask, unknown_mask

THERAPEUTIC_RANGE = (2.0, 3.0)
# Where patients' INRs sit on the doses they are kept on: share of time below and above 2-3 (Mearns ES et al.,
# Thromb J 2014;12:14, meta-analysis of 68 VKA-treated groups in atrial fibrillation: 61 % in, 25 % below,
# 14 % above; Reynolds MW et al., Chest 2004;126:1938 found 61 / 26 / 13 %). Stable doses in the dose cohorts
# (IWPC, Gage) are the doses patients were kept on, so they hold the INR at the middle of that distribution.
MAINTENANCE_SHARE_BELOW = 0.25
MAINTENANCE_SHARE_ABOVE = 0.14
TARGET_INR_RANGE = (1.5, 4.0)  # advice outside it is not what the model was fitted for
SEXES = ("M", "F")
# a covariate outside these is taken for a typing error (the model was fitted on adults)
PLAUSIBLE = {"age_years": (18.0, 110.0), "height_cm": (120.0, 230.0), "weight_kg": (30.0, 250.0)}
N_DRAWS = 400
INTERVAL_QUANTILES = (0.10, 0.90)
SEED = 20090219  # the IWPC paper's publication date: any fixed number would do
_CHUNK_PATIENTS = 2_000  # patients x draws per chunk stays ~1e6 parameter sets
# Published stable doses by genotype, as ratios to the wild type's (mean, 95 % CI low, high). CYP2C9: Lindh JD et
# al., Eur J Clin Pharmacol 2009;65:365 (meta-analysis, 39 studies, 7,907 patients: 19.6, 33.7, 36.0, 56.7 and
# 78.1 % lower doses). VKORC1 -1639: a band (its middle, low, high) rather than a CI, spanning Hamberg 2010's
# per-allele EC50s (0.73, 0.47), the IWPC formula at the typical patient (0.74, 0.52) and a meta-analysis of 53
# studies (Int J Clin Pharmacol Ther 2017;55:304: G/G 77 %, G/A 45 % above A/A, i.e. 0.82 and 0.56 of G/G).
PUBLISHED_CYP2C9_DOSE_RATIO = {"*1/*2": (0.804, 0.781, 0.826), "*1/*3": (0.663, 0.619, 0.706),
                               "*2/*2": (0.640, 0.580, 0.701), "*2/*3": (0.433, 0.357, 0.509),
                               "*3/*3": (0.219, 0.157, 0.280)}
PUBLISHED_VKORC1_DOSE_RATIO = {"G/A": (0.775, 0.73, 0.82), "A/A": (0.52, 0.47, 0.57)}
# the typical patient of the genotype table: Hamberg's reference age and weight, a white man of average height
TYPICAL_PATIENT = {"age_years": 71.0, "sex": "M", "height_cm": 170.0, "weight_kg": 70.0, "ancestry": "white"}


@dataclass(frozen=True)
class DoseAdvice:
    """One entry per patient."""

    patient_id: np.ndarray
    weekly_dose_mg: np.ndarray
    dose_lo_mg: np.ndarray
    dose_hi_mg: np.ndarray


def _prior_table(genotypes: Sequence[str], by_ancestry: Callable[[str], dict[str, float]]) -> np.ndarray:
    """(n_ancestries, n_genotypes) P(genotype | ancestry)."""
    return np.array([[by_ancestry(a)[g] for g in genotypes] for a in ANCESTRIES])


def _categorical(values: object, allowed: Sequence[str], n: int, what: str) -> np.ndarray:
    """Index into `allowed` per patient, -1 where unknown. `values` None: the column is absent."""
    if values is None:
        return np.full(n, -1)
    arr = np.broadcast_to(np.asarray(values, dtype=object), (n,))
    unknown = unknown_mask(arr)
    labels = np.where(unknown, "", arr).astype(str)
    allowed_arr = np.asarray(allowed)
    match = labels[:, None] == allowed_arr[None, :]
    bad = ~unknown & ~match.any(axis=1)
    if bad.any():
        # the row too: in a file of thousands the value alone does not find it
        raise ValueError(f"unknown {what} {arr[bad][0]!r}; allowed: {', '.join(allowed)} (or empty for unknown; "
                         f"row {np.flatnonzero(bad)[0] + 1})")
    return np.where(unknown, -1, match.argmax(axis=1))


def _continuous(values: object, n: int, what: str, typical: float | None) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan if typical is None else typical)
    arr = np.broadcast_to(np.asarray(values, dtype=object), (n,))
    arr = np.where(unknown_mask(arr), np.nan, arr).astype(float)
    lo, hi = PLAUSIBLE[what]
    bad = ~np.isnan(arr) & ((arr < lo) | (arr > hi))
    if bad.any():
        raise ValueError(f"implausible {what} {arr[bad][0]:g}; allowed: {lo:g} to {hi:g} (or empty for unknown; "
                         f"row {np.flatnonzero(bad)[0] + 1})")
    return arr if typical is None else np.where(np.isnan(arr), typical, arr)


def lognormal_median_inr(share_below: float, share_above: float,
                         therapeutic_range: tuple[float, float] = THERAPEUTIC_RANGE) -> float:
    """The median of a log-normal INR distribution with `share_below` of it under the range and `share_above`
    over it: the INR that real patients' stable doses hold.

    >>> round(lognormal_median_inr(0.25, 0.14), 2)
    2.34
    """
    lo, hi = np.log(therapeutic_range)
    z_lo, z_hi = norm.ppf(share_below), norm.ppf(1.0 - share_above)
    sd = (hi - lo) / (z_hi - z_lo)
    return float(np.exp(lo - z_lo * sd))


STABLE_INR = lognormal_median_inr(MAINTENANCE_SHARE_BELOW, MAINTENANCE_SHARE_ABOVE)  # 2.34: the default target


def _inhibition_for_inr(target_inr: float) -> float:
    """The steady-state inhibition of clotting-factor synthesis that gives `target_inr` (`inr_from_effect` rises
    with it from 1)."""
    return float(brentq(lambda i: float(warfarin.inr_from_effect(np.array(i))) - target_inr, 0.0, 1.0 - 1e-12,
                        xtol=1e-14))


def daily_dose_for_inr(params: dict[str, np.ndarray], target_inr: float,
                       cl_factor: float | np.ndarray = 1.0) -> np.ndarray:
    """The daily racemic dose (mg) whose steady-state INR (`warfarin.steady_state_inr`) is `target_inr`.

    The steady state depends on the dose only through the average concentration, which is proportional to it,
    so the target inhibition is inverted once and the Emax (Hill) term per patient; the model's own function
    then checks every answer, and any it disagrees with (a changed model) is solved by bisection on log dose
    (the INR rises monotonically with the dose).
    """
    inhibition = _inhibition_for_inr(target_inr)
    conc_mg_l = params["ec50_mg_l"] * (inhibition / (1.0 - inhibition)) ** (1.0 / params["gamma"])
    dose = conc_mg_l / warfarin.average_concentration(params, 1.0, cl_factor)
    off = ~np.isclose(warfarin.steady_state_inr(params, dose, cl_factor), target_inr, rtol=1e-6, atol=0.0)
    if off.any():
        sub = {k: np.broadcast_to(v, dose.shape)[off] for k, v in params.items()}
        factor = np.broadcast_to(np.asarray(cl_factor, float), dose.shape)[off]
        lo, hi = np.full(off.sum(), np.log(1e-4)), np.full(off.sum(), np.log(1e4))
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = warfarin.steady_state_inr(sub, np.exp(mid), factor) > target_inr
            hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
        dose[off] = np.exp(0.5 * (lo + hi))
    return dose


def _covariates(cyp_idx: np.ndarray, vk_idx: np.ndarray, age: np.ndarray, weight: np.ndarray,
                amiodarone: np.ndarray, inducer: np.ndarray) -> warfarin.Covariates:
    return warfarin.Covariates(age, weight, np.asarray(CYP2C9_GENOTYPES)[cyp_idx],
                               np.asarray(VKORC1_GENOTYPES)[vk_idx], amiodarone, inducer)


def advise_doses(patient_id: Sequence | np.ndarray, age_years: object = None, sex: object = None,
                 height_cm: object = None, weight_kg: object = None, ancestry: object = None,
                 cyp2c9: object = None, vkorc1_1639: object = None, amiodarone: object = None,
                 enzyme_inducer: object = None, *, target_inr: float = STABLE_INR,
                 ancestry_mix: Mapping[str, float] | None = None, n_draws: int = N_DRAWS,
                 seed: int = SEED) -> DoseAdvice:
    """The stable weekly warfarin dose (mg) per patient, with its interval, at `target_inr` (default
    `STABLE_INR`). Every covariate is an array (one entry per patient, None/""/NaN where unknown), a scalar for
    all, or None when not known for anyone."""
    ids = np.asarray(patient_id).astype(str)
    n = len(ids)
    lo_inr, hi_inr = TARGET_INR_RANGE
    if not lo_inr <= target_inr <= hi_inr:
        raise ValueError(f"target INR {target_inr:g} is outside {lo_inr:g} to {hi_inr:g}")
    ancestry_mix = cohort.DEFAULT_ANCESTRY_MIX if ancestry_mix is None else ancestry_mix
    mix = np.array([ancestry_mix.get(a, 0.0) for a in ANCESTRIES], float)
    if set(ancestry_mix) - set(ANCESTRIES) or mix.sum() <= 0:
        raise ValueError(f"ancestry_mix {dict(ancestry_mix)} must weigh {', '.join(ANCESTRIES)}")
    mix = mix / mix.sum()
    sex_idx = _categorical(sex, SEXES, n, "sex")
    anc = _categorical(ancestry, ANCESTRIES, n, "ancestry")
    age = _continuous(age_years, n, "age_years", cohort.AGE_MEAN_YEARS)
    height = _continuous(height_cm, n, "height_cm", None)
    height = np.where(np.isnan(height), _typical_height_cm(sex_idx, anc, mix), height)
    weight = _continuous(weight_kg, n, "weight_kg", None)
    weight = np.where(np.isnan(weight), cohort.BMI_MEDIAN_KG_M2 * (height / 100.0) ** 2, weight)
    cyp = _categorical(cyp2c9, CYP2C9_GENOTYPES, n, "CYP2C9 genotype")
    vk = _categorical(vkorc1_1639, VKORC1_GENOTYPES, n, "VKORC1 -1639 genotype")
    amio = taken_mask(np.broadcast_to(np.asarray(amiodarone, dtype=object), (n,)))
    inducer = taken_mask(np.broadcast_to(np.asarray(enzyme_inducer, dtype=object), (n,)))

    # the prior over (ancestry, CYP2C9, VKORC1), independent genes given ancestry; a known value is certain
    p_anc = np.where((anc >= 0)[:, None], np.eye(len(ANCESTRIES))[anc], mix[None, :])
    p_cyp = np.where((cyp >= 0)[:, None, None], np.eye(len(CYP2C9_GENOTYPES))[cyp][:, None, :],
                     _prior_table(CYP2C9_GENOTYPES, cyp2c9_probabilities)[None])
    p_vk = np.where((vk >= 0)[:, None, None], np.eye(len(VKORC1_GENOTYPES))[vk][:, None, :],
                    _prior_table(VKORC1_GENOTYPES, vkorc1_probabilities)[None])
    weights = np.einsum("pa,pac,pav->pcv", p_anc, p_cyp, p_vk)  # (n, 6, 3)

    # the typical patient's dose for every genotype pair: (n, 6, 3)
    n_cyp, n_vk = len(CYP2C9_GENOTYPES), len(VKORC1_GENOTYPES)
    cyp_grid = np.broadcast_to(np.arange(n_cyp)[None, :, None], (n, n_cyp, n_vk)).ravel()
    vk_grid = np.broadcast_to(np.arange(n_vk)[None, None, :], (n, n_cyp, n_vk)).ravel()
    rep = np.repeat(np.arange(n), n_cyp * n_vk)
    grid_cov = _covariates(cyp_grid, vk_grid, age[rep], weight[rep], amio[rep], inducer[rep])
    grid_params = {k: v.reshape(n, n_cyp, n_vk) for k, v in warfarin.typical_params(grid_cov).items()}
    grid_factor = warfarin.steady_state_factor(grid_cov).reshape(n, n_cyp, n_vk)
    typical_dose = daily_dose_for_inr(grid_params, target_inr, grid_factor)
    weekly = 7.0 * np.exp(np.einsum("pcv,pcv->p", weights, np.log(typical_dose)))

    # Monte Carlo: the same draws for every patient (between-patient variability as ratios to the typical
    # parameters, and uniforms that pick the unknown genotypes from each patient's prior)
    rng = np.random.default_rng(seed)
    reference = warfarin.Covariates.typical(["*1/*1"] * n_draws, ["G/G"] * n_draws)
    typical_ref = warfarin.typical_params(reference)
    individual_ref = warfarin.individual_params(reference, rng)
    ratio = {k: individual_ref[k] / typical_ref[k] for k in typical_ref}
    u_anc, u_cyp, u_vk = rng.random((3, n_draws))
    cum_anc = np.cumsum(p_anc, axis=1)
    lo_q, hi_q = INTERVAL_QUANTILES
    dose_lo, dose_hi = np.empty(n), np.empty(n)
    for start in range(0, n, _CHUNK_PATIENTS):
        s = slice(start, min(n, start + _CHUNK_PATIENTS))
        m = s.stop - s.start
        a = np.minimum((u_anc[None, :, None] > cum_anc[s, None, :]).sum(-1), len(ANCESTRIES) - 1)  # (m, draws)
        rows = np.arange(m)[:, None]
        c = _draw(np.cumsum(p_cyp[s], axis=-1)[rows, a], u_cyp)
        v = _draw(np.cumsum(p_vk[s], axis=-1)[rows, a], u_vk)
        params = {k: grid_params[k][s][rows, c, v] * ratio[k][None, :] for k in grid_params}
        doses = 7.0 * daily_dose_for_inr(params, target_inr, grid_factor[s][rows, c, v])
        dose_lo[s], dose_hi[s] = np.quantile(doses, [lo_q, hi_q], axis=1)
    return DoseAdvice(ids, weekly, dose_lo, dose_hi)


def _typical_height_cm(sex_idx: np.ndarray, anc_idx: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """The cohort's mean height for the patient's sex and ancestry, averaged over whichever is unknown."""
    male = np.where(sex_idx < 0, cohort.MALE_SHARE, sex_idx == SEXES.index("M"))
    by_sex = male * cohort.HEIGHT_MEAN_CM["M"] + (1.0 - male) * cohort.HEIGHT_MEAN_CM["F"]
    offsets = np.array([cohort.HEIGHT_ANCESTRY_OFFSET_CM[a] for a in ANCESTRIES])
    return by_sex + np.where(anc_idx < 0, mix @ offsets, offsets[anc_idx])


def _draw(cumulative: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: (m, draws, k) cumulative probabilities and (draws,) uniforms -> (m, draws) index."""
    return np.minimum((u[None, :, None] > cumulative).sum(-1), cumulative.shape[-1] - 1)


def genotype_table(target_inr: float = STABLE_INR) -> dict[str, object]:
    """The advised weekly dose of `TYPICAL_PATIENT` for every CYP2C9 x VKORC1 -1639 genotype beside the IWPC
    formula's, and each genotype's dose as a ratio to the wild type's (*1/*1 at the same VKORC1, G/G at the same
    CYP2C9) beside the published ratios: a JSON-ready dict (`biopilot twin genotypes --json`).

    >>> t = genotype_table()
    >>> [(r["cyp2c9"], r["advice_ratio"]) for r in t["cyp2c9"]][:2]
    [('*1/*2', 0.782), ('*1/*3', 0.666)]
    """
    pairs = [(c, v) for c in CYP2C9_GENOTYPES for v in VKORC1_GENOTYPES]
    cyp, vk = (np.array(x) for x in zip(*pairs, strict=True))
    patient = {k: np.full(len(pairs), v, dtype=object) for k, v in TYPICAL_PATIENT.items()}
    advice = advise_doses([f"{c} {v}" for c, v in pairs], **patient, cyp2c9=cyp, vkorc1_1639=vk,
                          target_inr=target_inr).weekly_dose_mg
    iwpc = iwpc_weekly_dose_mg(TYPICAL_PATIENT["age_years"], TYPICAL_PATIENT["height_cm"],
                               TYPICAL_PATIENT["weight_kg"], vk, cyp, TYPICAL_PATIENT["ancestry"])
    dose = {pair: (float(a), float(i)) for pair, a, i in zip(pairs, advice, iwpc, strict=True)}

    def ratio(gene: str, genotype: str, published: tuple[float, float, float], reference: str) -> dict:
        # CYP2C9 ratios at VKORC1 G/A, the commonest in white patients; VKORC1 ratios at CYP2C9 *1/*1
        num, den = ((genotype, "G/A"), (reference, "G/A")) if gene == "cyp2c9" else (("*1/*1", genotype),
                                                                                       ("*1/*1", reference))
        mean, lo, hi = published
        return {gene: genotype, "advice_ratio": round(dose[num][0] / dose[den][0], 3),
                "iwpc_ratio": round(dose[num][1] / dose[den][1], 3), "published_ratio": mean,
                "published_lo": lo, "published_hi": hi}

    return {
        "patient": TYPICAL_PATIENT, "target_inr": round(target_inr, 3),
        "doses": [{"cyp2c9": c, "vkorc1_1639": v, "advice_weekly_mg": round(dose[(c, v)][0], 1),
                   "iwpc_weekly_mg": round(dose[(c, v)][1], 1),
                   "advice_to_iwpc": round(dose[(c, v)][0] / dose[(c, v)][1], 2)} for c, v in pairs],
        "cyp2c9": [ratio("cyp2c9", g, r, "*1/*1") for g, r in PUBLISHED_CYP2C9_DOSE_RATIO.items()],
        "vkorc1_1639": [ratio("vkorc1_1639", g, r, "G/G") for g, r in PUBLISHED_VKORC1_DOSE_RATIO.items()],
    }
