"""Create, list, read and delete alert subscriptions; each has its own SSE stream.

Operators create and delete; everyone sees only their own subscriptions, admins see all. Someone else's id
answers 404, as an unknown one does, so ids cannot be probed. The webhook secret is in the create answer only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

import nats.errors
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from nats.js.kv import KeyValue
from sse_starlette import EventSourceResponse

from core.events import ID_PATTERN
from dashboard import subscriptions as subs
from dashboard.auth import Principal
from dashboard.deps import Runtime, is_operator, is_viewer, runtime, viewer
from dashboard.hub import Overflow
from dashboard.models import Subscription, SubscriptionCreated, SubscriptionIn
from dashboard.routers.streams import held_stream, resume_id
from dashboard.webhooks import AddressRefused, allowed_hosts, resolve

router = APIRouter(prefix="/api/subscriptions", tags=["subscriptions"], dependencies=[viewer])
SubId = Annotated[str, Path(pattern=ID_PATTERN, description="subscription id")]
RESOLVE_TIMEOUT_S = 5.0
PUBLIC = ("reactor", "severity", "detector", "fault", "webhook_url", "owner")  # what the audit keeps


async def store(rt: Runtime = Depends(runtime)) -> AsyncIterator[KeyValue]:
    """The subscriptions' bucket; a broker that does not answer is a 503 with the reason, not a crash."""
    try:
        yield await subs.bucket(rt.js)
    except (nats.errors.Error, TimeoutError) as err:
        raise HTTPException(503, f"the broker, which keeps the subscriptions, does not answer: "
                                 f"{type(err).__name__} {err}".strip()) from None


def _out(sub: dict) -> Subscription:
    return Subscription(**{k: v for k, v in sub.items() if k != "secret"},
                        stream_url=f"/api/subscriptions/{sub['id']}/stream")


async def _check_webhook(url: str, rt: Runtime) -> str | None:
    """Why the webhook URL is refused, or None."""
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            await resolve(url, allowed_hosts(rt.settings.webhook_allow_hosts))
    except AddressRefused as err:
        return str(err)
    except (OSError, TimeoutError) as err:
        return f"the host does not resolve ({str(err) or 'no answer in time'})"
    return None


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SubscriptionCreated)
async def create(body: SubscriptionIn, request: Request, rt: Runtime = Depends(runtime),
                 kv: KeyValue = Depends(store), who: Principal = Depends(is_operator)) -> SubscriptionCreated:
    sub = {"id": subs.new_id(), "owner": who.subject, **body.model_dump(),
           "secret": subs.new_secret() if body.webhook_url else None}
    record = {k: sub[k] for k in PUBLIC}
    owned = sum(s.get("owner") == who.subject for s in (await subs.load_all(kv)).values())
    problem, code = None, 0
    if owned >= subs.MAX_PER_OWNER:
        problem, code = f"{who.subject} already has {owned} subscriptions, the most one owner may have " \
                        f"({subs.MAX_PER_OWNER}); delete one first", status.HTTP_409_CONFLICT
    elif body.webhook_url and (refused := await _check_webhook(body.webhook_url, rt)):
        problem, code = f"webhook_url: {refused}", 422
    if problem:
        await rt.audit(request, who, "subscription_create", "", record, f"refused: {problem}")
        raise HTTPException(code, problem)
    await subs.save(kv, sub)
    rt.webhooks.track(sub)
    await rt.audit(request, who, "subscription_create", sub["id"], record, "created")
    return SubscriptionCreated(**_out(sub).model_dump(), secret=sub["secret"])


@router.get("", response_model=list[Subscription])
async def list_all(kv: KeyValue = Depends(store), who: Principal = Depends(is_viewer)) -> list[Subscription]:
    found = (await subs.load_all(kv)).values()
    return [_out(s) for s in found if subs.visible_to(s, who.subject, who.can("admin"))]


async def _get(kv: KeyValue, sub_id: str, who: Principal) -> dict:
    sub = await subs.load(kv, sub_id)
    if sub is None or not subs.visible_to(sub, who.subject, who.can("admin")):
        raise HTTPException(404, f"no subscription {sub_id!r}")
    return sub


@router.get("/{sub_id}", response_model=Subscription)
async def get(sub_id: SubId, kv: KeyValue = Depends(store),
              who: Principal = Depends(is_viewer)) -> Subscription:
    return _out(await _get(kv, sub_id, who))


@router.delete("/{sub_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete(sub_id: SubId, request: Request, rt: Runtime = Depends(runtime),
                 kv: KeyValue = Depends(store), who: Principal = Depends(is_operator)) -> None:
    try:
        sub = await _get(kv, sub_id, who)
    except HTTPException:
        await rt.audit(request, who, "subscription_delete", sub_id, {}, "refused: not found")
        raise
    await subs.remove(kv, sub_id)
    await rt.webhooks.forget(sub_id)
    await rt.audit(request, who, "subscription_delete", sub_id, {k: sub.get(k) for k in PUBLIC},
                   "deleted")


@router.get("/{sub_id}/stream")
async def stream(sub_id: SubId, request: Request, rt: Runtime = Depends(runtime),
                 kv: KeyValue = Depends(store), who: Principal = Depends(is_viewer),
                 last_event_id: str | None = Query(None)) -> EventSourceResponse:
    """Matching alerts (event `alert`); with a fault class, matching diagnoses (event `diagnosis`)."""
    sub = await _get(kv, sub_id, who)
    channel = "agents" if sub.get("fault") else "alerts"
    resume = resume_id(request, last_event_id)  # 400 if malformed

    def accept(event: dict) -> bool:
        return subs.accepts(sub, channel, event)

    async def events() -> AsyncIterator[dict]:
        try:
            async for event_id, event in rt.hub.events(channel, accept, resume):
                yield {"id": event_id, "event": "diagnosis" if channel == "agents" else "alert",
                       "data": json.dumps(event)}
        except Overflow:
            return

    return held_stream(rt, who, events(), ping=10)  # counted against the token's SSE cap
