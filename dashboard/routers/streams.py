"""Server-sent event streams (batched telemetry, alerts, incidents, agent chunks), resumable by id."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse

from dashboard.deps import Runtime, runtime, viewer
from dashboard.hub import Overflow
from dashboard.models import Severity
from dashboard.subscriptions import matches

router = APIRouter(prefix="/api/stream", tags=["streams"], dependencies=[viewer])
HEARTBEAT_S = 10


def sse(request: Request, rt: Runtime, channel: str, accept: Callable[[dict], bool],
        last_event_id: str | None) -> EventSourceResponse:
    resume = request.headers.get("last-event-id") or last_event_id

    async def events() -> AsyncIterator[dict]:
        try:
            async for event_id, event in rt.hub.events(channel, accept, resume):
                yield {"id": event_id, "event": _event_name(channel, event), "data": json.dumps(event)}
        except Overflow:
            return  # the client reconnects with its Last-Event-ID and resumes from the buffer

    return EventSourceResponse(events(), ping=HEARTBEAT_S, send_timeout=30)


def _event_name(channel: str, event: dict) -> str:
    if channel == "telemetry":
        return "tick" if event.get("kind") == "ticks" else "assay"
    if channel == "alerts":
        return "clear" if event.get("type") == "clear" else "alert"
    return {"incidents": "incident", "agents": "chunk"}[channel]


@router.get("/telemetry")
async def telemetry(request: Request, rt: Runtime = Depends(runtime), reactor: str | None = None,
                    last_event_id: str | None = Query(None, description="resume after this id")):
    return sse(request, rt, "telemetry", lambda e: matches(e, reactor), last_event_id)


@router.get("/alerts")
async def alerts(request: Request, rt: Runtime = Depends(runtime), reactor: str | None = None,
                 severity: Severity | None = None, detector: str | None = None,
                 last_event_id: str | None = Query(None)):
    return sse(request, rt, "alerts", lambda e: matches(e, reactor, severity, detector), last_event_id)


@router.get("/incidents")
async def incidents(request: Request, rt: Runtime = Depends(runtime), reactor: str | None = None,
                    last_event_id: str | None = Query(None)):
    return sse(request, rt, "incidents", lambda e: matches(e, reactor), last_event_id)


@router.get("/agents")
async def agents(request: Request, rt: Runtime = Depends(runtime), incident: str | None = None,
                 last_event_id: str | None = Query(None)):
    return sse(request, rt, "agents", lambda e: matches(e, incident=incident), last_event_id)
