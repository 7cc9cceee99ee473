"""Trial designs: TOML files naming the population (cohort settings, inclusion and exclusion, or a cohort file),
the arms (a dosing protocol each), the randomisation, the duration, the INR schedule, adherence, dropouts and
the endpoints' settings. Validated like the patient scenarios: a bad value is one line naming the field
(`DesignError`, a `ScenarioError`). Built-ins live in `trials/designs/*.toml`.

>>> d = load_design("eu_pact")
>>> [a.name for a in d.arms], d.duration_days, d.randomisation.block_size
(['standard', 'genotype'], 84, 4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sources.patient.scenarios import CohortConfig, LabConfig, PatientScenario
from sources.scenarios import (
    ScenarioError,
    builtin_names,
    builtin_or_path,
    format_error,
    read_builtin_or_toml,
)

BUILTIN_DIR = Path(__file__).parent / "designs"
# the columns a cohort file (`population.from`) must have: the `patients` table's covariates
COHORT_FILE_COLUMNS = ("age_years", "sex", "height_cm", "weight_kg", "ancestry", "cyp2c9", "vkorc1_1639",
                       "amiodarone", "enzyme_inducer")


class DesignError(ScenarioError):
    """A design that cannot be run; the message is one line meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Population(_Strict):
    """Who is screened: drawn by the cohort model (`cohort`) or read from a file (`from`), then the
    inclusion and exclusion criteria."""

    cohort: CohortConfig = CohortConfig()
    from_file: str | None = Field(None, alias="from",
                                  description="a .parquet or .csv cohort with the patients table's covariates")
    min_age_years: float = Field(18.0, ge=0, le=120)
    max_age_years: float = Field(120.0, ge=0, le=120)
    exclude: list[Literal["amiodarone", "enzyme_inducer"]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ages(self) -> Population:
        if self.min_age_years > self.max_age_years:
            raise ValueError(f"min_age_years {self.min_age_years:g} is above max_age_years {self.max_age_years:g}")
        if self.from_file is not None and not self.from_file.endswith((".parquet", ".csv")):
            raise ValueError(f"from must be a .parquet or .csv file, got {self.from_file!r}")
        return self


WARFARIN_PROTOCOLS = ("fixed", "standard", "genotype", "genotype_eu_pact", "twin")
METOPROLOL_PROTOCOLS = ("fixed", "cyp2d6")


class Arm(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    protocol: Literal["fixed", "standard", "genotype", "genotype_eu_pact", "twin", "cyp2d6"]
    fixed_dose_mg: float = Field(5.0, ge=0, le=400, description="the daily dose of `fixed` (and the standard dose "
                                 "`cyp2d6` scales by phenotype)")
    target_inr: float = Field(2.5, ge=1.5, le=4.0)


class Randomisation(_Strict):
    ratio: list[Annotated[int, Field(ge=1, le=10)]] = Field(default_factory=lambda: [1, 1],
                                                           description="allocation ratio, one entry per arm")
    block_size: int = Field(4, ge=1, le=100, description="permuted blocks of this many patients")
    stratify_by: list[Literal["vkorc1_1639", "cyp2c9", "cyp2d6", "sex", "ancestry", "age_over_75"]] = Field(
        default_factory=list)


class Bleeding(_Strict):
    """Major bleeding as a hazard of the true INR, constant within INR bands. The defaults follow ISCOAT (Palareti G
    et al., Lancet 1996;348:423; 2,745 patients from the start of oral anticoagulation, 2,011 patient-years): major
    and fatal bleeding 1.39 per 100 patient-years (23 major, 5 fatal), and bleeding 7.91 times as frequent at an
    INR of 4.5 or more (docs/TRIALS.md, "Adverse events")."""

    inr_band_edges: list[Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: [4.5], description="INRs where the hazard changes, increasing")
    rate_per_year: list[Annotated[float, Field(ge=0, le=5)]] = Field(
        default_factory=lambda: [0.0139, 0.0139 * 7.91],
        description="major bleeding per patient-year in each band: below the first edge, between edges, above the last")

    @model_validator(mode="after")
    def _bands(self) -> Bleeding:
        if any(b <= a for a, b in zip(self.inr_band_edges, self.inr_band_edges[1:], strict=False)):
            raise ValueError(f"inr_band_edges {self.inr_band_edges} must increase")
        if len(self.rate_per_year) != len(self.inr_band_edges) + 1:
            raise ValueError(f"rate_per_year needs {len(self.inr_band_edges) + 1} entries (one per INR band), got "
                             f"{len(self.rate_per_year)}")
        return self

    def hazard_per_day(self, inr: np.ndarray) -> np.ndarray:
        """The daily hazard at each true INR.

        >>> (Bleeding().hazard_per_day(np.array([2.5, 5.0])) * 36500).round(2).tolist()  # per 100 patient-years
        [1.39, 10.99]
        """
        band = np.searchsorted(np.asarray(self.inr_band_edges), inr, side="right")
        return np.asarray(self.rate_per_year)[band] / 365.0


class Endpoints(_Strict):
    ttr_range: tuple[float, float] = (2.0, 3.0)
    hr_target_bpm: tuple[float, float] = Field((55.0, 70.0), description="metoprolol: resting HR in control")
    bradycardia_bpm: float = Field(60.0, gt=20, description="metoprolol: bradycardia, a resting HR below this at the "
                                   "final visit (60: the Rotterdam Study's ECG definition, Bijl 2009)")
    severe_bradycardia_bpm: float = Field(50.0, gt=20, description="metoprolol: the time to the first resting HR below "
                                          "this (50: sinus bradycardia in the 2018 ACC/AHA/HRS guideline)")
    over_inr: float = Field(4.0, gt=1, description="an INR at or above this is over-anticoagulation")
    baseline_inr: float | None = Field(1.0, gt=0, description="the pre-treatment INR at day 0 that the TTR "
                                       "interpolation starts from (None: from the first INR drawn)")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    bleeding: Bleeding = Bleeding()

    @field_validator("ttr_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] < v[1]:
            raise ValueError(f"ttr_range [{v[0]}, {v[1]}] must be increasing and > 0")
        return v


class Design(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    reference: str = ""
    drug: Literal["warfarin", "metoprolol"] = "warfarin"
    population: Population = Population()
    arms: list[Arm] = Field(min_length=2, max_length=6)
    randomisation: Randomisation = Randomisation()
    duration_days: int = Field(84, ge=7, le=365)
    labs: LabConfig = LabConfig()
    dose_hour: float = Field(18.0, ge=0, lt=24)
    adherence: float = Field(1.0, ge=0, le=1, description="share of doses taken (missed at random)")
    dropout_share: float = Field(0.0, ge=0, lt=1, description="share lost to follow-up by the end (constant hazard)")
    endpoints: Endpoints = Endpoints()

    @model_validator(mode="after")
    def _consistent(self) -> Design:
        names = [a.name for a in self.arms]
        allowed = WARFARIN_PROTOCOLS if self.drug == "warfarin" else METOPROLOL_PROTOCOLS
        for arm in self.arms:
            if arm.protocol not in allowed:
                raise ValueError(f"arm {arm.name}: protocol {arm.protocol!r} is not one for {self.drug}; allowed: "
                                 f"{', '.join(allowed)}")
            if self.drug == "warfarin" and arm.fixed_dose_mg > 50:
                raise ValueError(f"arm {arm.name}: fixed_dose_mg {arm.fixed_dose_mg:g} is above 50 mg of warfarin")
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must differ, got {', '.join(names)}")
        if len(self.randomisation.ratio) != len(self.arms):
            raise ValueError(f"randomisation.ratio has {len(self.randomisation.ratio)} entries for "
                             f"{len(self.arms)} arms")
        if self.randomisation.block_size % sum(self.randomisation.ratio):
            raise ValueError(f"randomisation.block_size {self.randomisation.block_size} is not a multiple of the "
                             f"ratio's sum {sum(self.randomisation.ratio)}")
        if len(self.labs.check_days(self.duration_days + 1)) < 2:
            raise ValueError("labs: fewer than two INR draws within duration_days; the TTR needs two")
        return self

    @property
    def lab_days(self) -> list[float]:
        """INR draw days, the last on the final day at most."""
        return self.labs.check_days(self.duration_days + 1e-9)

    def arm_scenario(self, arm: Arm) -> PatientScenario:
        """The patient scenario one arm's patients run (the `runs` table's config; EU-PACT's genotype-guided
        initiation, a trial protocol, as the simulator's nearest, `genotype`: the description names the arm's)."""
        protocol = "genotype" if arm.protocol == "genotype_eu_pact" else arm.protocol
        drug = {"drug": "metoprolol", "protocol": "fixed", "metoprolol_dose_mg": arm.fixed_dose_mg} if (
            self.drug == "metoprolol") else {"protocol": protocol, "fixed_dose_mg": arm.fixed_dose_mg}
        return PatientScenario(name=f"{self.name}.{arm.name}", description=f"{self.name} trial, arm {arm.name} "
                               f"({arm.protocol})", target_inr=arm.target_inr, dose_hour=self.dose_hour,
                               adherence=self.adherence, days=float(self.duration_days), vitals_every_min=60.0,
                               labs=self.labs, cohort=self.population.cohort, **drug)

    def with_overrides(self, **changes: object) -> Design:
        return parse_design({**self.model_dump(by_alias=True), **changes}, self.name)


def design_names() -> list[str]:
    return builtin_names(BUILTIN_DIR)


def parse_design(data: dict, source: str = "design") -> Design:
    try:
        return Design.model_validate(data)
    except ValidationError as err:
        raise DesignError(format_error(source, err).replace(": scenario:", ": design:")) from None


def load_design(name_or_path: str | Path) -> Design:
    """A built-in by name, or a TOML file by path. A relative `population.from` is read beside the design's
    file, as an include is, not from wherever the command happens to run."""
    data, source = read_builtin_or_toml(name_or_path, BUILTIN_DIR, "trial design", DesignError)
    design = parse_design(data, source)
    cohort_file = design.population.from_file
    if cohort_file is None or Path(cohort_file).is_absolute():
        return design
    beside = builtin_or_path(name_or_path, BUILTIN_DIR).parent
    population = design.population.model_copy(update={"from_file": str(beside / cohort_file)})
    return design.model_copy(update={"population": population})
