"""Warfarin dosing protocols, the arms of a virtual trial: each decides every patient's daily dose from the day
of therapy and the latest INR *reported* (NaN before the first). Stateful per patient (current dose, doses to
hold, the INR already acted on), vectorised over patients.

- `fixed`: the same dose every day (5 mg: the PK/PD reference, no titration).
- `standard`: loading 10, 5, 5 mg on days 1-3 (5, 5, 5 mg above 75 years; EU-PACT's control arm), then 5 mg and
  the INR-titration nomogram below at each new INR.
- `genotype`: the IWPC pharmacogenetic estimate of the stable dose (`sources.patient.iwpc`), one and a half times
  that on days 1-2 as a loading, then the nomogram.
- `twin`: a hook: `advisor(day, last_inr, current_dose_mg) -> dose mg per patient` (the personalised twin's
  advice); without an advisor it behaves as `genotype`.

The nomogram (ours: the trial protocols used local practice; written after common anticoagulation-clinic
nomograms, docs/MODEL-PATIENT.md, "Dosing protocols"), for a target range of target_inr +- 0.5, on the daily dose:
  early INRs (drawn before day 7, still rising to steady state): in range or above -> -25 % (standard only),
  above range + 0.5 -> -50 %, >= target + 1.5 -> hold one dose then -50 %; below range -> unchanged;
  later: < target - 1.0 -> +20 %; below range -> +10 %; in range -> unchanged; up to 1.0 above -> -10 %,
  up to 1.5 above -> -15 %; up to 2.5 above -> hold one dose, then -15 %; higher -> hold two doses, then -20 %.
Doses are whole or half tablets (0.5 mg steps), 0.5-15 mg; a change always moves at least one step.

>>> import numpy as np
>>> from sources.patient.cohort import Cohort
>>> cohort = Cohort.typical(["*1/*1", "*1/*1"], ["G/G", "G/G"])
>>> p = make_protocol("standard", cohort)
>>> [p.next_doses(d, np.full(2, np.nan)).tolist() for d in range(3)]
[[10.0, 10.0], [5.0, 5.0], [5.0, 5.0]]
>>> p.next_doses(9, np.array([1.6, 3.3])).tolist()  # a day-10 INR: below range up 10 %, above down 10 %
[5.5, 4.5]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sources.patient.iwpc import iwpc_weekly_dose_mg

FIXED_DOSE_MG = 5.0
LOADING_MG = (10.0, 5.0, 5.0)  # days 1-3, age <= LOADING_AGE_LIMIT_YEARS
LOADING_ELDERLY_MG = (5.0, 5.0, 5.0)
LOADING_AGE_LIMIT_YEARS = 75.0
STANDARD_START_MG = 5.0  # from day 4 until the nomogram changes it
GENOTYPE_LOADING_FACTOR, GENOTYPE_LOADING_DAYS = 1.5, 2
EARLY_PHASE_DAYS = 7  # INRs of therapy days before this are the initiation's
TABLET_STEP_MG, MIN_DOSE_MG, MAX_DOSE_MG = 0.5, 0.5, 15.0
RANGE_HALF_WIDTH = 0.5
# later phase: (INR above target by less than this, factor on the dose, doses held); below-range rows first
MAINTENANCE_NOMOGRAM: tuple[tuple[float, float, int], ...] = (
    (-1.0, 1.20, 0), (-RANGE_HALF_WIDTH, 1.10, 0), (RANGE_HALF_WIDTH + 1e-9, 1.00, 0), (1.0 + 1e-9, 0.90, 0),
    (1.5 + 1e-9, 0.85, 0), (2.5 + 1e-9, 0.85, 1), (np.inf, 0.80, 2),
)
Advisor = Callable[[int, np.ndarray, np.ndarray], np.ndarray]


def round_to_tablets(dose_mg: np.ndarray, previous_mg: np.ndarray | None = None) -> np.ndarray:
    """Half-tablet steps within the allowed range; with `previous_mg`, a change moves at least one step."""
    rounded = np.round(np.asarray(dose_mg, float) / TABLET_STEP_MG) * TABLET_STEP_MG
    if previous_mg is not None:
        stuck = (rounded == previous_mg) & ~np.isclose(dose_mg, previous_mg)
        rounded = np.where(stuck, previous_mg + np.sign(dose_mg - previous_mg) * TABLET_STEP_MG, rounded)
    return np.clip(rounded, MIN_DOSE_MG, MAX_DOSE_MG)


class DosingProtocol:
    """The base: a constant dose. `next_doses` is called once per dosing day, in order."""

    name = "fixed"

    def __init__(self, cohort, target_inr: float = 2.5, dose_mg: float = FIXED_DOSE_MG) -> None:
        if not 1.5 <= target_inr <= 4.0:
            raise ValueError(f"target_inr {target_inr!r} must be between 1.5 and 4.0")
        if dose_mg < 0:
            raise ValueError(f"dose_mg {dose_mg!r} must be >= 0")
        self.n = len(cohort)
        self.cohort = cohort
        self.target_inr = float(target_inr)
        self.dose_mg = np.full(self.n, float(dose_mg))
        self.hold_left = np.zeros(self.n, int)
        self.seen_inr = np.full(self.n, np.nan)
        self.seen_inr_h = np.full(self.n, np.nan)

    def _new(self, last_inr: np.ndarray, inr_time_h: np.ndarray | None) -> np.ndarray:
        """Which patients have an INR not yet acted on (by its report time if given, else by its value)."""
        last_inr = np.asarray(last_inr, float)
        if last_inr.shape != (self.n,):
            raise ValueError(f"last_inr has shape {last_inr.shape}; expected ({self.n},)")
        if inr_time_h is not None:
            t = np.asarray(inr_time_h, float)
            new = ~np.isnan(last_inr) & ~np.isnan(t) & ~(t == self.seen_inr_h)
            self.seen_inr_h = np.where(new, t, self.seen_inr_h)
        else:
            new = ~np.isnan(last_inr) & ~(last_inr == self.seen_inr)
        self.seen_inr = np.where(new, last_inr, self.seen_inr)
        return new

    def next_doses(self, day: int, last_inr: np.ndarray, inr_time_h: np.ndarray | None = None) -> np.ndarray:
        """Today's warfarin dose (mg) per patient; `day` 0 is the first day of therapy."""
        self._new(last_inr, inr_time_h)
        return self.dose_mg.copy()

    def _titrate(self, day: int, inr: np.ndarray, new: np.ndarray, early_reduce_in_range: bool) -> None:
        over = inr - self.target_inr  # NaN where no INR: compares False everywhere below
        factor = np.ones(self.n)
        hold = np.zeros(self.n, int)
        if day < EARLY_PHASE_DAYS:
            in_or_above = over >= -RANGE_HALF_WIDTH
            if early_reduce_in_range:
                factor = np.where(in_or_above, 0.75, factor)
            factor = np.where(over > RANGE_HALF_WIDTH + 0.5, 0.5, factor)
            hold = np.where(over >= 1.5, 1, 0)
        else:
            assigned = np.zeros(self.n, bool)
            for upper, f, h in MAINTENANCE_NOMOGRAM:
                row = ~assigned & (over < upper)
                factor = np.where(row, f, factor)
                hold = np.where(row, h, hold)
                assigned |= row
        factor = np.where(new, factor, 1.0)
        self.hold_left = np.where(new, hold, self.hold_left)
        self.dose_mg = np.where(factor != 1.0, round_to_tablets(self.dose_mg * factor, self.dose_mg), self.dose_mg)

    def _held_today(self, dose: np.ndarray) -> np.ndarray:
        held = self.hold_left > 0
        self.hold_left = np.where(held, self.hold_left - 1, self.hold_left)
        return np.where(held, 0.0, dose)


