"""Prognostic covariate adjustment (PROCOVA; Schuler A et al., Int J Biostat 2022;18:329; EMA qualification
opinion 2022): a prognostic model, trained on a separate historical control cohort (simulated here with its own
seed stream: never the trial's patients), predicts each trial patient's outcome under control from baseline
covariates only; the trial is then analysed by ANCOVA on that score. With a correlation rho between score and
outcome the residual variance falls to about 1 - rho^2 of the unadjusted one, and so does the sample size at
equal power.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from sources.patient.cohort import Cohort
from sources.patient.genetics import ANCESTRIES, CYP2C9_GENOTYPES, VKORC1_GENOTYPES
from trials.design import Design
from trials.endpoints import patient_endpoints
from trials.simulate import screen, simulate_course

HISTORICAL_SEED_OFFSET = 1_000_003  # the historical cohort's seed: the trial's plus this (other patients)
HISTORICAL_PATIENTS = 2000


def baseline_features(cohort: Cohort) -> np.ndarray:
    """What is known at randomisation: age, height, weight, sex, ancestry, genotypes, co-medications."""
    cols = [cohort.age_years, cohort.height_cm, cohort.weight_kg, cohort.sex == "M",
            cohort.amiodarone, cohort.enzyme_inducer]
    cols += [cohort.ancestry == a for a in ANCESTRIES[1:]]
    cols += [cohort.cyp2c9 == g for g in CYP2C9_GENOTYPES[1:]]
    cols += [cohort.vkorc1_1639 == g for g in VKORC1_GENOTYPES[1:]]
    return np.column_stack([np.asarray(c, float) for c in cols])


@dataclass
class PrognosticModel:
    """A ridge regression of the control outcome on the baseline features and their pairwise products (the
    genotypes act together: CYP2C9 x VKORC1, age x genotype); tried beside gradient boosting, which did no better
    on held-out patients (rho 0.18 vs 0.24, docs/TRIALS.md) and took four times as long."""

    model: object
    n_train: int
    train_r2_held_out: float

    def score(self, cohort: Cohort) -> np.ndarray:
        return self.model.predict(baseline_features(cohort))


def train(design: Design, seed: int, n_patients: int = HISTORICAL_PATIENTS) -> PrognosticModel:
    """Simulate `n_patients` historical controls (the design's first arm, its own seed) and fit the model to
    their primary endpoint (TTR; for metoprolol the heart-rate reduction)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    hist_seed = seed + HISTORICAL_SEED_OFFSET
    cohort, _ = screen(design, n_patients, hist_seed)
    course = simulate_course(design, cohort, np.zeros(n_patients, int), hist_seed)
    ttr = patient_endpoints(design, course).primary
    keep = ~np.isnan(ttr)
    x, y = baseline_features(cohort)[keep], ttr[keep]

    def model() -> object:
        return make_pipeline(PolynomialFeatures(2, interaction_only=True, include_bias=False),
                             RidgeCV(alphas=np.logspace(-2, 3, 12)))

    held_out = np.arange(len(y)) % 4 == 0  # R^2 on a quarter left out, then the model refitted on all
    r2 = float(r2_score(y[held_out], model().fit(x[~held_out], y[~held_out]).predict(x[held_out])))
    return PrognosticModel(model().fit(x, y), int(keep.sum()), r2)


def required_n_per_arm(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Normal-approximation sample size per arm of a two-arm comparison of means.

    >>> round(required_n_per_arm(0.3, 1.0))  # d 0.3, 80 % power: 174 per arm (REFERENCES-patient.md, PROCOVA)
    174
    """
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return 2 * (z * sd / effect) ** 2
