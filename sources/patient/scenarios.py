"""Patient scenarios: TOML recipes for a cohort on a drug (dosing protocol, length, vitals interval, lab days,
cohort mix, adverse events with onset and magnitude), the patient plant's analogue of `sources.scenarios`.

Built-ins live in `sources/patient/scenarios/*.toml`; a user passes a name or a path. Every field is validated
and a bad value is reported as one line naming the field and what is allowed (`ScenarioError`, the same class
the bioreactor's scenarios raise).

>>> sc = load_patient_scenario("warfarin_fixed_5mg")
>>> sc.protocol, sc.fixed_dose_mg, sc.days, sc.labs.check_days(sc.days)[:8]
('fixed', 5.0, 42.0, [3.0, 5.0, 7.0, 10.0, 14.0, 21.0, 28.0, 35.0])
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.events import VITAL_SIGNALS
from sources.patient.genetics import ANCESTRIES
from sources.scenarios import ScenarioError, builtin_names, format_error, read_builtin_or_toml

BUILTIN_DIR = Path(__file__).parent / "scenarios"

EventName = Literal[
    "over_anticoagulation", "major_bleed", "subtherapeutic", "bradycardia", "hypotension", "sepsis",
    "drug_interaction", "nonadherence", "sensor_drift", "sensor_stuck", "sensor_dropout",
]
EVENT_NAMES: tuple[str, ...] = EventName.__args__  # type: ignore[attr-defined]
SENSOR_EVENTS = ("sensor_drift", "sensor_stuck", "sensor_dropout")
# the INR check days of the standard protocol (REFERENCES-patient.md, "Dosing protocols"), then weekly
INR_CHECK_DAYS: tuple[float, ...] = (3.0, 5.0, 7.0, 10.0, 14.0, 21.0, 28.0)
INR_CHECK_EVERY_DAYS_AFTER = 7.0

PositiveRange = tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]

__all__ = ["EVENT_NAMES", "ScenarioError", "PatientScenario", "load_patient_scenario", "patient_scenario_names",
           "parse_patient_scenario"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabConfig(_Strict):
    """When blood is drawn (days since the first dose, at `hour`) and how late the result comes back."""

    days: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: list(INR_CHECK_DAYS))
    then_every_days: float | None = Field(INR_CHECK_EVERY_DAYS_AFTER, gt=0,
                                          description="after the last listed day, a draw this often (None: no more)")
    hour: float = Field(8.0, ge=0, lt=24, description="time of day of the draw")
    delay_h: float | PositiveRange = Field(6.0, description="reported_ts - sample_ts; [lo, hi] draws per sample")

    @field_validator("days")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        return sorted(set(v))

    def check_days(self, days: float) -> list[float]:
        """The draw days before the end of a run of `days` days."""
        out = [d for d in self.days if d < days]
        if self.then_every_days is not None:
            d = (self.days[-1] if self.days else 0.0) + self.then_every_days
            while d < days:
                out.append(d)
                d += self.then_every_days
        return out


class CohortConfig(_Strict):
    """Who the patients are: ancestry mix and co-medication shares (the rest is drawn by the population model)."""

    ancestry: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"white": 0.6, "black": 0.15, "asian": 0.15, "other": 0.1})
    amiodarone_share: float = Field(0.0, ge=0, le=1, description="share on amiodarone from the start")
    enzyme_inducer_share: float = Field(0.0, ge=0, le=1, description="share on an enzyme inducer from the start")

    @field_validator("ancestry")
    @classmethod
    def _known_ancestries(cls, v: dict[str, float]) -> dict[str, float]:
        for key in v:
            if key not in ANCESTRIES:
                raise ValueError(f"unknown ancestry {key!r}; allowed: {', '.join(ANCESTRIES)}")
        if sum(v.values()) <= 0:
            raise ValueError("ancestry shares must sum to more than 0")
        return v


class EventSpec(_Strict):
    """An adverse event or monitor fault, as `FaultSpec` is for reactors. A range [lo, hi] draws per patient."""

    event: EventName
    onset_day: float | PositiveRange = Field(description="days after the first dose")
    duration_h: float | PositiveRange = 24.0
    magnitude: float | PositiveRange = 1.0
    share: float = Field(1.0, ge=0, le=1, description="share of patients who get it")
    signal: str | None = Field(None, description="the faulty vital, for sensor_* events")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str | None) -> str | None:
        if v is not None and v not in VITAL_SIGNALS:
            raise ValueError(f"unknown vital {v!r}; allowed: {', '.join(VITAL_SIGNALS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EventSpec:
        for name in ("onset_day", "duration_h", "magnitude"):
            v = getattr(self, name)
            if isinstance(v, tuple) and v[0] > v[1]:
                raise ValueError(f"{name} range [{v[0]}, {v[1]}] is reversed")
        if self.event in SENSOR_EVENTS and self.signal is None:
            raise ValueError(f"{self.event} needs the faulty vital's signal, one of {', '.join(VITAL_SIGNALS)}")
        if self.event not in SENSOR_EVENTS and self.signal is not None:
            raise ValueError(f"signal is only for sensor_* events, not {self.event}")
        return self


class PatientScenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    drug: Literal["warfarin", "metoprolol", "both"] = "warfarin"
    protocol: Literal["fixed", "standard", "genotype", "twin"] = "fixed"
    fixed_dose_mg: float = Field(5.0, ge=0, le=50, description="warfarin daily dose of the fixed protocol")
    metoprolol_dose_mg: float = Field(100.0, ge=0, le=400, description="metoprolol daily dose")
    dose_hour: float = Field(18.0, ge=0, lt=24, description="time of day the doses are taken")
    adherence: float = Field(1.0, ge=0, le=1, description="share of doses taken (missed at random)")
    target_inr: float = Field(2.5, ge=1.5, le=4.0)
    days: float = Field(42.0, gt=0, le=365)
    vitals_every_min: float = Field(5.0, ge=1, le=60)
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    labs: LabConfig = LabConfig()
    cohort: CohortConfig = CohortConfig()
    events: list[EventSpec] = Field(default_factory=list)

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _protocol_fits_drug(self) -> PatientScenario:
        if self.drug == "metoprolol" and self.protocol != "fixed":
            raise ValueError(f"protocol {self.protocol!r} titrates warfarin; a metoprolol-only scenario is 'fixed'")
        return self

    @property
    def takes_warfarin(self) -> bool:
        return self.drug in ("warfarin", "both")

    @property
    def takes_metoprolol(self) -> bool:
        return self.drug in ("metoprolol", "both")

    def with_overrides(self, **changes: object) -> PatientScenario:
        return parse_patient_scenario({**self.model_dump(), **changes}, self.name)


def patient_scenario_names() -> list[str]:
    return builtin_names(BUILTIN_DIR)


def parse_patient_scenario(data: dict, source: str = "scenario") -> PatientScenario:
    try:
        return PatientScenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(format_error(source, err)) from None


def is_patient_scenario_file(path: Path) -> bool:
    """Whether a TOML file reads as a patient scenario (it names a drug or protocol, or patient events)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):  # not a readable TOML file: the loader says why
        return False
    return bool({"drug", "protocol", "events", "cohort", "vitals_every_min"} & set(data))


def load_patient_scenario(name_or_path: str | Path) -> PatientScenario:
    """A built-in by name, or a TOML file by path."""
    return parse_patient_scenario(*read_builtin_or_toml(name_or_path, BUILTIN_DIR, "patient scenario"))
