"""JWT bearer tokens with three roles: viewer (read + streams) < operator (+ control, faults, replay) < admin
(+ tokens). A token comes as `Authorization: Bearer ...`, or the page's `biopilot_token` cookie, or a `token`
query parameter (EventSource cannot set headers). The signing key is BIOPILOT_SECRET, else a key generated
once into the lake (`<lake>/.secret`, mode 600)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from biopilot.config import Settings

ROLES = ("viewer", "operator", "admin")
ALGORITHM = "HS256"
COOKIE = "biopilot_token"


class AuthError(Exception):
    pass


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def secret_for(settings: Settings) -> str:
    if settings.secret:
        return settings.secret
    if "://" in settings.lake:
        raise AuthError("set BIOPILOT_SECRET when the lake is remote")
    path = Path(settings.lake) / ".secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32))
    return path.read_text().strip()


def create_token(secret: str, role: str, subject: str | None = None, ttl_s: int = 30 * 86400) -> str:
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    now = int(time.time())
    claims = {"sub": subject or f"{role}-{secrets.token_hex(3)}", "role": role, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, token: str) -> Principal:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "role"]})
    except jwt.PyJWTError as err:
        raise AuthError(f"invalid token: {err}") from None
    if claims["role"] not in ROLES:
        raise AuthError(f"invalid token: unknown role {claims['role']!r}")
    return Principal(claims["sub"], claims["role"])
