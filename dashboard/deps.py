"""Dependencies: the running services and the caller's identity and role."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.llm import Backend
from core.config import Settings
from dashboard.auth import COOKIE, AuthError, Principal, Revocations, verify
from dashboard.hub import Hub
from dashboard.limits import RateLimiter
from dashboard.slots import Slots
from dashboard.webhooks import WebhookSender
from sinks.audit import AuditLog
from sinks.table_writer import TableWriter

log = logging.getLogger(__name__)
# EventSource cannot send a header: these routes also take a stream ticket as `?ticket=`
SSE_ROUTE = re.compile(r"^/api/(stream/[^/]+|subscriptions/[^/]+/stream)$")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # rate-limited per token (chat is a POST)
_SECRET_KEY = re.compile(r"secret|token|ticket|password|code|authorization", re.IGNORECASE)


def without_secrets(value: object) -> object:
    """`value` with every dict entry whose key names a secret replaced, at any depth."""
    if isinstance(value, dict):
        return {k: "[redacted]" if _SECRET_KEY.search(str(k)) else without_secrets(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_secrets(v) for v in value]
    return value


@dataclass
class Runtime:
    """What the routes share; built in the app's lifespan."""

    settings: Settings
    secret: str
    nc: NATS
    js: JetStreamContext
    redis: aioredis.Redis
    hub: Hub
    writer: TableWriter
    backend: Backend
    replays: dict = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    webhooks: WebhookSender | None = None  # started by the app's lifespan
    audit_log: AuditLog = field(init=False)
    audit_lock: asyncio.Lock = field(init=False, default_factory=asyncio.Lock)
    limiter: RateLimiter = field(init=False)
    revoked: Revocations = field(init=False)
    sse_streams: Slots = field(init=False, default_factory=Slots)  # open SSE streams per token
    chats: Slots = field(init=False, default_factory=Slots)  # chat answers streaming per user

    def __post_init__(self) -> None:
        self.audit_log = AuditLog(self.settings.lake)
        self.limiter = RateLimiter(self.settings.rate_limit_per_min)
        self.revoked = Revocations.for_settings(self.settings)

    async def audit(self, request: Request | None, who: Principal | None, action: str, target: str,
                    payload: dict, result: str) -> None:
        """Who did what, when, from where, with which payload (secrets left out), and how it ended (`result`,
        written after the action): one hash-chained row of the `audit` table, committed before this returns."""
        row = {"ts": datetime.now(UTC), "actor": who.subject if who else "anonymous",
               "role": who.role if who else None, "token_id": (who.token_id or None) if who else None,
               "action": action, "target": target,
               "payload_json": json.dumps(without_secrets(payload), default=str, sort_keys=True),
               "request_id": request.scope.get("state", {}).get("request_id") if request else None,
               "client": request.client.host if request and request.client else None, "result": result}
        async with self.audit_lock:  # one append at a time keeps seq consecutive
            try:
                await asyncio.to_thread(self.audit_log.append, row)
            except Exception:
                log.exception("audit row not written: %s %s -> %s", action, target, result)
                raise

    def spawn(self, coro) -> asyncio.Task:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def _refuse(request: Request, rt: Runtime, who: Principal | None, code: int, reason: str,
                  headers: dict[str, str] | None = None) -> HTTPException:
    """The refusal, audited (action `refused`, target the path)."""
    await rt.audit(request, who, "refused", request.url.path, {"method": request.method}, f"{code}: {reason}")
    return HTTPException(code, reason, headers=headers)


async def principal(request: Request, rt: Runtime = Depends(runtime)) -> Principal:
    """The caller, from `Authorization: Bearer` (an access token), a stream ticket in `?ticket=` (SSE routes
    only) or the page's cookie (an access token), in that order. Mutating requests are rate-limited per token."""
    header = request.headers.get("authorization", "")
    bearer = header[7:].strip() if header.lower().startswith("bearer ") else None
    ticket = request.query_params.get("ticket") if SSE_ROUTE.match(request.url.path) else None
    token, typ = (bearer, "access") if bearer else (ticket, "stream") if ticket else \
        (request.cookies.get(COOKIE), "access")
    challenge = {"WWW-Authenticate": "Bearer"}
    if not token:
        raise await _refuse(request, rt, None, status.HTTP_401_UNAUTHORIZED,
                            "missing token: send Authorization: Bearer <token>", challenge)
    try:
        who = verify(rt.secret, token, typ, rt.revoked)
    except AuthError as err:
        raise await _refuse(request, rt, None, status.HTTP_401_UNAUTHORIZED, str(err), challenge) from None
    request.state.principal = who  # a body refused later (422) is audited under its sender
    if request.method in MUTATING and (wait_s := rt.limiter.take(who.token_id)):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"over {rt.settings.rate_limit_per_min} changes a minute for this token; "
                            f"retry in {wait_s} s", headers={"Retry-After": str(wait_s)})
    return who


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    async def check(request: Request, who: Principal = Depends(principal), rt: Runtime = Depends(runtime),
                    ) -> Principal:
        if not who.can(role):
            raise await _refuse(request, rt, who, status.HTTP_403_FORBIDDEN,
                                f"needs the {role} role; your token is {who.role}")
        return who
    return check


is_viewer, is_operator, is_admin = require("viewer"), require("operator"), require("admin")
viewer = Depends(is_viewer)  # for router-level `dependencies=[viewer]`
