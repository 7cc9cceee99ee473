"""JWT tokens with three roles: viewer (read + streams) < operator (+ control, faults, replay) < admin (+ tokens).

An access token (`typ: access`) comes as `Authorization: Bearer ...` or in the page's http-only cookie; it lives
at most `Settings.token_ttl_h` and carries a `jti` that `biopilot token revoke` can put on the revocation list.
EventSource cannot set headers, so SSE routes also take `?ticket=`: a stream ticket (`typ: stream`, 60 s, the
parent token's jti) minted by `POST /api/stream-ticket`, never a bearer token (URLs end up in logs).

The signing key is BIOPILOT_SECRET, else a key generated once into `Settings.secret_file` (default
`$XDG_CONFIG_HOME/biopilot/secret` or `~/.config/biopilot/secret`: outside the lake, which is often shared), mode
0600. `biopilot up` prints a login link with a one-time code kept in Redis (`issue_login_code`), not a token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from core.config import Settings, SettingsError

log = logging.getLogger(__name__)
ROLES = ("viewer", "operator", "admin")
ALGORITHM = "HS256"
COOKIE = "biopilot_token"
MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash are guessable offline from any token
STREAM_TICKET_TTL_S = 60
LOGIN_CODE_TTL_S = 600
LOGIN_KEY = "biopilot:login:"  # + sha256(code): Redis never holds a usable code


class AuthError(Exception):
    pass


class SecretError(SettingsError):
    """The signing key is missing, too short or readable by others."""


@dataclass(frozen=True)
class Principal:
    subject: str
    role: str
    token_id: str = ""  # the token's jti: rate limits, stream caps and revocation key on it

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def secret_path(settings: Settings) -> Path:
    if settings.secret_file:
        return Path(settings.secret_file).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "biopilot" / "secret"


def _create_secret_file(path: Path) -> None:
    """A fresh key in a 0600 temp file beside `path`, linked into place: `path` appears whole or not at all,
    and of two processes creating it at once both end up with the same key (the second link fails)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: its key stands
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def secret_for(settings: Settings) -> str:
    if settings.secret:
        key, source = settings.secret, "BIOPILOT_SECRET"
    else:
        path = secret_path(settings)
        if not path.exists():
            _create_secret_file(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SecretError(f"{path} has mode {mode:o}: others may read the signing key; chmod 600 it")
        key, source = path.read_text().strip(), str(path)
    if len(key.encode()) < MIN_SECRET_BYTES:
        raise SecretError(f"{source} is {len(key.encode())} bytes; the signing key needs at least "
                          f"{MIN_SECRET_BYTES} (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)")
    return key


def ttl_cap_s(settings: Settings) -> int:
    return settings.token_ttl_h * 3600


JTI_PATTERN = r"[0-9a-f]{24}"  # what new_token_id makes


def new_token_id() -> str:
    return secrets.token_hex(12)


def create_token(secret: str, role: str, subject: str | None = None, ttl_s: int = 12 * 3600, *,
                 typ: str = "access", jti: str | None = None, by: str | None = None) -> str:
    """A signed token; `by` names the admin who minted it over the API."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    now = int(time.time())
    claims = {"sub": subject or f"{role}-{secrets.token_hex(3)}", "role": role, "typ": typ,
              "jti": jti or new_token_id(), "iat": now, "exp": now + ttl_s}
    if by:
        claims["by"] = by
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def claims_of(secret: str, token: str, check_expiry: bool = True) -> dict:
    try:
        return jwt.decode(token, secret, algorithms=[ALGORITHM], options={
            "require": ["exp", "sub", "role", "jti", "typ"], "verify_exp": check_expiry})
    except jwt.PyJWTError as err:
        raise AuthError(f"invalid token: {err}") from None


def verify(secret: str, token: str, typ: str = "access", revoked: Revocations | None = None) -> Principal:
    claims = claims_of(secret, token)
    if claims["role"] not in ROLES:
        raise AuthError(f"invalid token: unknown role {claims['role']!r}")
    if claims["typ"] != typ:
        raise AuthError(f"invalid token: a {claims['typ']} token where a {typ} token belongs")
    if revoked is not None and revoked.has(claims["jti"]):
        raise AuthError("invalid token: revoked")
    return Principal(claims["sub"], claims["role"], claims["jti"])


class Revocations:
    """Revoked jtis, one JSON line each ({"jti", "exp"}), in a 0600 file beside the signing key, so the CLI can
    revoke without the stack running. Readers reload it when its size or mtime changes (a stat per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._jtis: frozenset[str] = frozenset()

    @classmethod
    def for_settings(cls, settings: Settings) -> Revocations:
        return cls(secret_path(settings).with_name("revoked"))

    def has(self, jti: str) -> bool:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return False
        if self._stamp != (st.st_mtime_ns, st.st_size):
            now, jtis = time.time(), set()
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    # an expired token fails on its exp anyway: its entry need not be kept
                    if entry.get("exp") is None or entry["exp"] > now:
                        jtis.add(str(entry["jti"]))
                except (ValueError, KeyError, TypeError, AttributeError):
                    if line.strip():  # a hand-edited line, say: one bad line must not refuse every request
                        log.warning("%s: skipped a line that is not a revocation: %.80s", self.path, line)
            self._jtis, self._stamp = frozenset(jtis), (st.st_mtime_ns, st.st_size)
        return jti in self._jtis

    def add(self, jti: str, exp: int | None) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:  # one write of one line: appends from several processes do not interleave
            f.write(json.dumps({"jti": jti, "exp": exp, "at": int(time.time())}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def revocation_target(secret: str, jti_or_token: str) -> tuple[str, int | None]:
    """(jti, exp) of a token, or of a bare jti (exp unknown)."""
    if jti_or_token.count(".") == 2:  # a JWT: header.claims.signature
        claims = claims_of(secret, jti_or_token, check_expiry=False)
        return claims["jti"], int(claims["exp"])
    # only the shape a jti has: a mistyped one would be listed, reported revoked, and the token left working
    if not re.fullmatch(JTI_PATTERN, jti_or_token):
        raise AuthError(f"{jti_or_token[:40]!r} is neither a token nor a token id (a jti: the 24 hex characters "
                        "`token create` prints)")
    return jti_or_token, None


def _login_key(code: str) -> str:
    return LOGIN_KEY + hashlib.sha256(code.encode()).hexdigest()


def issue_login_code(redis_url: str, role: str = "admin", subject: str = "admin",
                     ttl_s: int = LOGIN_CODE_TTL_S) -> str:
    """A one-time code for `/login?code=`, valid `ttl_s` and only once (the dashboard takes it with GETDEL)."""
    import redis

    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    code = secrets.token_urlsafe(24)
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.set(_login_key(code), json.dumps({"role": role, "subject": subject}), ex=ttl_s)
    except redis.RedisError as err:
        raise AuthError(f"cannot store a login code in the cache (BIOPILOT_REDIS_URL): {err}") from None
    finally:
        client.close()
    return code


async def redeem_login_code(redis, code: str) -> Principal | None:  # noqa: ANN001 - redis.asyncio.Redis
    """Who the code was issued for, with the id of the token to mint for them; None if the code is unknown,
    expired or used (it is gone after this call)."""
    raw = await redis.getdel(_login_key(code))
    if raw is None:
        return None
    issued = json.loads(raw)
    return Principal(issued["subject"], issued["role"], new_token_id())
