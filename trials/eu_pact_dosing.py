"""EU-PACT's genotype-guided initiation (Pirmohamed M et al., N Engl J Med 2013;369:2294), the trial protocol
`genotype_eu_pact`: not the simulator's `genotype` protocol (IWPC dose, 1.5x on days 1-2), but the trial's own
algorithms:

- days 1-3, the loading doses of Avery P et al. (Clin Pharmacol Ther 2011;90:701): D is the daily maintenance dose
  the IWPC pharmacogenetic formula predicts (EU-PACT's version: age, height, weight, VKORC1, CYP2C9, amiodarone;
  no ancestry or enzyme-inducer terms), k the S-warfarin elimination rate of the CYP2C9 genotype, f = exp(-24 k)
  the share left after a day and LD3 = D / ((1 - f)(1 + f + f^2)) the daily dose whose three doses load the
  body with what steady state on D holds; the doses are 1.5 LD3 - 0.5 D, LD3, and 0.5 LD3 + 0.5 D;
- days 4 and 5, the dose revised with the INR of day 4 by Lenzini P et al.'s algorithm (Clin Pharmacol Ther
  2010;87:572): ln(weekly dose) linear in age, ln(INR), the VKORC1 -1639 A and CYP2C9 *2 / *3 allele counts, body
  surface area, target INR, amiodarone and the doses of days 2 and 1 (Dose-2, Dose-3: 2 and 3 days before the INR);
- from day 6, routine practice: the INR-titration nomogram shared with the standard arm
  (`sources.patient.protocols`), from the revised dose.

The formulas and coefficients follow an open implementation of EU-PACT's initiation (the `reil` package's
`IWPC.modified_pg` and its Lenzini agent, after the simulated trials of Ravvaz K et al. 2017; EU-PACT's appendix
itself was not at hand). Lenzini's genotype terms are counted per allele.

>>> import numpy as np
>>> from sources.patient.cohort import Cohort
>>> cohort = Cohort.typical(["*1/*1", "*3/*3"], ["G/G", "A/A"])
>>> p = EuPactGenotypeProtocol(cohort)
>>> [p.next_doses(d, np.full(2, np.nan)).tolist() for d in range(3)]  # loading, from 5.5 and 0.5 mg/day
[[8.5, 2.0], [7.5, 1.5], [6.5, 1.0]]
>>> p.next_doses(3, np.array([1.3, 2.6])).tolist()  # day 4: revised by the day-4 INR
[6.5, 1.5]
"""

from __future__ import annotations

import numpy as np

from sources.patient.iwpc import iwpc_weekly_dose_mg
from sources.patient.protocols import GenotypeProtocol, round_to_tablets

# S-warfarin elimination rate (1/h) by CYP2C9 genotype, the loading algorithm's k (Avery 2011, EU-PACT appendix)
ELIMINATION_PER_H = {"*1/*1": 0.0189, "*1/*2": 0.0158, "*1/*3": 0.0132, "*2/*2": 0.0130, "*2/*3": 0.0090,
                     "*3/*3": 0.0075}
LOADING_DAYS = 3
REVISION_DAYS = (3, 4)  # therapy days 4 and 5 (day 0 is the first dose), on the day-4 INR
# Lenzini 2010: ln(weekly dose mg) = intercept + the terms below
LENZINI_INTERCEPT = 3.10894
LENZINI_AGE_PER_YEAR = -0.00767
LENZINI_LN_INR = -0.51611
LENZINI_VKORC1_A_PER_ALLELE = -0.23032
LENZINI_CYP2C9_2_PER_ALLELE = -0.14745
LENZINI_CYP2C9_3_PER_ALLELE = -0.30770
LENZINI_BSA_PER_M2 = 0.24597
LENZINI_TARGET_INR = 0.26729
LENZINI_AMIODARONE = -0.10350
LENZINI_DOSE_DAYS_BEFORE = {2: 0.01690, 3: 0.02018, 4: 0.01065}  # per mg taken that many days before the INR


def body_surface_area_m2(height_cm: np.ndarray, weight_kg: np.ndarray) -> np.ndarray:
    """Mosteller's formula."""
    return np.sqrt(np.asarray(height_cm, float) * np.asarray(weight_kg, float) / 3600.0)


def allele_count(genotypes: np.ndarray, allele: str) -> np.ndarray:
    """How many copies of `allele` each genotype string ("*1/*3", "G/A") holds."""
    return np.array([g.split("/").count(allele) for g in np.asarray(genotypes, str)], float)


class EuPactGenotypeProtocol(GenotypeProtocol):
    name = "genotype_eu_pact"

    def __init__(self, cohort, target_inr: float = 2.5) -> None:
        super().__init__(cohort, target_inr)
        daily_mg = iwpc_weekly_dose_mg(cohort.age_years, cohort.height_cm, cohort.weight_kg, cohort.vkorc1_1639,
                                       cohort.cyp2c9, "white", False, cohort.amiodarone) / 7.0
        kept = np.exp(-24.0 * np.array([ELIMINATION_PER_H[g] for g in cohort.cyp2c9]))
        ld3 = daily_mg / ((1.0 - kept) * (1.0 + kept + kept**2))
        self.loading_mg = round_to_tablets(np.stack([1.5 * ld3 - 0.5 * daily_mg, ld3, 0.5 * ld3 + 0.5 * daily_mg],
                                                    axis=1))
        self.predicted_mg = round_to_tablets(daily_mg)
        self.dose_mg = self.predicted_mg.copy()

    def revised_mg(self, inr: np.ndarray) -> np.ndarray:
        """Lenzini's revision on an INR drawn on the morning of day 4, after the three loading doses."""
        c = self.cohort
        doses_before = sum(coef * (self.loading_mg[:, LOADING_DAYS - days] if days <= LOADING_DAYS else 0.0)
                           for days, coef in LENZINI_DOSE_DAYS_BEFORE.items())
        ln_weekly = (LENZINI_INTERCEPT + LENZINI_AGE_PER_YEAR * np.asarray(c.age_years, float)
                     + LENZINI_LN_INR * np.log(inr)
                     + LENZINI_VKORC1_A_PER_ALLELE * allele_count(c.vkorc1_1639, "A")
                     + LENZINI_CYP2C9_2_PER_ALLELE * allele_count(c.cyp2c9, "*2")
                     + LENZINI_CYP2C9_3_PER_ALLELE * allele_count(c.cyp2c9, "*3")
                     + LENZINI_BSA_PER_M2 * body_surface_area_m2(c.height_cm, c.weight_kg)
                     + LENZINI_TARGET_INR * self.target_inr
                     + LENZINI_AMIODARONE * np.asarray(c.amiodarone, float) + doses_before)
        return round_to_tablets(np.exp(ln_weekly) / 7.0)

    def next_doses(self, day: int, last_inr: np.ndarray, inr_time_h: np.ndarray | None = None) -> np.ndarray:
        if day < LOADING_DAYS:
            self._new(last_inr, inr_time_h)
            return self.loading_mg[:, day].copy()
        if day == REVISION_DAYS[0]:
            self._new(last_inr, inr_time_h)
            inr = np.asarray(last_inr, float)
            have = ~np.isnan(inr) & (inr > 0)
            self.dose_mg = np.where(have, self.revised_mg(np.where(have, inr, 1.0)), self.predicted_mg)
            return self.dose_mg.copy()
        if day in REVISION_DAYS:
            # the day-4 dose again; an INR reported since is left for routine practice to act on from day 6
            return self.dose_mg.copy()
        return super().next_doses(day, last_inr, inr_time_h)
