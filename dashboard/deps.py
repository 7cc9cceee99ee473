"""Dependencies: the running services and the caller's identity and role."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import redis.asyncio as aioredis
from fastapi import Depends, HTTPException, Request, status
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from agents.llm import Backend
from biopilot.config import Settings
from dashboard.auth import COOKIE, AuthError, Principal, verify
from dashboard.hub import Hub
from sinks.table_writer import TableWriter


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

    def audit(self, who: Principal, action: str, target: str, payload: dict) -> None:
        """Who did what, when, with which payload: the `audit` Delta table."""
        self.writer.put("audit", {"ts": datetime.now(UTC), "actor": who.subject, "role": who.role,
                                  "action": action, "target": target,
                                  "payload_json": json.dumps(payload, default=str)})

    def spawn(self, coro) -> asyncio.Task:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def principal(request: Request, rt: Runtime = Depends(runtime)) -> Principal:
    header = request.headers.get("authorization", "")
    token = (header[7:] if header.lower().startswith("bearer ") else None) or request.cookies.get(COOKIE) \
        or request.query_params.get("token")
    if not token:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    try:
        return verify(rt.secret, token)
    except AuthError as err:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(err), headers={"WWW-Authenticate": "Bearer"}) from None


def require(role: str) -> Callable[[Principal], Principal]:
    def check(who: Principal = Depends(principal)) -> Principal:
        if not who.can(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"needs the {role} role; your token is {who.role}")
        return who
    return check


is_viewer, is_operator, is_admin = require("viewer"), require("operator"), require("admin")
viewer = Depends(is_viewer)  # for router-level `dependencies=[viewer]`
