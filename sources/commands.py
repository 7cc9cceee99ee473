"""Commands to a running reactor, validated by one set of models at both doors: the dashboard's HTTP routes and
the plant feed's `biopilot.control.<reactor>` subject (anyone on the broker can publish there).

Every number is finite and every setpoint has a range (`SETPOINT_LIMITS`): a NaN or an infinity written into a
controller would turn the reactor's state to NaN for the rest of the batch.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sources.reactor import CONTROL_NAMES, FAULT_NAMES
from sources.scenarios import NamesItsSensor

# The range each live setpoint may be set to (inclusive), in the unit its name ends with. The process ones are
# the scenario model's own ranges (`sources.scenarios.ProcessConfig`); the flows and pumps are sized for the
# largest working volume a scenario allows (20,000 L), so a bench reactor's values sit well inside them.
SETPOINT_LIMITS: dict[str, tuple[float, float]] = {
    "do_setpoint_pct": (1.0, 100.0),        # % of air saturation; the DO loop divides by max(setpoint, 1)
    "ph_setpoint": (6.5, 7.6),              # as ProcessConfig: CHO cultures die outside it
    "ph_deadband": (0.0, 0.3),              # pH units, as ProcessConfig
    "temp_setpoint_c": (30.0, 39.0),        # as ProcessConfig
    "temp_shift_c": (28.0, 39.0),           # the temperature after the shift, as ProcessConfig
    "temp_shift_h": (0.0, 1440.0),          # hours after inoculation; 60 days is the longest scenario
    "agitation_min_rpm": (10.0, 500.0),     # impeller speed: CHO cells tolerate little shear above that
    "agitation_max_rpm": (10.0, 500.0),
    "air_min_sccm": (0.0, 1e7),             # gas flows: up to 0.5 vvm at 20,000 L
    "air_max_sccm": (0.0, 1e7),
    "o2_max_sccm": (0.0, 1e7),
    "co2_max_sccm": (0.0, 1e7),
    "base_max_ml_min": (0.0, 1e4),          # base pump
    "feed_pump_ml_min": (0.01, 1e5),        # > 0: a bolus lasts volume / pump speed
    "do_kp": (0.0, 100.0),                  # PI gains: dimensionless and per hour
    "do_ki_1_h": (0.0, 1000.0),
    "ph_kp": (0.0, 100.0),
    "ph_ki_1_h": (0.0, 1000.0),
    "sample_ml": (0.0, 1000.0),             # volume drawn per daily sample
    "continuous_feed_ml_h": (0.0, 1e5),     # a 20,000 L run fed 4 % of its volume a day needs ~3e4 mL/h
    "continuous_feed_start_h": (0.0, 1440.0),
    "continuous_feed_end_h": (0.0, 1440.0),
}
assert tuple(SETPOINT_LIMITS) == CONTROL_NAMES


class CommandError(ValueError):
    """A command that cannot be applied; the message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _not_a_bool(v: object) -> object:
    """JSON true/false is not a number: lax validation would make `"value": true` a DO setpoint of 1 %."""
    if isinstance(v, bool):
        raise ValueError(f"must be a valid number, not {str(v).lower()}")
    return v


class ControlCommand(_Strict):
    """A setpoint change (`name`, `value`), a feed bolus (`volume_ml`) or a stop of the whole plant."""

    type: Literal["setpoint", "feed", "stop"]
    name: str | None = Field(None, description=f"setpoint name, one of: {', '.join(CONTROL_NAMES)}")
    value: float | None = Field(None, description="within the setpoint's range (see `name`): "
                                + "; ".join(f"{k} {lo:g}..{hi:g}" for k, (lo, hi) in SETPOINT_LIMITS.items()))
    volume_ml: float | None = Field(None, gt=0, le=2000)
    changed_by: str | None = Field(None, max_length=200, description="who made the change (the annotation says)")

    _numbers = field_validator("value", "volume_ml", mode="before")(_not_a_bool)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in CONTROL_NAMES:
            raise ValueError(f"unknown setpoint {v!r}; allowed: {', '.join(CONTROL_NAMES)}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> ControlCommand:
        if self.type == "setpoint":
            if self.name is None or self.value is None:
                raise ValueError("a setpoint command needs name and value")
            lo, hi = SETPOINT_LIMITS[self.name]
            if not lo <= self.value <= hi:
                raise ValueError(f"{self.name} must be within {lo:g}..{hi:g}, got {self.value:g}")
        if self.type == "feed" and self.volume_ml is None:
            raise ValueError("a feed command needs volume_ml")
        return self


class FaultInjection(NamesItsSensor, _Strict):
    # optional here, so the JSON published on the control subject (README) is also a valid HTTP body
    type: Literal["fault"] = "fault"
    fault: Literal[FAULT_NAMES]  # type: ignore[valid-type]
    duration_h: float = Field(4.0, gt=0, le=24 * 14)
    magnitude: float = Field(1.0, ge=0, le=1000)

    _numbers = field_validator("duration_h", "magnitude", mode="before")(_not_a_bool)


class FaultCommand(FaultInjection):
    """A fault injection as published on the control subject."""

    type: Literal["fault"]


class ReplayCommand(_Strict):
    """Meant for a replay (`sources.replay`), which listens on the same subjects; the live plant ignores it."""

    type: Literal["pause", "resume"]


Command = Annotated[ControlCommand | FaultCommand | ReplayCommand, Field(discriminator="type")]
_COMMAND: TypeAdapter[Command] = TypeAdapter(Command)


def parse_command(data: bytes) -> ControlCommand | FaultCommand | ReplayCommand:
    """One message from `biopilot.control.<reactor>`, validated; `CommandError` (one line) if it is not a
    command. Parsed by Python's json (NaN, Infinity and 1e999 become floats the models then refuse)."""
    try:
        return _COMMAND.validate_python(json.loads(data))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        if isinstance(err, ValidationError):
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise CommandError(f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}"
                               ) from None
        raise CommandError(f"not a JSON command: {err}") from None
