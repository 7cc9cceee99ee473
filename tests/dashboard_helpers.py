"""The dashboard the tests talk to (the `start_dashboard` fixture starts one), and what they do with it: mark
reactors live, publish alerts, read its SSE streams."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import nats
import redis

from dashboard.relay import REACTORS_KEY

SECRET = "test-secret-for-the-dashboard-0123456789"
T0 = datetime(2026, 1, 5, tzinfo=UTC)  # the time of `make_alert`'s alerts


@dataclass
class Dashboard:
    """A running dashboard: its URL, lake, a token per role, the services it uses and where its signing key
    lives. A `with` block on it stops it at its end."""

    url: str
    lake: str
    tokens: dict[str, str]
    nats_url: str
    redis_url: str
    secret_file: str
    stop: Callable[[], None] = field(repr=False)

    def client(self, role: str | None = "admin", **kw) -> httpx.Client:  # noqa: ANN003
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.url, headers=headers | kw.pop("headers", {}), timeout=30, **kw)

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


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


def make_alert(k: int, reactor: str = "r1", **extra: object) -> dict:
    """Alert `k` of run "run" on `reactor`, `k` minutes after T0; `extra` replaces fields."""
    return {"alert_id": f"a{k}", "run_id": "run", "reactor_id": reactor,
            "ts": (T0 + timedelta(minutes=k)).isoformat(), "severity": "warning", "detector": "fusion",
            "score": 1.5, "signals": [{"name": "do_pct", "contribution": 0.8}]} | extra


def publish_alerts(url: str, messages: list[dict], subject: str = "biopilot.alerts.r1") -> None:
    """Publish each message to JetStream, waiting for its ack."""
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        for m in messages:
            await js.publish(subject, json.dumps(m).encode())  # acked: stored in ALERTS
        await nc.close()
    asyncio.run(go())


class Events:
    """An SSE response read in several goes (httpx streams a body once: every go continues the same lines)."""

    def __init__(self, response: httpx.Response) -> None:
        self.status_code, self.lines = response.status_code, response.iter_lines()

    def iter_lines(self) -> Iterator[str]:
        return self.lines


def read_events(events: Events, n: int, names: set[str] | None = None, timeout_s: float = 15.0) -> list[dict]:
    """`n` SSE events, or fail after `timeout_s` (heartbeats would keep a plain read waiting forever)."""
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(sse_events(events, n, names)), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert not reader.is_alive(), f"fewer than {n} events within {timeout_s} s"
    return got


def alert_ids(events: list[dict]) -> list[str]:
    """The alert ids of SSE events, in order."""
    return [json.loads(e["data"])["alert_id"] for e in events]
