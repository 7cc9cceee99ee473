"""The HTTP API under schemathesis, as viewer, operator and admin: no input the schema allows or breaks gives a
5xx, and every 4xx comes with a JSON error body. A bounded number of examples per operation keeps it quick;
`BIOPILOT_FUZZ_EXAMPLES` raises it for a longer hunt."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from core.config import Settings
from dashboard.app import create_app
from tests.dashboard_helpers import SECRET, Dashboard

EXAMPLES = int(os.environ.get("BIOPILOT_FUZZ_EXAMPLES", "6"))
ENDLESS = ("/api/stream/", "/stream")  # SSE routes: an accepted stream never ends by itself

schema = schemathesis.openapi.from_dict(
    create_app(Settings(nats_url="nats://127.0.0.1:1", redis_url="redis://127.0.0.1:1", secret=SECRET)).openapi())


@pytest.fixture(scope="module")
def fuzz_dash(start_module_dashboard: Callable[..., Dashboard]) -> Dashboard:
    # a rate limit high enough that the fuzzer reaches every route's own validation
    return start_module_dashboard(rate_limit_per_min=100_000, sse_max_per_token=1000)


@dataclass
class _Answer:
    status_code: int
    content_type: str
    text: str


def _call(case: schemathesis.Case, dash: Dashboard, role: str) -> _Answer:
    headers = {**(case.headers or {}), "Authorization": f"Bearer {dash.tokens[role]}"}
    if any(part in case.path for part in ENDLESS):
        # an accepted stream never ends: its status line and headers are the answer; a refusal's body is read
        with httpx.stream(case.method, dash.url + case.formatted_path, params=case.query, headers=headers,
                          timeout=30) as reply:
            text = reply.read().decode() if reply.status_code >= 400 else ""
            return _Answer(reply.status_code, reply.headers.get("content-type", ""), text)
    reply = case.call(base_url=dash.url, headers=headers, timeout=30)
    content_type = reply.headers.get("content-type") or [""]  # schemathesis keeps every value of a header
    return _Answer(reply.status_code, content_type[0], reply.text)


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_gives_a_server_error_and_every_refusal_is_json(case: schemathesis.Case, role: str,
                                                                   fuzz_dash: Dashboard) -> None:
    response = _call(case, fuzz_dash, role)
    where = f"{case.method} {case.formatted_path} as {role}: {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500:
        assert response.content_type.startswith("application/json"), where
        body = json.loads(response.text)
        assert isinstance(body, dict) and (body.get("detail") or body.get("message")), where
