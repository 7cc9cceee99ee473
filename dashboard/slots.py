"""Caps on concurrent streams per caller: SSE connections per token, chat answers per user.

A slot is taken when the route builds its response (past the cap: 429) and given back when the response ends,
however it ends, the client leaving included: the response's ASGI call frees it, so a stream whose body never
started still gives its slot back.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterable
from typing import Any

from fastapi import HTTPException, status
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send


class Slots:
    """How many streams each key holds. Thread-safe: sync routes take slots from the thread pool."""

    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, key: str, limit: int, what: str) -> None:
        """One more for `key`, or 429 when it already holds `limit`."""
        with self._lock:
            n = self.held.get(key, 0)
            if n >= limit:
                raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                                    f"too many {what}: {n} open, the most allowed at once; close one first")
            self.held[key] = n + 1

    def give(self, key: str) -> None:
        with self._lock:
            n = self.held.pop(key, 0) - 1
            if n > 0:
                self.held[key] = n


class HeldStream(EventSourceResponse):
    """An SSE response that takes one of `slots` for `key` (429 past `limit`) and holds it until it ends."""

    def __init__(self, content: AsyncIterable, slots: Slots, key: str, limit: int, what: str,
                 **kw: Any) -> None:  # noqa: ANN401
        super().__init__(content, **kw)
        slots.take(key, limit, what)
        self.slots, self.key = slots, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slots.give(self.key)
