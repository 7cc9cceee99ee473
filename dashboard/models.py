"""Request and response models of the HTTP API (DESIGN.md section 6)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sources.reactor import CONTROL_NAMES, FAULT_NAMES
from sources.scenarios import known_signal, sensor_fault_names_its_signal

Severity = Literal["info", "warning", "critical"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(BaseModel):
    status: str
    nats: bool
    redis: bool
    sse_clients: int


class ControlCommand(_Strict):
    """A setpoint change (`name`, `value`), a feed bolus (`volume_ml`) or a stop."""

    type: Literal["setpoint", "feed", "stop"]
    name: str | None = Field(None, description=f"setpoint name, one of: {', '.join(CONTROL_NAMES)}")
    value: float | None = None
    volume_ml: float | None = Field(None, gt=0, le=2000)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None and v not in CONTROL_NAMES:
            raise ValueError(f"unknown setpoint {v!r}; allowed: {', '.join(CONTROL_NAMES)}")
        return v

    @model_validator(mode="after")
    def _complete(self) -> ControlCommand:
        if self.type == "setpoint" and (self.name is None or self.value is None):
            raise ValueError("a setpoint command needs name and value")
        if self.type == "feed" and self.volume_ml is None:
            raise ValueError("a feed command needs volume_ml")
        return self


class FaultInjection(_Strict):
    fault: Literal[FAULT_NAMES]  # type: ignore[valid-type]
    duration_h: float = Field(4.0, gt=0, le=24 * 14)
    magnitude: float = Field(1.0, ge=0, le=1000)
    signal: str | None = Field(None, description="the faulty sensor, for sensor_* faults")

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, v: str | None) -> str | None:
        return known_signal(v)

    @model_validator(mode="after")
    def _sensor_named(self) -> FaultInjection:
        sensor_fault_names_its_signal(self.fault, self.signal)
        return self


class Accepted(BaseModel):
    accepted: bool = True
    subject: str
    command: dict


class ReplayRequest(_Strict):
    run_id: str
    speed: float | None = Field(600.0, gt=0, description="simulated seconds per wall second; null = max")
    as_run: str | None = Field(None, description="publish under another run id (default: <run_id>-replay-N)")


class ReplayStatus(BaseModel):
    replay_id: str
    run_id: str
    as_run: str
    reactor_id: str
    speed: float | None
    state: Literal["running", "paused", "done", "stopped", "failed"]
    published: int
    total: int
    held_s: float = 0.0  # how long the replay waited for the flow to catch up (back-pressure)


class ChatRequest(_Strict):
    question: str = Field(min_length=1, max_length=2000)
    run_id: str | None = None
    incident_id: str | None = None


class SubscriptionIn(_Strict):
    reactor: str | None = None
    severity: Severity | None = Field(None, description="minimum severity")
    detector: str | None = None
    fault: Literal[FAULT_NAMES] | None = Field(None, description="fault class of the diagnosis")  # type: ignore[valid-type]
    webhook_url: str | None = Field(None, pattern=r"^https?://")


class Subscription(SubscriptionIn):
    id: str
    secret: str | None = Field(None, description="HMAC-SHA256 key of the webhook's X-BioPilot-Signature")
    stream_url: str


class TokenRequest(_Strict):
    role: Literal["viewer", "operator", "admin"]
    subject: str | None = None


class TokenOut(BaseModel):
    token: str
    role: str
