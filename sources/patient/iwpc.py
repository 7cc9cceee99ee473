"""The IWPC pharmacogenetic warfarin dosing formula (International Warfarin Pharmacogenetics Consortium, N Engl J
Med 2009;360:753-764, supplementary appendix): the square root of the stable weekly dose is linear in age (in
whole decades), height, weight, VKORC1 -1639 and CYP2C9 genotype, ancestry, enzyme inducers and amiodarone.

Vectorised: every argument is a scalar or an array with one entry per patient (broadcast together). An unknown
genotype (None, "" or NaN) takes the formula's own "unknown" term; an unknown ancestry takes its "missing or
mixed race" term, as does "other"; an unknown co-medication counts as not taken (the formula's 0).
docs/MODEL-PATIENT.md, "Dose advice", cites the coefficients.

>>> import numpy as np
>>> dose = iwpc_weekly_dose_mg(age_years=[65, 65, 65], height_cm=170, weight_kg=75,
...                            vkorc1=["G/G", "A/A", None], cyp2c9=["*1/*1", "*3/*3", ""], ancestry="white")
>>> np.round(dose, 1).tolist()
[41.9, 6.0, 33.3]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# sqrt(weekly dose mg) = INTERCEPT + sum of the terms below (IWPC 2009, pharmacogenetic algorithm)
IWPC_INTERCEPT = 5.6044
IWPC_AGE_PER_DECADE = -0.2614
IWPC_HEIGHT_PER_CM = 0.0087
IWPC_WEIGHT_PER_KG = 0.0128
IWPC_VKORC1 = {"G/G": 0.0, "G/A": -0.8677, "A/A": -1.6974, "unknown": -0.4854}
IWPC_CYP2C9 = {"*1/*1": 0.0, "*1/*2": -0.5211, "*1/*3": -0.9357, "*2/*2": -1.0616, "*2/*3": -1.9206,
               "*3/*3": -2.3312, "unknown": -0.2188}
IWPC_ANCESTRY = {"white": 0.0, "asian": -0.1092, "black": -0.2760, "other": -0.1032, "unknown": -0.1032}
IWPC_ENZYME_INDUCER = 1.1816  # carbamazepine, phenytoin, rifampicin (rifampin)
IWPC_AMIODARONE = -0.5503

ArrayLike = float | Sequence | np.ndarray | str | None


def unknown_mask(values: np.ndarray) -> np.ndarray:
    """True where a categorical value is missing: None, "" or NaN."""
    arr = np.asarray(values)
    if arr.dtype.kind in "US":
        return arr == ""
    if arr.dtype.kind == "f":
        return np.isnan(arr)
    flat = [v is None or v == "" or (isinstance(v, float) and v != v) for v in arr.ravel().tolist()]
    return np.asarray(flat, bool).reshape(arr.shape)


def category_terms(values: ArrayLike, coefficients: dict[str, float], what: str) -> np.ndarray:
    """Each value's coefficient; unknown values take coefficients["unknown"]. Raises ValueError on a value
    that is neither allowed nor missing."""
    arr = np.asarray(values, dtype=object)
    unknown = unknown_mask(arr)
    labels = np.where(unknown, "unknown", arr).astype(str)
    allowed = [k for k in coefficients if k != "unknown"]
    keys = np.array(list(coefficients))
    bad = ~np.isin(labels, keys)
    if bad.any():
        raise ValueError(f"unknown {what} {arr[bad].ravel()[0]!r}; allowed: {', '.join(allowed)} "
                         "(or empty for unknown)")
    order = np.argsort(keys)
    index = order[np.searchsorted(keys, labels, sorter=order)]
    return np.array(list(coefficients.values()), float)[index]


def taken_mask(values: ArrayLike) -> np.ndarray:
    """A co-medication flag as bool; unknown (None, NaN) counts as not taken."""
    arr = np.asarray(values, dtype=object)
    return np.where(unknown_mask(arr), False, arr).astype(bool)


def _continuous(values: ArrayLike, what: str) -> np.ndarray:
    arr = np.asarray(values, float)
    if np.isnan(arr).any():
        raise ValueError(f"{what} is missing (NaN); the IWPC formula needs it: fill in a typical value first")
    return arr


def iwpc_weekly_dose_mg(age_years: ArrayLike, height_cm: ArrayLike, weight_kg: ArrayLike, vkorc1: ArrayLike,
                        cyp2c9: ArrayLike, ancestry: ArrayLike = None, enzyme_inducer: ArrayLike = False,
                        amiodarone: ArrayLike = False) -> np.ndarray:
    """The IWPC pharmacogenetic estimate of the stable weekly warfarin dose (mg), one per patient.

    Age counts in whole decades (floor(age / 10)), as the formula was fitted. Genotypes as in
    `sources.patient.genetics` ("G/A", "*1/*3"); ancestry one of `genetics.ANCESTRIES`.
    """
    age = _continuous(age_years, "age_years")
    height = _continuous(height_cm, "height_cm")
    weight = _continuous(weight_kg, "weight_kg")
    sqrt_dose = (IWPC_INTERCEPT
                 + IWPC_AGE_PER_DECADE * np.floor(age / 10.0)
                 + IWPC_HEIGHT_PER_CM * height
                 + IWPC_WEIGHT_PER_KG * weight
                 + category_terms(vkorc1, IWPC_VKORC1, "VKORC1 -1639 genotype")
                 + category_terms(cyp2c9, IWPC_CYP2C9, "CYP2C9 genotype")
                 + category_terms(ancestry, IWPC_ANCESTRY, "ancestry")
                 + IWPC_ENZYME_INDUCER * taken_mask(enzyme_inducer)
                 + IWPC_AMIODARONE * taken_mask(amiodarone))
    # the formula can go below zero only far outside its data (the square would then rise again)
    return np.atleast_1d(np.clip(sqrt_dose, 0.0, None) ** 2)

