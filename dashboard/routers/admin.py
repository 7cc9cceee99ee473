"""Health, Prometheus metrics, and tokens (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from dashboard.auth import Principal, create_token
from dashboard.deps import Runtime, is_admin, runtime
from dashboard.models import Health, TokenOut, TokenRequest

router = APIRouter(tags=["admin"])


def _gauge(name: str, doc: str) -> Gauge:
    existing = REGISTRY._names_to_collectors.get(name)  # one app per process in production, several in tests
    return existing if isinstance(existing, Gauge) else Gauge(name, doc)


SSE_CLIENTS = _gauge("biopilot_sse_clients", "connected SSE clients")
SSE_SENT = _gauge("biopilot_sse_events_sent", "SSE events sent since start")
SSE_DROPPED = _gauge("biopilot_sse_ticks_dropped", "telemetry events dropped for slow clients")
SSE_DISCONNECTED = _gauge("biopilot_sse_slow_disconnects", "clients disconnected for falling behind")


def client_count(rt: Runtime) -> int:
    return sum(len(c) for c in rt.hub.clients.values())


@router.get("/healthz", response_model=Health)
async def healthz(rt: Runtime = Depends(runtime)) -> Health:
    try:
        redis_ok = bool(await rt.redis.ping())
    except Exception:  # noqa: BLE001 - reported, not raised
        redis_ok = False
    nats_ok = rt.nc.is_connected
    return Health(status="ok" if redis_ok and nats_ok else "degraded", nats=nats_ok, redis=redis_ok,
                  sse_clients=client_count(rt))


@router.get("/metrics")
async def metrics(rt: Runtime = Depends(runtime)) -> Response:
    SSE_CLIENTS.set(client_count(rt))
    SSE_SENT.set(rt.hub.sent)
    SSE_DROPPED.set(rt.hub.dropped)
    SSE_DISCONNECTED.set(rt.hub.disconnected)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.post("/api/tokens", response_model=TokenOut, status_code=201)
async def new_token(body: TokenRequest, rt: Runtime = Depends(runtime),
                    who: Principal = Depends(is_admin)) -> TokenOut:
    rt.audit(who, "token", body.role, body.model_dump())
    return TokenOut(token=create_token(rt.secret, body.role, body.subject), role=body.role)
