"""Server-sent event streams (batched telemetry, alerts, incidents, agent chunks), resumable by id.

A malformed `Last-Event-ID` is answered 400 with a JSON message: the page's EventSource only ever sends back
an id it was given, so a malformed one is a client bug, better named than papered over by a silent restart
from the live edge. An id older than the buffer resumes from the oldest buffered event after a `missed` event;
an id newer than any issued resumes from the live edge. Each token may hold `sse_max_per_token` streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from redis.exceptions import RedisError

from dashboard.auth import Principal
from dashboard.deps import Runtime, is_viewer, runtime
from dashboard.hub import MISSED, Overflow, parse_event_id
from dashboard.models import Id, Severity
from dashboard.slots import HeldStream
from dashboard.subscriptions import matches

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/stream", tags=["streams"])
HEARTBEAT_S = 10


def resume_id(request: Request, last_event_id: str | None) -> str | None:
    """The id a client resumes after (header, else query), or 400 if it is not one."""
    resume = request.headers.get("last-event-id") or last_event_id
    if resume and parse_event_id(resume) is None:
        raise HTTPException(400, f"Last-Event-ID {resume[:40]!r} is not an event id of this stream "
                                 f"(<ms>-<seq>, as sent in the events' id field); leave it out to start from "
                                 f"the live edge")
    return resume


def held_stream(rt: Runtime, who: Principal, content: AsyncIterator[dict],
                **kw: Any) -> HeldStream:  # noqa: ANN401
    """An SSE response counted against the caller's token (429 past `sse_max_per_token`)."""
    return HeldStream(content, rt.sse_streams, who.token_id or who.subject, rt.settings.sse_max_per_token,
                      "SSE streams on this token", **kw)


def sse(request: Request, rt: Runtime, who: Principal, channel: str, accept: Callable[[dict], bool],
        last_event_id: str | None) -> HeldStream:
    resume = resume_id(request, last_event_id)

    async def events() -> AsyncIterator[dict]:
        try:
            async for event_id, event in rt.hub.events(channel, accept, resume, report_gaps=True):
                if event_id is None:
                    yield {"event": MISSED, "data": json.dumps(event)}
                else:
                    yield {"id": event_id, "event": _event_name(channel, event), "data": json.dumps(event)}
        except Overflow:
            return  # the client reconnects with its Last-Event-ID and resumes from the buffer
        except RedisError as err:  # the buffer is unreachable: the client reconnects and resumes by id
            log.warning("SSE %s stream ended: %s", channel, err)

    return held_stream(rt, who, events(), ping=HEARTBEAT_S, send_timeout=30)


def _event_name(channel: str, event: dict) -> str:
    if channel == "telemetry":
        return {"ticks": "tick", "dose": "dose", "recipe": "recipe"}.get(event.get("kind"), "assay")
    if channel == "alerts":
        return "clear" if event.get("type") == "clear" else "alert"
    if channel == "twin":  # the patient twin's forecasts and the outcome model's risks
        return "risk" if event.get("kind") == "risk" else "twin"
    return {"incidents": "incident", "agents": "chunk"}[channel]


@router.get("/telemetry")
async def telemetry(request: Request, rt: Runtime = Depends(runtime), who: Principal = Depends(is_viewer),
                    reactor: Id | None = None,
                    last_event_id: str | None = Query(None, description="resume after this id"),
                    ) -> HeldStream:
    return sse(request, rt, who, "telemetry", lambda e: matches(e, reactor), last_event_id)


@router.get("/alerts")
async def alerts(request: Request, rt: Runtime = Depends(runtime), who: Principal = Depends(is_viewer),
                 reactor: Id | None = None, severity: Severity | None = None, detector: Id | None = None,
                 last_event_id: str | None = Query(None)) -> HeldStream:
    return sse(request, rt, who, "alerts", lambda e: matches(e, reactor, severity, detector), last_event_id)


@router.get("/incidents")
async def incidents(request: Request, rt: Runtime = Depends(runtime), who: Principal = Depends(is_viewer),
                    reactor: Id | None = None, last_event_id: str | None = Query(None)) -> HeldStream:
    return sse(request, rt, who, "incidents", lambda e: matches(e, reactor), last_event_id)


@router.get("/twin")
async def twin(request: Request, rt: Runtime = Depends(runtime), who: Principal = Depends(is_viewer),
               reactor: Id | None = Query(None, description="a patient's id"),
               last_event_id: str | None = Query(None)) -> HeldStream:
    """The patient twin's INR forecasts, one event each time a lab refits it, and the outcome model's risks (event
    `risk`), one each time they change at a closed hour (the patient plant)."""
    return sse(request, rt, who, "twin", lambda e: matches(e, reactor), last_event_id)


@router.get("/agents")
async def agents(request: Request, rt: Runtime = Depends(runtime), who: Principal = Depends(is_viewer),
                 incident: Id | None = None, last_event_id: str | None = Query(None)) -> HeldStream:
    return sse(request, rt, who, "agents", lambda e: matches(e, incident=incident), last_event_id)
