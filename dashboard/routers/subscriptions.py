"""Create, list and delete alert subscriptions; each has its own SSE stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from sse_starlette import EventSourceResponse

from dashboard import subscriptions as subs
from dashboard.deps import Runtime, runtime, viewer
from dashboard.hub import Overflow
from dashboard.models import Subscription, SubscriptionIn

router = APIRouter(prefix="/api/subscriptions", tags=["subscriptions"], dependencies=[viewer])


def _out(sub: dict) -> Subscription:
    return Subscription(**sub, stream_url=f"/api/subscriptions/{sub['id']}/stream")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=Subscription)
async def create(body: SubscriptionIn, rt: Runtime = Depends(runtime)) -> Subscription:
    sub = {"id": subs.new_id(), **body.model_dump(), "secret": subs.new_secret() if body.webhook_url else None}
    await rt.redis.hset(subs.KEY, sub["id"], json.dumps(sub))
    return _out(sub)


@router.get("", response_model=list[Subscription])
async def list_all(rt: Runtime = Depends(runtime)) -> list[Subscription]:
    return [_out(s) for s in (await subs.load_all(rt.redis)).values()]


async def _get(rt: Runtime, sub_id: str) -> dict:
    raw = await rt.redis.hget(subs.KEY, sub_id)
    if raw is None:
        raise HTTPException(404, f"no subscription {sub_id!r}")
    return json.loads(raw)


@router.delete("/{sub_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(sub_id: str, rt: Runtime = Depends(runtime)) -> None:
    await _get(rt, sub_id)
    await rt.redis.hdel(subs.KEY, sub_id)


@router.get("/{sub_id}/stream")
async def stream(sub_id: str, request: Request, rt: Runtime = Depends(runtime),
                 last_event_id: str | None = Query(None)) -> EventSourceResponse:
    """Matching alerts (event `alert`); with a fault class, matching diagnoses (event `diagnosis`)."""
    sub = await _get(rt, sub_id)
    channel = "agents" if sub.get("fault") else "alerts"
    resume = request.headers.get("last-event-id") or last_event_id

    async def events() -> AsyncIterator[dict]:
        try:
            async for event_id, event in rt.hub.events(channel, lambda e: subs.accepts(sub, channel, e), resume):
                yield {"id": event_id, "event": "diagnosis" if channel == "agents" else "alert",
                       "data": json.dumps(event)}
        except Overflow:
            return

    return EventSourceResponse(events(), ping=10)
