"""Health, Prometheus metrics, tokens (admin) and stream tickets."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from core.services import PROCESSES_KEY
from dashboard import auth
from dashboard.auth import Principal
from dashboard.deps import Runtime, is_admin, is_viewer, runtime
from dashboard.models import Health, StreamTicket, TokenOut, TokenRequest, TokenRevoke

router = APIRouter(tags=["admin"])
REDIS_PING_TIMEOUT_S = 1.0
PROCESS_STATE_TIMEOUT_S = 0.5


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
    existing = REGISTRY._names_to_collectors.get(name)  # one app per process in production, several in tests
    return existing if isinstance(existing, Gauge) else Gauge(name, doc, labels)


SSE_CLIENTS = _gauge("biopilot_sse_clients", "connected SSE clients")
SSE_SENT = _gauge("biopilot_sse_events_sent", "SSE events sent since start")
SSE_DROPPED = _gauge("biopilot_sse_ticks_dropped", "telemetry events dropped for slow clients")
SSE_DISCONNECTED = _gauge("biopilot_sse_slow_disconnects", "clients disconnected for falling behind")
WEBHOOK_RUNNING = _gauge("biopilot_webhook_sender_running", "1 while the webhook sender reads events, else 0")
WEBHOOK_RESTARTS = _gauge("biopilot_webhook_sender_restarts", "times the webhook sender was restarted")
WEBHOOK_SUBS = {key: _gauge(f"biopilot_webhook_{key}", doc, ("subscription",)) for key, doc in (
    ("queued", "events waiting for a subscription's receiver"), ("in_flight", "deliveries under way"),
    ("delivered", "events delivered since start"), ("failed", "events given up on after the retries"),
    ("dropped", "oldest events dropped from a full queue"), ("lag", "events queued or under way"))}


def client_count(rt: Runtime) -> int:
    return sum(len(c) for c in rt.hub.clients.values())


def webhook_health(rt: Runtime) -> tuple[dict, list[str]]:
    """The webhook sender's state, and what in it is wrong. Only a sender that is not running degrades the
    status: a slow or failing receiver is listed (`lagging`, `failed`, `last_error`) but is the receiver's
    problem, and a status that follows third-party endpoints would get a healthy dashboard restarted."""
    if rt.webhooks is None:
        return {"state": "stopped"}, ["webhook sender not started"]
    health = rt.webhooks.health()
    if health["state"] == "running":
        return health, []
    why = f": {health['last_error']}" if health["last_error"] else ""
    return health, [f"webhook sender {health['state']}{why}"]


def _export_webhooks(rt: Runtime) -> None:
    health, _ = webhook_health(rt)
    WEBHOOK_RUNNING.set(health["state"] == "running")
    WEBHOOK_RESTARTS.set(health.get("restarts", 0))
    for key, gauge in WEBHOOK_SUBS.items():
        gauge.clear()  # deleted subscriptions leave the series
        for sub_id, stats in health.get("subscriptions", {}).items():
            gauge.labels(sub_id).set(stats[key])


async def process_health(rt: Runtime) -> tuple[dict, list[str]]:
    """The processes `biopilot up` supervises (its Redis hash, `biopilot.supervisor`), and which of them are not
    running. None listed: no supervisor runs this stack, or it is gone (the hash expires without it)."""
    try:
        # short: after the ping's own timeout, a hung Redis must still leave /healthz quick
        raw = await asyncio.wait_for(rt.redis.hgetall(PROCESSES_KEY), PROCESS_STATE_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - reported, not raised
        return {}, [f"process states unreadable ({err.__class__.__name__})"]
    processes: dict[str, dict] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        try:
            processes[name] = json.loads(value)
        except ValueError:
            processes[name] = {"state": "unreadable"}
    return processes, [f"{name} {p.get('state')}" for name, p in sorted(processes.items())
                       if p.get("state") not in ("running", "stopped")]


async def _redis_ok(rt: Runtime) -> bool:
    try:
        # bounded below the client's socket timeout: a hung Redis must not hang the health check
        return bool(await asyncio.wait_for(rt.redis.ping(), REDIS_PING_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - reported, not raised
        return False


@router.get("/healthz", response_model=Health)
async def healthz(rt: Runtime = Depends(runtime)) -> Health:
    # the Redis reads side by side: with Redis hung, the check waits one timeout, not one per read
    redis_ok, (processes, process_problems) = await asyncio.gather(_redis_ok(rt), process_health(rt))
    nats_ok = rt.nc.is_connected
    webhooks, webhook_problems = webhook_health(rt)
    problems = [*(["nats down"] if not nats_ok else []), *(["redis down"] if not redis_ok else []),
                *webhook_problems, *process_problems]
    return Health(status="degraded" if problems else "ok", nats=nats_ok, redis=redis_ok,
                  sse_clients=client_count(rt), problems=problems, webhooks=webhooks, processes=processes)


@router.get("/metrics")
async def metrics(rt: Runtime = Depends(runtime)) -> Response:
    SSE_CLIENTS.set(client_count(rt))
    SSE_SENT.set(rt.hub.sent)
    SSE_DROPPED.set(rt.hub.dropped)
    SSE_DISCONNECTED.set(rt.hub.disconnected)
    _export_webhooks(rt)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.post("/api/tokens", response_model=TokenOut, status_code=201)
async def new_token(body: TokenRequest, request: Request, rt: Runtime = Depends(runtime),
                    who: Principal = Depends(is_admin)) -> TokenOut:
    """A token for `subject`; the claim `by` and the audit row name the admin who minted it."""
    cap_h = rt.settings.token_ttl_h
    if body.ttl_h is not None and body.ttl_h > cap_h:
        raise HTTPException(422, f"ttl_h {body.ttl_h} is past the cap of {cap_h} h (setting token_ttl_h)")
    ttl_s = body.ttl_h * 3600 if body.ttl_h else auth.ttl_cap_s(rt.settings)
    jti = auth.new_token_id()
    token = auth.create_token(rt.secret, body.role, body.subject, ttl_s, jti=jti, by=who.subject)
    await rt.audit(request, who, "token_create", jti, body.model_dump(), "minted")
    return TokenOut(token=token, role=body.role, token_id=jti, expires_in_s=ttl_s)


@router.post("/api/tokens/revoke", status_code=204)
async def revoke_token(body: TokenRevoke, request: Request, rt: Runtime = Depends(runtime),
                       who: Principal = Depends(is_admin)) -> None:
    """Refuse a token (given whole, or by its id) from now on, here and wherever this signing key is used."""
    try:
        jti, exp = auth.revocation_target(rt.secret, body.token)
    except auth.AuthError as err:
        raise HTTPException(422, str(err)) from None
    await asyncio.to_thread(rt.revoked.add, jti, exp)
    await rt.audit(request, who, "token_revoke", jti, {}, "revoked")


@router.post("/api/stream-ticket", response_model=StreamTicket, status_code=201)
async def stream_ticket(rt: Runtime = Depends(runtime), who: Principal = Depends(is_viewer)) -> StreamTicket:
    """A short-lived ticket for `?ticket=` on the SSE routes (EventSource cannot send a header), for the
    caller's identity and role, revoked with the caller's token."""
    ttl_s = auth.STREAM_TICKET_TTL_S
    ticket = auth.create_token(rt.secret, who.role, who.subject, ttl_s, typ="stream", jti=who.token_id)
    return StreamTicket(ticket=ticket, expires_in_s=ttl_s)
