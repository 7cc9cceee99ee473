"""Request plumbing that runs before any route: a request id on every request and response, a cap on request
bodies (before auth, so an anonymous client cannot make the server buffer a large body), and the per-token rate
limiter the auth dependency applies to mutating requests and chat."""

from __future__ import annotations

import json
import math
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.events import ID_PATTERN
from dashboard.asgi import ResponseStartMiddleware, StartEditor

REQUEST_ID_HEADER = "x-request-id"


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestId(ResponseStartMiddleware):
    """`scope["state"]["request_id"]`: the client's X-Request-ID when it is a plain id, else a fresh one;
    echoed in the response's X-Request-ID and written to the audit rows."""

    def editor(self, scope: Scope) -> StartEditor:
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if re.fullmatch(ID_PATTERN, given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        def with_id(message: Message) -> Message:
            MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            return message

        return with_id


class BodyLimit:
    """Refuses a request body over `max_bytes` with 413 before the app (and so auth) sees the request: by its
    Content-Length, or, for a chunked body, by reading it here up to the cap (the route would read it whole
    anyway) and handing the app what was read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        too_large = f"request body over {self.max_bytes} bytes"
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, f"Content-Length {length[:20]!r} is not a number")
            elif int(length) > self.max_bytes:
                await _send_json(send, 413, too_large)
            else:  # the server reads no more than Content-Length
                await self.app(scope, receive, send)
            return
        if "chunked" not in headers.get("transfer-encoding", "").lower():
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _send_json(send, 413, too_large)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class RateLimiter:
    """A token bucket per key (a token's jti): `per_min` requests at once, refilled at `per_min` a minute;
    0 turns the limit off."""

    MAX_KEYS = 10_000  # past this, buckets that have refilled are forgotten (they would start full anyway)

    def __init__(self, per_min: int) -> None:
        self.capacity = float(per_min)
        self.per_s = per_min / 60.0
        self.buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens left, monotonic time)

    def take(self, key: str) -> int:
        """0 if the request may go, else the seconds to wait (for Retry-After)."""
        if self.capacity <= 0:
            return 0
        now = time.monotonic()
        tokens, since = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - since) * self.per_s)
        if len(self.buckets) > self.MAX_KEYS:
            self.buckets = {k: (t, s) for k, (t, s) in self.buckets.items()
                            if t + (now - s) * self.per_s < self.capacity}
        if tokens >= 1:
            self.buckets[key] = (tokens - 1, now)
            return 0
        self.buckets[key] = (tokens, now)
        return max(1, math.ceil((1 - tokens) / self.per_s))
