"""Request and response models of the HTTP API (docs/DESIGN.md, "HTTP API"). The control and fault commands
live in `sources.commands`: the plant validates what arrives on its NATS control subject with the same
models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from core.events import ID_PATTERN
from sources.reactor import FAULT_NAMES

Severity = Literal["info", "warning", "critical"]
# every id the API takes (runs, reactors, replays, incidents, subscriptions): no markup, no path separators
ID_DESCRIPTION = "letters, digits, '.', '_' or '-', 1-128 of them"
Id = Annotated[str, Field(pattern=ID_PATTERN, description=ID_DESCRIPTION)]
IdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]  # the same, as a path parameter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    nats: bool
    redis: bool
    sse_clients: int
    problems: list[str] = Field(default_factory=list, description="why the status is degraded")
    webhooks: dict[str, Any] = Field(default_factory=dict, description="the webhook sender: state, lag, failures")
    processes: dict[str, Any] = Field(default_factory=dict, description="the processes `biopilot up` supervises")


class Accepted(BaseModel):
    accepted: bool = True
    subject: str
    command: dict


class ReplayRequest(_Strict):
    run_id: Id
    speed: float | None = Field(600.0, gt=0, description="simulated seconds per wall second; null = max")
    as_run: Id | None = Field(None, description="publish under another run id (default: <run_id>-replay-N)")


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
    run_id: Id | None = None
    incident_id: Id | None = None


class SubscriptionIn(_Strict):
    reactor: Id | None = None
    severity: Severity | None = Field(None, description="minimum severity")
    detector: Id | None = None
    fault: Literal[FAULT_NAMES] | None = Field(None, description="fault class of the diagnosis")  # type: ignore[valid-type]
    webhook_url: str | None = Field(None, pattern=r"^https?://", max_length=2048,
                                    description="public http(s) address; private, loopback and link-local "
                                                "ones are refused unless an admin allowed the host")


class Subscription(SubscriptionIn):
    id: Id
    owner: str = Field(description="the subject of the token that created it")
    stream_url: str


class SubscriptionCreated(Subscription):
    """The only answer that carries the secret: it is never listed again."""

    secret: str | None = Field(None, description="HMAC-SHA256 key of the webhook's X-BioPilot-Signature "
                                                 "(over `<X-BioPilot-Timestamp>.<body>`)")


class TokenRequest(_Strict):
    role: Literal["viewer", "operator", "admin"]
    subject: Id | None = Field(None, description="who the token is for (default: <role>-<random>)")
    ttl_h: int | None = Field(None, gt=0, description="lifetime in hours (default and most: token_ttl_h)")


class TokenOut(BaseModel):
    token: str
    role: str
    token_id: str = Field(description="the token's jti: what POST /api/tokens/revoke takes")
    expires_in_s: int


class TokenRevoke(_Strict):
    token: str = Field(min_length=1, max_length=4096, description="a token, or its id (jti)")


class StreamTicket(BaseModel):
    ticket: str = Field(description="pass as ?ticket= to an SSE route; valid for expires_in_s")
    expires_in_s: int


class GraphNode(BaseModel):
    id: str
    kind: Literal["parameter", "anomaly", "state", "quality"]
    label: str
    detail: str


class GraphEvidence(BaseModel):
    kind: str = Field(description="signature, catalogue, labelled_runs, incidents, design or association")
    text: str
    ref: str


class GraphEdge(BaseModel):
    source: str
    target: str
    sign: int = Field(description="+1 raises, -1 lowers, 0 moves (no stated direction)")
    evidence: list[GraphEvidence]


class GraphOut(BaseModel):
    build_id: str = Field(description="empty: no build stored yet, the fault catalogue alone")
    built_ts: str | None
    nodes: list[GraphNode]
    edges: list[GraphEdge]


class CauseOut(BaseModel):
    origin: str
    path: list[str]
    sign: int
    applies: bool | None = Field(description="seen on the day asked (null: no day asked, or no timing evidence)")
    evidence: list[list[str]] = Field(description="each edge's evidence, in path order")


class CausesOut(BaseModel):
    build_id: str
    target: str
    direction: int
    day: float | None
    causes: list[CauseOut]
