"""The auth matrix: every route x no token / viewer / operator / admin."""

from __future__ import annotations

import pytest

from dashboard.auth import ROLES
from tests.dashboard_helpers import Dashboard, wait_for

# (method, path, body, least role)
ROUTES = [
    ("GET", "/api/runs", None, "viewer"),
    ("GET", "/api/runs/none", None, "viewer"),
    ("GET", "/api/runs/none/ticks", None, "viewer"),
    ("GET", "/api/runs/none/alerts", None, "viewer"),
    ("GET", "/api/runs/none/soft_sensors", None, "viewer"),
    ("GET", "/api/reactors", None, "viewer"),
    ("GET", "/api/reactors/r1/reference", None, "viewer"),
    ("GET", "/api/reactors/r1/annotations", None, "viewer"),
    ("GET", "/api/fleet", None, "viewer"),
    ("GET", "/api/stream/telemetry", None, "viewer"),
    ("GET", "/api/stream/alerts", None, "viewer"),
    ("GET", "/api/stream/incidents", None, "viewer"),
    ("GET", "/api/stream/agents", None, "viewer"),
    ("POST", "/api/chat", {"question": "why?", "run_id": "none"}, "viewer"),
    ("GET", "/api/subscriptions", None, "viewer"),
    ("POST", "/api/subscriptions", {"reactor": "r1"}, "operator"),
    ("DELETE", "/api/subscriptions/none", None, "operator"),
    ("GET", "/api/subscriptions/none", None, "viewer"),
    ("GET", "/api/reports/none", None, "viewer"),
    ("GET", "/api/replay", None, "viewer"),
    ("GET", "/api/whoami", None, "viewer"),
    ("POST", "/api/reactors/r1/control", {"type": "feed", "volume_ml": 5}, "operator"),
    ("POST", "/api/reactors/r1/faults", {"fault": "overfeed"}, "operator"),
    ("POST", "/api/replay", {"run_id": "none"}, "operator"),
    ("POST", "/api/replay/none/pause", None, "operator"),
    ("POST", "/api/tokens", {"role": "viewer"}, "admin"),
    ("POST", "/api/tokens/revoke", {"token": "0123abcd"}, "admin"),
    ("POST", "/api/stream-ticket", None, "viewer"),
]


@pytest.fixture(scope="module")
def dash(start_module_dashboard) -> Dashboard:
    return start_module_dashboard()


def _call(dash, role, method, path, body) -> int:  # noqa: ANN001
    with dash.client(role) as c:
        if "/stream/" in path:
            with c.stream(method, path) as r:
                return r.status_code
        return c.request(method, path, json=body).status_code


@pytest.mark.parametrize(("method", "path", "body", "least"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_each_role_on_each_route(dash, method, path, body, least):
    assert _call(dash, None, method, path, body) == 401
    for role in ROLES:
        code = _call(dash, role, method, path, body)
        if ROLES.index(role) < ROLES.index(least):
            assert code == 403, (role, code)
        else:
            assert code not in (401, 403), (role, code)


def test_a_forged_or_expired_token_is_refused(dash):
    from dashboard.auth import create_token

    for token in (create_token("another-secret-of-32-bytes-or-more!", "admin"),
                  create_token("test-secret-for-the-dashboard-0123456789", "admin", ttl_s=-10), "garbage"):
        with dash.client(None, headers={"Authorization": f"Bearer {token}"}) as c:
            r = c.get("/api/runs")
            assert r.status_code == 401 and "invalid token" in r.json()["detail"]


def test_health_and_metrics_need_no_token(dash):
    with dash.client(None) as c:
        # just after start the status was seen degraded for a moment (about 1 run in 3 on this 2-core machine,
        # cause not found; the webhook reader reports "restarting" for its 0.5 s backoff): healthy within 5 s
        assert wait_for(lambda: c.get("/healthz").json()["status"] == "ok", 5), c.get("/healthz").json()
        assert "biopilot_sse_clients" in c.get("/metrics").text


def test_login_sets_an_http_only_cookie_that_the_page_uses(dash):
    from dashboard.auth import issue_login_code

    with dash.client(None, follow_redirects=False) as c:
        r = c.get("/login", params={"code": issue_login_code(dash.redis_url, "viewer", "test-login")})
        assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
        assert c.get("/api/whoami").json()["role"] == "viewer"


def test_a_token_in_the_login_url_signs_nobody_in(dash):
    with dash.client(None, follow_redirects=False) as c:
        r = c.get("/login", params={"token": dash.tokens["admin"]})
        assert r.status_code == 303 and "error=" in r.headers["location"] and "set-cookie" not in r.headers
