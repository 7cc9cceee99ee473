"""The virtual cohort: each patient's covariates (age, sex, body size, ancestry), genotypes drawn by
Hardy-Weinberg per ancestry, co-medications, baseline vitals and haemoglobin, and individual warfarin and
metoprolol parameters (covariate model x log-normal between-patient variability). One numpy array per field,
one entry per patient, like the reactor fleet's state.

>>> import numpy as np
>>> c = draw_cohort(4, np.random.default_rng(0), first_index=10)
>>> c.patient_id.tolist(), len(c), sorted(c.warfarin)[:2]
(['p000010', 'p000011', 'p000012', 'p000013'], 4, ['bioavailability', 'cl_l_h'])
>>> bool(np.all((c.hr_bpm > 40) & (c.hr_bpm < 120)))
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa

from core.events import METOPROLOL_PARAMS, PATIENTS, VITAL_SIGNALS, WARFARIN_PARAMS
from sources.patient import metoprolol, warfarin
from sources.patient.genetics import (
    ANCESTRIES,
    CYP2C9_GENOTYPES,
    CYP2D6_PHENOTYPES,
    VKORC1_GENOTYPES,
    cyp2c9_probabilities,
    cyp2d6_probabilities,
    vkorc1_probabilities,
)

# the population: adults on anticoagulation (docs/MODEL-PATIENT.md, "Cohort")
AGE_MEAN_YEARS, AGE_SD_YEARS, AGE_RANGE_YEARS = 68.0, 11.0, (25.0, 95.0)
MALE_SHARE = 0.55
HEIGHT_MEAN_CM = {"M": 175.5, "F": 162.0}
HEIGHT_SD_CM = {"M": 7.0, "F": 6.5}
HEIGHT_ANCESTRY_OFFSET_CM = {"white": 0.0, "black": 0.5, "asian": -7.0, "other": -2.0}
BMI_MEDIAN_KG_M2, BMI_LOG_SD = 27.0, 0.16
WEIGHT_RANGE_KG = (38.0, 180.0)
# baseline vitals while awake (mean, SD, lower clip, upper clip); SBP and DBP correlated
BASELINE_VITALS = {
    "hr_bpm": (72.0, 9.0, 54.0, 100.0),
    "sbp_mmhg": (132.0, 14.0, 105.0, 175.0),
    "dbp_mmhg": (78.0, 9.0, 55.0, 100.0),
    "spo2_pct": (97.0, 1.1, 94.0, 99.5),
    "rr_min": (15.0, 2.0, 11.0, 20.0),
    "temp_c": (36.8, 0.25, 36.2, 37.4),
}
SBP_DBP_CORRELATION = 0.6
HB_MEAN_G_DL = {"M": 14.3, "F": 13.0}
HB_SD_G_DL, HB_RANGE_G_DL = 1.2, (10.0, 17.5)
DEFAULT_ANCESTRY_MIX = {"white": 0.6, "black": 0.15, "asian": 0.15, "other": 0.1}


@dataclass(frozen=True)
class Cohort:
    """Per-patient arrays (length n). `warfarin` / `metoprolol`: the individual parameter dicts."""

    patient_id: np.ndarray
    age_years: np.ndarray
    sex: np.ndarray
    height_cm: np.ndarray
    weight_kg: np.ndarray
    ancestry: np.ndarray
    cyp2c9: np.ndarray
    vkorc1_1639: np.ndarray
    cyp2d6: np.ndarray
    amiodarone: np.ndarray
    enzyme_inducer: np.ndarray
    hr_bpm: np.ndarray
    sbp_mmhg: np.ndarray
    dbp_mmhg: np.ndarray
    spo2_pct: np.ndarray
    rr_min: np.ndarray
    temp_c: np.ndarray
    hb_g_dl: np.ndarray
    warfarin: dict[str, np.ndarray]
    metoprolol: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.patient_id)

    def covariates(self) -> warfarin.Covariates:
        return warfarin.Covariates(self.age_years, self.weight_kg, self.cyp2c9, self.vkorc1_1639,
                                   self.amiodarone, self.enzyme_inducer)

    def baseline_vitals(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in VITAL_SIGNALS}

    def subset(self, index: np.ndarray) -> Cohort:
        """The patients at `index` (an int array or a boolean mask)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return Cohort(**{k: ({p: a[index] for p, a in v.items()} if isinstance(v, dict) else v[index])
                         for k, v in kw.items()})

    def patients_table(self, run_ids: np.ndarray | list[str]) -> pa.Table:
        """The `patients` table (schema PATIENTS), one row per patient, `run_ids` in patient order."""
        if len(run_ids) != len(self):
            raise ValueError(f"run_ids has {len(run_ids)} entries; the cohort has {len(self)} patients")
        cols = {"run_id": list(run_ids), "patient_id": self.patient_id.tolist(),
                "vkorc1_1639": self.vkorc1_1639.tolist()}
        for name in ("age_years", "sex", "height_cm", "weight_kg", "ancestry", "cyp2c9", "cyp2d6", "amiodarone",
                     "enzyme_inducer"):
            cols[name] = getattr(self, name).tolist()
        for name in VITAL_SIGNALS + ("hb_g_dl",):
            cols[f"baseline_{name}"] = getattr(self, name).astype(float).tolist()
        for key in WARFARIN_PARAMS:
            cols[f"warfarin_{key}"] = self.warfarin[key].astype(float).tolist()
        for key in METOPROLOL_PARAMS:
            cols[f"metoprolol_{key}"] = self.metoprolol[key].astype(float).tolist()
        return pa.Table.from_pydict({f.name: cols[f.name] for f in PATIENTS}, schema=PATIENTS)

    @classmethod
    def typical(cls, cyp2c9: list[str], vkorc1: list[str], cyp2d6: list[str] | None = None,
                sex: list[str] | None = None) -> Cohort:
        """Typical patients (reference age and weight, population-mean vitals, no between-patient variability):
        the model's reference points for tests and for the dose advice."""
        n = len(cyp2c9)
        cyp2d6 = np.asarray(cyp2d6 if cyp2d6 is not None else ["NM"] * n)
        sex = np.asarray(sex if sex is not None else ["M"] * n)
        cov = warfarin.Covariates.typical(cyp2c9, vkorc1)
        vit = {k: np.full(n, v[0]) for k, v in BASELINE_VITALS.items()}
        return cls(patient_id=np.array([f"p{i:06d}" for i in range(n)]), age_years=cov.age_years, sex=sex,
                   height_cm=np.array([HEIGHT_MEAN_CM[s] for s in sex]), weight_kg=cov.weight_kg,
                   ancestry=np.full(n, "white"), cyp2c9=cov.cyp2c9, vkorc1_1639=cov.vkorc1, cyp2d6=cyp2d6,
                   amiodarone=np.zeros(n, bool), enzyme_inducer=np.zeros(n, bool), **vit,
                   hb_g_dl=np.array([HB_MEAN_G_DL[s] for s in sex]), warfarin=warfarin.typical_params(cov),
                   metoprolol=metoprolol.typical_params(sex, cyp2d6))


