"""The dashboard: FastAPI app with REST, SSE, auth and the static page (docs/DESIGN.md, "HTTP API").

`create_app(settings)` needs a running broker and cache (`settings.nats_url`, `settings.redis_url`); `biopilot
up` provides them. The lifespan connects, starts the SSE hub's readers, the NATS -> hub relay, the audit writer
and the webhook dispatcher, and stops them in reverse order. CORS stays closed unless origins are given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agents.llm import make_backend
from core.config import Settings
from core.plants import PLANTS
from core.services import connect_nats, redis_client
from dashboard.auth import COOKIE, Principal, create_token, redeem_login_code, secret_for, ttl_cap_s
from dashboard.deps import MUTATING, Runtime, is_viewer
from dashboard.hub import Hub
from dashboard.limits import BodyLimit, RequestId
from dashboard.relay import Relay, lab_values
from dashboard.routers import (
    admin,
    chat,
    control,
    graph,
    models,
    patients,
    reactors,
    reports,
    risk,
    runs,
    streams,
    subscriptions,
)
from dashboard.security import SecurityHeaders
from dashboard.webhooks import WebhookSender, allowed_hosts
from sinks.table_writer import TableWriter

STATIC = Path(__file__).parent / "static"
PAGES = {"bioreactor": "index.html", "patient": "patient.html"}  # the page of each plant kind


def create_app(settings: Settings, cors_origins: list[str] | None = None, relay: bool = True) -> FastAPI:
    if not settings.nats_url or not settings.redis_url:
        raise ValueError("the dashboard needs settings.nats_url and settings.redis_url (biopilot up sets them)")
    secret = secret_for(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect_nats(settings.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        redis = redis_client(settings.redis_url)
        hub = Hub(redis)
        hub.start()
        writer = TableWriter(settings.lake)
        writer.task = asyncio.create_task(writer.run())
        rt = Runtime(settings, secret, nc, nc.jetstream(), redis, hub, writer, make_backend(settings))
        app.state.runtime = rt
        relayer = Relay(settings.nats_url, hub, PLANTS[settings.plant]) if relay else None
        if relayer:
            await relayer.start()
            app.state.risk_records = relayer.records  # the risk API's records as they arrive
        rt.webhooks = WebhookSender(nc, rt.js, allowed_hosts(settings.webhook_allow_hosts))
        await rt.webhooks.start()
        try:
            yield
        finally:
            await rt.webhooks.stop()
            if relayer:
                await relayer.stop()
            for task in list(rt.tasks):
                task.cancel()
            for replay in rt.replays.values():
                replay.stop()
            writer.task.cancel()
            await writer.flush()
            await hub.stop()
            with contextlib.suppress(Exception):
                await nc.drain()
            await redis.aclose()

    app = FastAPI(title="BioPilot", version="0.1", lifespan=lifespan,
                  description="Live CHO fed-batch digital twin: runs, streams, control, agents. "
                              "Auth: `Authorization: Bearer <token>` (`biopilot token create --role R`).")
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["*"], allow_headers=["*"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)  # runs before any route, auth included
    app.add_middleware(SecurityHeaders)  # CSP and friends, on refusals too
    app.add_middleware(RequestId)  # outermost: a refused request has its id too

    @app.exception_handler(RequestValidationError)
    async def clear_422(request: Request, err: RequestValidationError) -> JSONResponse:
        """One readable line per problem (field: message) besides FastAPI's detail list. A refused change
        (POST, PUT, PATCH, DELETE) is audited like a 401 or 403: someone tried to act on the plant."""
        errors = [{k: v for k, v in e.items() if k not in ("ctx", "input", "url")} for e in err.errors()]
        # a check of the whole body has no field to name; pydantic prefixes a validator's own words
        problems = [": ".join(part for part in ("/".join(str(p) for p in e["loc"] if p != "body"),
                                                 e["msg"].removeprefix("Value error, ")) if part) for e in errors]
        message = "; ".join(problems)
        if request.method in MUTATING:
            await app.state.runtime.audit(request, getattr(request.state, "principal", None), "refused",
                                          request.url.path, {"method": request.method}, f"422: {message}"[:2000])
        return JSONResponse({"message": message, "detail": jsonable_encoder(errors)}, status_code=422)

    for module in (admin, runs, streams, control, reactors, patients, risk, models, chat, graph, subscriptions,
                   reports):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / PAGES[settings.plant])

    @app.get("/login", include_in_schema=False)
    async def login(request: Request, code: str = "") -> RedirectResponse:
        """The link `biopilot up` prints: takes its one-time code (gone after this), keeps a fresh token in an
        http-only cookie, then opens the page. No token in the URL: URLs end up in logs and history."""
        rt: Runtime = app.state.runtime
        who = await redeem_login_code(rt.redis, code) if code else None
        if who is None:
            await rt.audit(request, None, "login", "code", {}, "refused: unknown, expired or used code")
            return RedirectResponse("/?error=login+link+unknown,+expired+or+used", status_code=303)
        ttl_s = ttl_cap_s(settings)
        token = create_token(secret, who.role, who.subject, ttl_s, jti=who.token_id)
        await rt.audit(request, who, "login", "code", {}, "signed in")
        reply = RedirectResponse("/", status_code=303)
        # Secure when the request came over TLS: the scheme uvicorn reports, which honours X-Forwarded-Proto
        # from the proxies it trusts only (--forwarded-allow-ips, default 127.0.0.1)
        reply.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=ttl_s,
                         secure=request.url.scheme == "https")
        return reply

    @app.get("/api/config", tags=["admin"], dependencies=[Depends(is_viewer)])
    async def config() -> dict:
        """What this stack serves: the plant kind, its unit and the unit's signals and lab values."""
        plant = PLANTS[settings.plant]
        return {"plant": plant.name, "unit": plant.unit, "signals": list(plant.signals),
                "labs": list(lab_values(plant)), "page": PAGES[plant.name]}

    @app.get("/api/whoami", tags=["admin"])
    async def whoami(who: Principal = Depends(is_viewer)) -> dict:
        return {"subject": who.subject, "role": who.role, "token_id": who.token_id}

    return app
