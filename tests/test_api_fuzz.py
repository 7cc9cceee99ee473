"""The HTTP API under schemathesis, as viewer, operator and admin: no input the schema allows or breaks gives a
5xx, and every 4xx comes with a JSON error body. A bounded number of examples per operation keeps it quick;
`BIOPILOT_FUZZ_EXAMPLES` raises it for a longer hunt."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from biopilot.config import Settings
from biopilot.services import ensure_streams, start_nats, start_redis
from dashboard.app import create_app
from tests.dashboard_helpers import SECRET, Dashboard, running_dashboard

EXAMPLES = int(os.environ.get("BIOPILOT_FUZZ_EXAMPLES", "6"))
# streams that never end by themselves are fuzzed for their parameters' validation only (see `_call`)
ENDLESS = ("/api/stream/", "/stream")

schema = schemathesis.openapi.from_dict(
    create_app(Settings(nats_url="nats://127.0.0.1:1", redis_url="redis://127.0.0.1:1", secret=SECRET)).openapi())


@pytest.fixture(scope="module")
def fuzz_dash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("fuzz")
    nats_server, redis_server = start_nats(root / "nats"), start_redis(root / "redis")
    asyncio.run(ensure_streams(nats_server.url))
    try:
        # a rate limit high enough that the fuzzer reaches every route's own validation
        with running_dashboard(nats_server.url, redis_server.url, root / "lake", rate_limit_per_min=100_000,
                               sse_max_per_token=1000) as dash:
            yield dash
    finally:
        redis_server.stop()
        nats_server.stop()


def _call(case: schemathesis.Case, dash: Dashboard, role: str):  # noqa: ANN202
    headers = {"Authorization": f"Bearer {dash.tokens[role]}"}
    if any(part in case.path for part in ENDLESS):
        # an accepted stream would run until the timeout: ask with a read timeout and take a timeout as 2xx
        import requests

        try:
            return case.call(base_url=dash.url, headers=headers, timeout=2)
        except requests.exceptions.ReadTimeout:
            return None
    return case.call(base_url=dash.url, headers=headers, timeout=30)


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_input_gives_a_server_error_and_every_refusal_is_json(case: schemathesis.Case, role: str,
                                                                   fuzz_dash: Dashboard) -> None:
    response = _call(case, fuzz_dash, role)
    if response is None:
        return
    where = f"{case.method} {case.formatted_path} as {role}: {response.status_code} {response.text[:300]}"
    assert response.status_code < 500, where
    if 400 <= response.status_code < 500:
        content_type = response.headers.get("content-type") or [""]  # schemathesis keeps every value of a header
        assert content_type[0].startswith("application/json"), where
        body = json.loads(response.text)
        assert isinstance(body, dict) and (body.get("detail") or body.get("message")), where
