"""The dashboard: FastAPI app with REST, SSE, auth and the static page (DESIGN.md section 6).

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

import nats
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agents.llm import make_backend
from biopilot.config import Settings
from dashboard.auth import COOKIE, AuthError, secret_for, verify
from dashboard.deps import Runtime
from dashboard.hub import Hub
from dashboard.relay import Relay
from dashboard.routers import admin, chat, control, reports, runs, streams, subscriptions
from dashboard.subscriptions import dispatch_webhooks
from sinks.table_writer import TableWriter

STATIC = Path(__file__).parent / "static"


def create_app(settings: Settings, cors_origins: list[str] | None = None, relay: bool = True) -> FastAPI:
    if not settings.nats_url or not settings.redis_url:
        raise ValueError("the dashboard needs settings.nats_url and settings.redis_url (biopilot up sets them)")
    secret = secret_for(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await nats.connect(settings.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        redis = aioredis.from_url(settings.redis_url)
        hub = Hub(redis)
        hub.start()
        writer = TableWriter(settings.lake)
        writer.task = asyncio.create_task(writer.run())
        rt = Runtime(settings, secret, nc, nc.jetstream(), redis, hub, writer, make_backend(settings))
        app.state.runtime = rt
        relayer = Relay(settings.nats_url, hub) if relay else None
        if relayer:
            await relayer.start()
        webhooks = asyncio.create_task(dispatch_webhooks(hub, redis))
        try:
            yield
        finally:
            webhooks.cancel()
            if relayer:
                await relayer.stop()
            for task in list(rt.tasks):
                task.cancel()
            for replay in rt.replays.values():
                replay["replay"].stopped = True
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

    @app.exception_handler(RequestValidationError)
    async def clear_422(_request: Request, err: RequestValidationError) -> JSONResponse:
        """One readable line per problem (field: message) besides FastAPI's detail list."""
        errors = [{k: v for k, v in e.items() if k not in ("ctx", "input", "url")} for e in err.errors()]
        problems = ["/".join(str(p) for p in e["loc"] if p != "body") + ": " + e["msg"] for e in errors]
        return JSONResponse({"message": "; ".join(problems), "detail": jsonable_encoder(errors)}, status_code=422)

    for module in (admin, runs, streams, control, chat, subscriptions, reports):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/login", include_in_schema=False)
    async def login(token: str) -> RedirectResponse:
        """The URL `biopilot up` prints: keeps the token in an http-only cookie, then opens the page."""
        try:
            verify(secret, token)
        except AuthError as err:
            return RedirectResponse(f"/?error={err}", status_code=303)
        reply = RedirectResponse("/", status_code=303)
        reply.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 86400)
        return reply

    @app.get("/api/whoami", tags=["admin"])
    async def whoami(request: Request) -> dict:
        from dashboard.deps import principal

        who = principal(request, app.state.runtime)
        return {"subject": who.subject, "role": who.role}

    return app
