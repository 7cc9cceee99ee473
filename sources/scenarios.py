"""Scenarios: TOML recipes for a fed-batch run (process, feed, measurement, kinetics overrides, faults).

Built-ins live in `sources/scenarios/*.toml`; a user passes a name or a path. Every field is validated and a
bad value is reported as one line naming the field and what is allowed (`ScenarioError`).
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sources.kinetics import PARAM_NAMES
from sources.reactor import FAULT_NAMES, SIGNAL_NAMES

BUILTIN_DIR = Path(__file__).parent / "scenarios"

FaultName = Literal[
    "overfeed", "underfeed", "do_limitation", "ph_excursion", "temperature_spike", "sensor_drift",
    "sensor_stuck", "sensor_dropout", "contamination",
]
assert FaultName.__args__ == FAULT_NAMES  # type: ignore[attr-defined]

PositiveRange = tuple[Annotated[float, Field(ge=0)], Annotated[float, Field(ge=0)]]


# the built-in scenario that shows each fault archetype alone
ARCHETYPE_SCENARIOS = {
    "overfeed": "overfeed", "underfeed": "pump_omission", "do_limitation": "do_limitation",
    "ph_excursion": "ph_excursion", "temperature_spike": "temperature_spike", "sensor_drift": "sensor_drift",
    "sensor_stuck": "sensor_stuck", "sensor_dropout": "sensor_dropout", "contamination": "contamination",
}
assert tuple(ARCHETYPE_SCENARIOS) == FAULT_NAMES


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line meant for the user."""


class _Strict(BaseModel):
    # NaN slips past every bound (each comparison is False) and inf past the lower ones: the twin would integrate
    # garbage, so a setting must be a finite number
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NamesItsSensor(BaseModel):
    """A fault with an optional faulty sensor: a known signal, and required by the sensor_* faults. Shared by the
    scenario file's faults and the live fault command."""

    fault: str
    signal: str | None = Field(None, description="the faulty sensor, for sensor_* faults")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str | None) -> str | None:
        if v is not None and v not in SIGNAL_NAMES:
            raise ValueError(f"unknown signal {v!r}; allowed: {', '.join(SIGNAL_NAMES)}")
        return v

    @model_validator(mode="after")
    def _sensor_faults_name_their_signal(self) -> NamesItsSensor:
        if self.fault.startswith("sensor_") and self.signal is None:
            raise ValueError(f"{self.fault} needs the faulty sensor's signal, one of {', '.join(SIGNAL_NAMES)}")
        return self


class ProcessConfig(_Strict):
    working_volume_l: float = Field(1.6, gt=0, le=20000)
    seed_vcd_e6_per_ml: float = Field(0.4, gt=0, le=10)
    seed_viability_pct: float = Field(97.0, gt=0, le=100)
    glucose_g_l: float = Field(6.0, ge=0, le=50)
    glutamine_mm: float = Field(8.0, ge=0, le=50)
    osmolality_mosm_kg: float = Field(300.0, ge=150, le=600)
    bicarbonate_mm: float = Field(26.0, gt=0, le=100)
    do_setpoint_pct: float = Field(40.0, gt=0, le=100)
    ph_setpoint: float = Field(7.0, ge=6.5, le=7.6)
    ph_deadband: float = Field(0.05, ge=0, le=0.3)
    temp_setpoint_c: float = Field(36.8, ge=30, le=39)
    temp_shift_c: float = Field(33.0, ge=28, le=39)
    temp_shift_day: float | None = Field(6.0, ge=0)
    agitation_min_rpm: float = Field(90.0, gt=0)
    agitation_max_rpm: float = Field(220.0, gt=0)
    air_min_sccm: float = Field(15.0, ge=0)
    air_max_sccm: float = Field(60.0, ge=0)
    o2_max_sccm: float = Field(70.0, ge=0)
    co2_max_sccm: float = Field(40.0, ge=0)
    base_max_ml_min: float = Field(0.25, ge=0)
    do_kp: float = Field(0.6, ge=0)
    do_ki_1_h: float = Field(3.0, ge=0)
    ph_kp: float = Field(1.0, ge=0)
    ph_ki_1_h: float = Field(10.0, ge=0)
    sample_ml: float = Field(4.0, ge=0)
    variability: float = Field(0.04, ge=0, le=0.5, description="log-normal spread of cell kinetics per reactor")

    @model_validator(mode="after")
    def _ranges(self) -> ProcessConfig:
        if self.agitation_max_rpm < self.agitation_min_rpm:
            raise ValueError("agitation_max_rpm must be >= agitation_min_rpm")
        if self.air_max_sccm < self.air_min_sccm:
            raise ValueError("air_max_sccm must be >= air_min_sccm")
        return self


