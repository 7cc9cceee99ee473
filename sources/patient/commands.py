"""Commands to a live virtual patient, validated by one set of models at both doors: the dashboard's HTTP routes
and the patient feed's `biopilot.control.<patient>` subject (anyone on the broker can publish there).

    {"type": "dose", "drug": "warfarin", "daily_mg": 7.5}       # the daily dose from the next dose time on
    {"type": "hold", "drug": "warfarin", "days": 2}             # the next `days` daily doses are not given
    {"type": "comedication", "drug": "amiodarone", "action": "start"}
    {"type": "event", "event": "major_bleed", "magnitude": 1, "duration_h": 48}
    {"type": "stop"}                                            # stop the whole feed

A prescribed change (dose, hold) overrides the scenario's protocol for that patient from then on; a hold is
not a missed dose (nonadherence is the patient's, a hold the clinician's). An injected event starts now and
writes its label row, as a reactor's injected fault does.

>>> parse_patient_command(b'{"type": "dose", "drug": "warfarin", "daily_mg": 7.5}').daily_mg
7.5
>>> parse_patient_command(b'{"type": "dose", "drug": "warfarin", "daily_mg": 90}')
Traceback (most recent call last):
...
sources.commands.CommandError: dose: warfarin is given up to 20 mg a day, got 90
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from sources.commands import CommandError, ReplayCommand, _Strict
from sources.patient.adverse_events import ADVERSE_EVENTS

# the largest daily dose a prescriber can enter: above it is a typing error (warfarin tablets go to 10 mg,
# maintenance doses above 15-20 mg/day are very rare; metoprolol tartrate's maximum is 400 mg/day)
MAX_DAILY_MG: dict[str, float] = {"warfarin": 20.0, "metoprolol": 400.0}
COMEDICATIONS = ("amiodarone", "enzyme_inducer")
# events a clinician or a test can start live (the INR events come about by themselves through these)
INJECTABLE_EVENTS = tuple(ADVERSE_EVENTS)


class DoseCommand(_Strict):
    type: Literal["dose"]
    drug: Literal["warfarin", "metoprolol"]
    daily_mg: float = Field(ge=0, description="mg a day: warfarin up to 20, metoprolol up to 400")

    @model_validator(mode="after")
    def _within_range(self) -> DoseCommand:
        if self.daily_mg > MAX_DAILY_MG[self.drug]:
            raise ValueError(f"{self.drug} is given up to {MAX_DAILY_MG[self.drug]:g} mg a day, "
                             f"got {self.daily_mg:g}")
        return self


class HoldCommand(_Strict):
    type: Literal["hold"]
    drug: Literal["warfarin", "metoprolol"]
    days: int = Field(ge=1, le=14)


class ComedicationCommand(_Strict):
    type: Literal["comedication"]
    drug: Literal[COMEDICATIONS]  # type: ignore[valid-type]
    action: Literal["start", "stop"]


class EventCommand(_Strict):
    type: Literal["event"]
    event: Literal[INJECTABLE_EVENTS]  # type: ignore[valid-type]
    magnitude: float = Field(1.0, gt=0, le=5)
    duration_h: float = Field(48.0, gt=0, le=24 * 28)
    signal: Literal["hr_bpm", "sbp_mmhg", "dbp_mmhg", "spo2_pct", "rr_min", "temp_c"] | None = Field(
        None, description="the vital a sensor fault acts on (sensor_* events only)")

    @model_validator(mode="after")
    def _signal_for_sensors_only(self) -> EventCommand:
        # as a scenario's EventSpec: refused here, at both doors, rather than by the running plant after a 202
        if self.event.startswith("sensor_") and self.signal is None:
            raise ValueError(f"{self.event} needs the faulty vital's signal")
        if not self.event.startswith("sensor_") and self.signal is not None:
            raise ValueError(f"signal is only for sensor_* events, not {self.event}")
        return self


class StopCommand(_Strict):
    type: Literal["stop"]


PatientCommand = Annotated[DoseCommand | HoldCommand | ComedicationCommand | EventCommand | StopCommand
                           | ReplayCommand, Field(discriminator="type")]
_COMMAND: TypeAdapter[PatientCommand] = TypeAdapter(PatientCommand)


def parse_patient_command(data: bytes) -> DoseCommand | HoldCommand | ComedicationCommand | EventCommand \
        | StopCommand | ReplayCommand:
    """One message from `biopilot.control.<patient>`, validated; `CommandError` (one line) if it is not a
    command."""
    try:
        return _COMMAND.validate_python(json.loads(data))
    except (ValueError, RecursionError) as err:
        if isinstance(err, ValidationError):
            first = err.errors()[0]
            loc = first["loc"][1:] if len(first["loc"]) > 1 else first["loc"]  # without the union's tag
            where = ".".join(str(p) for p in loc)
            raise CommandError(f"{where + ': ' if where else ''}{first['msg'].removeprefix('Value error, ')}"
                               ) from None
        raise CommandError(f"not a JSON command: {err}") from None
