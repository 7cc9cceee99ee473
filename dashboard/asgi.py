"""The shape of the dashboard's own middlewares: pure ASGI (not BaseHTTPMiddleware), so streamed responses (SSE,
chat) pass through untouched, each editing the start of every HTTP response."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

StartEditor = Callable[[Message], Message]


class ResponseStartMiddleware:
    """Subclasses say, per request, how the `http.response.start` message changes (`editor`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def editor(self, scope: Scope) -> StartEditor:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        edit = self.editor(scope)

        async def edited_send(message: Message) -> None:
            await send(edit(message) if message["type"] == "http.response.start" else message)

        await self.app(scope, receive, edited_send)