class FeedConfig(_Strict):
    mode: Literal["bolus", "continuous"] = "bolus"
    days: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: list(range(2, 14)))
    hour: float = Field(9.0, ge=0, lt=24, description="time of day of each bolus")
    percent_of_volume: float = Field(4.0, ge=0, le=50, description="bolus size, % of the initial volume")
    pump_ml_min: float = Field(2.0, gt=0)
    continuous_start_day: float = Field(3.0, ge=0)
    glucose_g_l: float = Field(140.0, ge=0, le=700)
    glutamine_mm: float = Field(45.0, ge=0, le=200)
    osmolality_salts_mosm_kg: float = Field(500.0, ge=0, le=5000)


class MeasurementConfig(_Strict):
    noise_scale: float = Field(1.0, ge=0, le=20)
    drift_scale: float = Field(1.0, ge=0, le=20)
    spikes_per_day: float = Field(0.1, ge=0, le=100, description="per sensor")
    assay_hour: float = Field(8.0, ge=0, lt=24)
    assay_every_h: float = Field(24.0, gt=0)
    assay_delay_h: float = Field(6.0, ge=0, le=240, description="lab delay: reported_ts - sample_ts")


class FaultSpec(NamesItsSensor, _Strict):
    fault: FaultName
    start_day: float | PositiveRange = Field(description="onset, days after inoculation; [lo, hi] draws per reactor")
    duration_h: float | PositiveRange = 24.0
    magnitude: float | PositiveRange = 1.0
    reactors: Literal["all"] | list[Annotated[int, Field(ge=1)]] = "all"

    @model_validator(mode="after")
    def _ranges_in_order(self) -> FaultSpec:
        for name in ("start_day", "duration_h", "magnitude"):
            v = getattr(self, name)
            if isinstance(v, tuple) and v[0] > v[1]:
                raise ValueError(f"{name} range [{v[0]}, {v[1]}] is reversed")
        return self


class Scenario(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    days: float = Field(14.0, gt=0, le=60)
    tick_s: float = Field(60.0, ge=1, le=3600)
    start: datetime = datetime(2026, 1, 5, tzinfo=UTC)
    process: ProcessConfig = ProcessConfig()
    feed: FeedConfig = FeedConfig()
    measurement: MeasurementConfig = MeasurementConfig()
    kinetics: dict[str, float] = Field(default_factory=dict)
    faults: list[FaultSpec] = Field(default_factory=list)

    @field_validator("kinetics")
    @classmethod
    def _known_params(cls, v: dict[str, float]) -> dict[str, float]:
        for key, value in v.items():
            if key not in PARAM_NAMES:
                raise ValueError(f"unknown kinetic parameter {key!r}; allowed: {', '.join(PARAM_NAMES)}")
            if value < 0:  # rates, yields, constants, temperatures in C: none is negative
                raise ValueError(f"kinetic parameter {key} must be >= 0, got {value:g}")
        return v

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v if v.tzinfo else v.replace(tzinfo=UTC)

    def with_overrides(self, **changes: object) -> Scenario:
        return parse_scenario({**self.model_dump(), **changes}, self.name)


def builtin_names(folder: Path = BUILTIN_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


def builtin_or_path(name_or_path: str | Path, folder: Path) -> Path:
    """The file a name stands for: the built-in `folder/<name>.toml` for a bare name that has one, else the path."""
    path = Path(name_or_path)
    return folder / f"{name_or_path}.toml" if not path.suffix and (folder / f"{name_or_path}.toml").exists() \
        else path


def read_builtin_or_toml(name_or_path: str | Path, folder: Path, what: str,
                         error: type[ScenarioError] | None = None) -> tuple[dict, str]:
    """The TOML of a built-in in `folder` by name, or of a file by path, as (data with its `name`, file name);
    an unknown name or bad TOML raises `error` (ScenarioError by default) naming `what` and the built-ins."""
    error = error or ScenarioError
    path = builtin_or_path(name_or_path, folder)
    if not path.is_file():
        raise error(f"unknown {what} {str(name_or_path)!r}: not a file; built-ins: {', '.join(builtin_names(folder))}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise error(f"{path.name}: invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise error(f"{path.name}: not a text (UTF-8) file; a {what} is a TOML file") from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror}") from None
    data.setdefault("name", path.stem)
    return data, path.name


def format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"] if not str(x).startswith(("function-", "tuple[")))
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc or 'scenario'}: {msg}{more}"


def parse_scenario(data: dict, source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(format_error(source, err)) from None


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A built-in by name, or a TOML file by path."""
    return parse_scenario(*read_builtin_or_toml(name_or_path, BUILTIN_DIR, "scenario"))
