"""A real dashboard (uvicorn on a free port) over the test's own nats-server, redis-server and Delta lake."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis
import uvicorn

from biopilot.config import Settings
from biopilot.services import free_port, wait_port
from dashboard.app import create_app
from dashboard.auth import create_token
from dashboard.relay import REACTORS_KEY

SECRET = "test-secret-for-the-dashboard-0123456789"


@dataclass
class Dashboard:
    url: str
    lake: str
    tokens: dict[str, str]

    def client(self, role: str | None = "admin", **kw) -> httpx.Client:  # noqa: ANN003
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers | kw.pop("headers", {}), timeout=30, **kw)


@contextmanager
def running_dashboard(nats_url: str, redis_url: str, lake: Path, **settings_overrides: object,
                      ) -> Iterator[Dashboard]:
    # the revocation list lives beside the secret file: in the test's tmp dir, not the home dir
    settings = Settings(nats_url=nats_url, redis_url=redis_url, lake=str(lake), secret=SECRET,
                        secret_file=str(Path(lake).parent / "config" / "secret"), **settings_overrides)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(port)
    try:
        yield Dashboard(f"http://127.0.0.1:{port}", str(lake),
                        {r: create_token(SECRET, r, f"test-{r}") for r in ("viewer", "operator", "admin")})
    finally:
        server.should_exit = True
        thread.join(15)


def mark_live(redis_url: str, *reactor_ids: str) -> None:
    """Record reactors as live, as the relay does when their ticks arrive: controls accept only live ones."""
    client = redis.Redis.from_url(redis_url)
    try:
        for reactor in reactor_ids:
            client.hset(REACTORS_KEY, reactor, json.dumps({"run_id": f"{reactor}-run", "t": 0.0}))
    finally:
        client.close()


def sse_events(response: httpx.Response, n: int, names: set[str] | None = None) -> list[dict]:
    """Read `n` events (id, event, data) from a streaming SSE response; comments (heartbeats) are skipped."""
    events, current = [], {}
    for line in response.iter_lines():
        if not line:
            if current.get("data") is not None and (names is None or current.get("event") in names):
                events.append(current)
                if len(events) >= n:
                    return events
            current = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current[field] = value if field != "data" else (current.get("data", "") + value)
    return events


def wait_for(predicate: Callable[[], object], timeout_s: float = 15.0) -> object:
    """Poll `predicate` until it returns something truthy or the time is up; its last value either way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    return predicate()
