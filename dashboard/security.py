"""Security headers on every response: a Content-Security-Policy that lets the page run only its own scripts and
styles (no inline script, so markup that slipped into the page cannot run), no MIME sniffing, no referrer.

A response that brings its own policy keeps it (the self-contained run report: inline style, inlined image, no
script at all). FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from their CDN with an inline
bootstrap script, so they get a policy that allows just that.
"""

from __future__ import annotations

from starlette.types import Message, Scope

from dashboard.asgi import ResponseStartMiddleware, StartEditor

_LOCKED = "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
# uPlot sizes its canvases through element.style (CSSOM), which style-src does not govern: no 'unsafe-inline'
PAGE_POLICY = f"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; {_LOCKED}"
REPORT_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; object-src 'none'; base-uri 'none'; "
                 "frame-ancestors 'none'; form-action 'none'")
_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (f"default-src 'self'; script-src 'self' 'unsafe-inline' {_CDN}; "
               f"style-src 'self' 'unsafe-inline' {_CDN} https://fonts.googleapis.com; "
               "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
               f"https://cdn.redoc.ly; worker-src blob:; {_LOCKED}")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")


class SecurityHeaders(ResponseStartMiddleware):
    def editor(self, scope: Scope) -> StartEditor:
        policy = DOCS_POLICY if scope["path"] in DOCS_PATHS else PAGE_POLICY

        def with_headers(message: Message) -> Message:
            headers = list(message.get("headers", []))
            if b"content-security-policy" not in {name.lower() for name, _ in headers}:
                headers.append((b"content-security-policy", policy.encode()))
            headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
            return {**message, "headers": headers}

        return with_headers