def _categorical(rng: np.random.Generator, groups: np.ndarray, probs: Mapping[str, callable],
                 labels: tuple[str, ...]) -> np.ndarray:
    """One draw per patient from the distribution of its group (its ancestry)."""
    out = np.empty(len(groups), dtype=object)
    for g in np.unique(groups):  # a loop over the four ancestries, not over patients
        mask = groups == g
        p = probs(str(g))
        # rng.choice(labels, p=...)'s own sampling (the same draws), without its checks: a cohort is drawn one
        # patient at a time (one random stream each), where those checks cost a third of the draw
        cdf = np.cumsum([p[k] for k in labels])
        cdf /= cdf[-1]
        out[mask] = np.asarray(labels, dtype=object)[cdf.searchsorted(rng.random(int(mask.sum())), side="right")]
    return out.astype(str)


def _clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """np.clip for the cohort's small arrays, where np.clip's overhead is ten times the work."""
    return np.minimum(np.maximum(x, lo), hi)


def _share(value: float, what: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} {value!r} must be a share between 0 and 1")
    return float(value)


def draw_cohort(n: int, rng: np.random.Generator, first_index: int = 0, *,
                ancestry: Mapping[str, float] | None = None, amiodarone_share: float = 0.0,
                enzyme_inducer_share: float = 0.0, male_share: float = MALE_SHARE) -> Cohort:
    """Draw `n` patients; ids `p{first_index:06d}` onwards. Options: the ancestry mix (shares, normalised),
    the shares on amiodarone / an enzyme inducer from the start, the share of men."""
    if n < 0:
        raise ValueError(f"n {n!r} must be >= 0")
    mix = dict(ancestry or DEFAULT_ANCESTRY_MIX)
    for key, share in mix.items():
        if key not in ANCESTRIES or share < 0:
            raise ValueError(f"ancestry share {key!r}={share!r}; allowed: {', '.join(ANCESTRIES)} with shares >= 0")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("ancestry shares must sum to more than 0")
    amio, inducer = _share(amiodarone_share, "amiodarone_share"), _share(enzyme_inducer_share, "enzyme_inducer_share")
    male = _share(male_share, "male_share")

    anc = rng.choice(np.array(list(mix)), size=n, p=np.array(list(mix.values())) / total).astype(str)
    sex = np.where(rng.random(n) < male, "M", "F")
    is_m = sex == "M"
    age = _clip(rng.normal(AGE_MEAN_YEARS, AGE_SD_YEARS, n), *AGE_RANGE_YEARS)
    height = (np.where(is_m, HEIGHT_MEAN_CM["M"], HEIGHT_MEAN_CM["F"])
              + np.array([HEIGHT_ANCESTRY_OFFSET_CM[a] for a in anc])
              + rng.normal(0.0, 1.0, n) * np.where(is_m, HEIGHT_SD_CM["M"], HEIGHT_SD_CM["F"]))
    bmi = BMI_MEDIAN_KG_M2 * np.exp(rng.normal(0.0, BMI_LOG_SD, n))
    weight = _clip(bmi * (height / 100.0) ** 2, *WEIGHT_RANGE_KG)

    cyp2c9 = _categorical(rng, anc, cyp2c9_probabilities, CYP2C9_GENOTYPES)
    vkorc1 = _categorical(rng, anc, vkorc1_probabilities, VKORC1_GENOTYPES)
    cyp2d6 = _categorical(rng, anc, cyp2d6_probabilities, CYP2D6_PHENOTYPES)
    on_amio = rng.random(n) < amio
    on_inducer = rng.random(n) < inducer

    vit = {}
    z = rng.normal(size=(len(BASELINE_VITALS), n))
    # DBP shares part of SBP's deviation (the two pressures move together between people)
    z[2] = SBP_DBP_CORRELATION * z[1] + np.sqrt(1.0 - SBP_DBP_CORRELATION**2) * z[2]
    for i, (name, (mean, sd, lo, hi)) in enumerate(BASELINE_VITALS.items()):
        vit[name] = _clip(mean + sd * z[i], lo, hi)
    vit["sbp_mmhg"] += 0.3 * (age - AGE_MEAN_YEARS)  # systolic pressure rises with age
    vit["sbp_mmhg"] = _clip(vit["sbp_mmhg"], BASELINE_VITALS["sbp_mmhg"][2], BASELINE_VITALS["sbp_mmhg"][3])
    vit["dbp_mmhg"] = np.minimum(vit["dbp_mmhg"], vit["sbp_mmhg"] - 30.0)
    hb = _clip(np.where(is_m, HB_MEAN_G_DL["M"], HB_MEAN_G_DL["F"]) + rng.normal(0.0, HB_SD_G_DL, n),
                 *HB_RANGE_G_DL)

    cov = warfarin.Covariates(age, weight, cyp2c9, vkorc1, on_amio, on_inducer)
    return Cohort(patient_id=np.array([f"p{first_index + i:06d}" for i in range(n)]), age_years=age, sex=sex,
                  height_cm=height, weight_kg=weight, ancestry=anc, cyp2c9=cyp2c9, vkorc1_1639=vkorc1,
                  cyp2d6=cyp2d6, amiodarone=on_amio, enzyme_inducer=on_inducer, **vit, hb_g_dl=hb,
                  warfarin=warfarin.individual_params(cov, rng),
                  metoprolol=metoprolol.individual_params(sex, cyp2d6, rng))