class StandardProtocol(DosingProtocol):
    name = "standard"

    def __init__(self, cohort, target_inr: float = 2.5) -> None:
        super().__init__(cohort, target_inr, STANDARD_START_MG)
        self.elderly = np.asarray(cohort.age_years, float) > LOADING_AGE_LIMIT_YEARS

    def next_doses(self, day: int, last_inr: np.ndarray, inr_time_h: np.ndarray | None = None) -> np.ndarray:
        new = self._new(last_inr, inr_time_h)
        if day < len(LOADING_MG):
            return np.where(self.elderly, LOADING_ELDERLY_MG[day], LOADING_MG[day])
        self._titrate(day, np.asarray(last_inr, float), new, early_reduce_in_range=True)
        return self._held_today(self.dose_mg.copy())


class GenotypeProtocol(DosingProtocol):
    name = "genotype"

    def __init__(self, cohort, target_inr: float = 2.5) -> None:
        super().__init__(cohort, target_inr, 0.0)
        weekly = iwpc_weekly_dose_mg(cohort.age_years, cohort.height_cm, cohort.weight_kg, cohort.vkorc1_1639,
                                     cohort.cyp2c9, cohort.ancestry, cohort.enzyme_inducer, cohort.amiodarone)
        self.predicted_mg = round_to_tablets(weekly / 7.0)
        self.dose_mg = self.predicted_mg.copy()

    def next_doses(self, day: int, last_inr: np.ndarray, inr_time_h: np.ndarray | None = None) -> np.ndarray:
        new = self._new(last_inr, inr_time_h)
        if day < GENOTYPE_LOADING_DAYS:
            return round_to_tablets(self.predicted_mg * GENOTYPE_LOADING_FACTOR)
        # the start already fits the patient: early INRs in range are left alone
        self._titrate(day, np.asarray(last_inr, float), new, early_reduce_in_range=False)
        return self._held_today(self.dose_mg.copy())


class TwinProtocol(GenotypeProtocol):
    """The twin's advice through `advisor(day, last_inr, current_dose_mg)`; the genotype arm without one."""

    name = "twin"

    def __init__(self, cohort, target_inr: float = 2.5, advisor: Advisor | None = None) -> None:
        super().__init__(cohort, target_inr)
        self.advisor = advisor

    def next_doses(self, day: int, last_inr: np.ndarray, inr_time_h: np.ndarray | None = None) -> np.ndarray:
        if self.advisor is None:
            return super().next_doses(day, last_inr, inr_time_h)
        self._new(last_inr, inr_time_h)
        advice = np.asarray(self.advisor(day, np.asarray(last_inr, float), self.dose_mg.copy()), float)
        if advice.shape != (self.n,) or np.isnan(advice).any() or (advice < 0).any():
            raise ValueError(f"the twin's advice must be {self.n} doses >= 0 mg; got shape {advice.shape}")
        self.dose_mg = np.where(advice > 0, round_to_tablets(advice), 0.0)
        return self.dose_mg.copy()


PROTOCOLS = ("fixed", "standard", "genotype", "twin")


def make_protocol(name: str, cohort, target_inr: float = 2.5, advisor: Advisor | None = None,
                  fixed_dose_mg: float = FIXED_DOSE_MG) -> DosingProtocol:
    if name == "fixed":
        return DosingProtocol(cohort, target_inr, fixed_dose_mg)
    if name == "standard":
        return StandardProtocol(cohort, target_inr)
    if name == "genotype":
        return GenotypeProtocol(cohort, target_inr)
    if name == "twin":
        return TwinProtocol(cohort, target_inr, advisor)
    raise ValueError(f"unknown dosing protocol {name!r}; allowed: {', '.join(PROTOCOLS)}")
