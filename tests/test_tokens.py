"""Tokens and the page's sign-in, attacked: lifetimes past the cap, revoked tokens, bearer tokens in URLs, stream
tickets, one-time login codes, the session cookie, oversized bodies, request floods and weak signing keys."""

from __future__ import annotations

import os
import stat

import httpx
import jwt
import pytest

from biopilot.cli import main
from core.config import Settings
from dashboard.auth import SecretError, create_token, issue_login_code, secret_for
from sinks import delta
from tests.dashboard_helpers import SECRET, Dashboard

MAX_BODY_BYTES = 1000
RATE_PER_MIN = 3


@pytest.fixture(scope="module")
def dash(start_module_dashboard) -> Dashboard:
    return start_module_dashboard(max_body_bytes=MAX_BODY_BYTES, rate_limit_per_min=RATE_PER_MIN)


def _client(dash, token: str | None = None, **kw) -> httpx.Client:  # noqa: ANN001, ANN003
    """A client with a token of its own (the rate limit counts per token)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=dash.url, headers=headers, timeout=30, **kw)


def _fresh(role: str) -> str:
    return create_token(SECRET, role, f"test-{role}")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_token_lifetime_is_capped_and_at_least_a_minute(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOPILOT_SECRET", SECRET)
    monkeypatch.setenv("BIOPILOT_TOKEN_TTL_H", "12")
    code, _, err = _cli(capsys, "token", "create", "--role", "viewer", "--ttl-h", "13",
                        "--lake", str(tmp_path / "lake"))
    assert code == 2 and "past the cap of 12 h" in err
    code, out, err = _cli(capsys, "token", "create", "--role", "viewer", "--ttl-h", "0.0001",
                          "--lake", str(tmp_path / "lake"))
    assert code == 2 and "under a minute" in err and out == ""
    code, out, _ = _cli(capsys, "token", "create", "--role", "viewer", "--lake", str(tmp_path / "lake"))
    claims = jwt.decode(out.strip().splitlines()[-1], SECRET, algorithms=["HS256"])
    assert code == 0 and claims["exp"] - claims["iat"] == 12 * 3600 and claims["typ"] == "access" and claims["jti"]


@pytest.mark.parametrize("jti", ["garbage", "5bbb7baa74641ab93dbc32c", "5bbb7baa74641ab93dbc32c1x"])
def test_cli_revoke_of_a_mistyped_token_id_is_refused_not_reported_done(jti, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BIOPILOT_SECRET", SECRET)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    code, out, err = _cli(capsys, "token", "revoke", jti, "--lake", str(tmp_path / "lake"))
    assert code == 2 and "neither a token nor a token id" in err and "revoked" not in out
    assert not (tmp_path / "config" / "biopilot" / "revoked").exists()


def test_an_admin_minted_token_has_the_chosen_subject_the_minting_admin_and_a_capped_lifetime(dash):
    admin = _fresh("admin")
    with _client(dash, admin) as c:
        assert c.post("/api/tokens", json={"role": "viewer", "ttl_h": 13}).status_code == 422
        r = c.post("/api/tokens", json={"role": "viewer", "subject": "night-shift"})
        assert c.post("/api/tokens", json={"role": "viewer", "subject": "<b>x</b>"}).status_code == 422
    assert r.status_code == 201, r.text
    claims = jwt.decode(r.json()["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == "night-shift" and claims["by"] == "test-admin" and claims["exp"] - claims["iat"] == 12 * 3600
    minted = max((row for row in delta.read(dash.lake, "audit").to_pylist() if row["action"] == "token_create"),
                 key=lambda row: row["seq"])
    assert minted["actor"] == "test-admin" and minted["target"] == claims["jti"] == r.json()["token_id"]


def test_a_revoked_token_is_refused_whether_revoked_over_the_api_or_the_cli(dash, monkeypatch, capsys):
    by_api, by_cli = _fresh("operator"), _fresh("viewer")
    with _client(dash, by_api) as c:
        assert c.get("/api/runs").status_code == 200
    with _client(dash, _fresh("admin")) as admin:
        assert admin.post("/api/tokens/revoke", json={"token": by_api}).status_code == 204
        assert admin.post("/api/tokens/revoke", json={"token": "not a token"}).status_code == 422
    with _client(dash, by_api) as c:
        r = c.get("/api/runs")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]

    with _client(dash, by_cli) as c:
        assert c.get("/api/runs").status_code == 200
    monkeypatch.setenv("BIOPILOT_SECRET", SECRET)
    monkeypatch.setenv("BIOPILOT_SECRET_FILE", dash.secret_file)
    jti = jwt.decode(by_cli, SECRET, algorithms=["HS256"])["jti"]
    code, out, _ = _cli(capsys, "token", "revoke", jti, "--lake", dash.lake)
    assert code == 0 and jti in out
    with _client(dash, by_cli) as c:
        assert c.get("/api/runs").status_code == 401


def test_a_bearer_token_in_the_url_is_refused_on_rest_and_sse_routes(dash):
    with _client(dash) as c:
        assert c.get("/api/runs", params={"token": _fresh("admin")}).status_code == 401
        with c.stream("GET", "/api/stream/alerts", params={"token": _fresh("admin")}) as r:
            assert r.status_code == 401
        with c.stream("GET", "/api/stream/alerts", params={"ticket": _fresh("admin")}) as r:
            assert r.status_code == 401  # an access token is no ticket either


def test_a_stream_ticket_opens_sse_routes_only_and_expires(dash):
    with _client(dash, _fresh("viewer")) as c:
        r = c.post("/api/stream-ticket")
    assert r.status_code == 201 and r.json()["expires_in_s"] == 60
    ticket = r.json()["ticket"]
    claims = jwt.decode(ticket, SECRET, algorithms=["HS256"])
    assert claims["typ"] == "stream" and claims["exp"] - claims["iat"] == 60
    with _client(dash) as c:
        with c.stream("GET", "/api/stream/alerts", params={"ticket": ticket}) as stream:
            assert stream.status_code == 200
        assert c.get("/api/runs", params={"ticket": ticket}).status_code == 401
    with _client(dash, ticket) as c:  # nor is a ticket a bearer token
        assert c.get("/api/runs").status_code == 401
    expired = create_token(SECRET, "viewer", "test-viewer", -1, typ="stream")
    with _client(dash) as c, c.stream("GET", "/api/stream/alerts", params={"ticket": expired}) as stream:
        assert stream.status_code == 401


def test_a_login_code_signs_in_once_with_a_strict_http_only_cookie(dash):
    code = issue_login_code(dash.redis_url, "operator", "night-shift")
    with _client(dash, follow_redirects=False) as c:
        r = c.get("/login", params={"code": code})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # plain http
        assert f"max-age={12 * 3600}" in cookie
        me = c.get("/api/whoami").json()
        assert me["subject"] == "night-shift" and me["role"] == "operator"
    login = max((row for row in delta.read(dash.lake, "audit").to_pylist() if row["action"] == "login"),
                key=lambda row: row["seq"])
    assert login["actor"] == "night-shift" and login["token_id"] == me["token_id"] and login["result"] == "signed in"
    with _client(dash, follow_redirects=False) as c:
        again = c.get("/login", params={"code": code})
        assert again.status_code == 303 and "error=" in again.headers["location"]
        assert "set-cookie" not in again.headers and c.get("/api/whoami").status_code == 401


def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(dash):
    # uvicorn honours X-Forwarded-Proto from the proxies it trusts (default 127.0.0.1, where this client is)
    with _client(dash, follow_redirects=False) as c:
        r = c.get("/login", params={"code": issue_login_code(dash.redis_url)}, headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_a_body_over_the_cap_is_refused_before_auth(dash):
    big = b'{"type": "feed", "volume_ml": 5, "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    before = delta.read(dash.lake, "audit")
    with _client(dash) as c:  # no token: auth would say 401, the cap answers first
        r = c.post("/api/reactors/r1/control", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "body over" in r.json()["detail"]
        chunked = c.post("/api/reactors/r1/control", content=iter([big[:600], big[600:]]),
                         headers={"Content-Type": "application/json"})
        assert chunked.status_code == 413 and "body over" in chunked.json()["detail"]
        small = c.post("/api/reactors/r1/control", content=iter([b'{"type": ', b'"feed"}']),
                       headers={"Content-Type": "application/json"})
        assert small.status_code == 401  # a chunked body under the cap reaches the app
    after = delta.read(dash.lake, "audit")
    assert (after.num_rows if after else 0) == (before.num_rows if before else 0) + 1  # only the small one's 401


def test_mutating_requests_are_rate_limited_per_token(dash):
    flooding = _fresh("viewer")
    with _client(dash, flooding) as c:
        codes = [c.post("/api/stream-ticket").status_code for _ in range(RATE_PER_MIN)]
        r = c.post("/api/stream-ticket")
        assert codes == [201] * RATE_PER_MIN
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "retry" in r.json()["detail"]
        assert c.get("/api/runs").status_code == 200  # reads are not limited
    with _client(dash, _fresh("viewer")) as other:
        assert other.post("/api/stream-ticket").status_code == 201


def test_a_short_signing_key_is_refused(tmp_path, monkeypatch, capsys):
    with pytest.raises(SecretError, match="at least 32"):
        secret_for(Settings(secret="too-short"))
    monkeypatch.setenv("BIOPILOT_SECRET", "too-short")
    code, _, err = _cli(capsys, "token", "create", "--role", "viewer", "--lake", str(tmp_path))
    assert code == 2 and "at least 32" in err and len(err.strip().splitlines()) == 1


def test_the_generated_signing_key_is_0600_outside_the_lake_and_stable(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    settings = Settings(lake=str(tmp_path / "lake"))
    key = secret_for(settings)
    path = tmp_path / "xdg" / "biopilot" / "secret"
    assert len(key) >= 32 and path.read_text() == key and secret_for(settings) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and not (tmp_path / "lake").exists()
    assert [p.name for p in path.parent.iterdir()] == ["secret"]  # no temp file left behind
    os.chmod(path, 0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        secret_for(settings)
