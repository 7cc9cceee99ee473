"""Shared fixtures: a real nats-server (JetStream) and redis-server per test, on free ports, in tmp dirs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from biopilot.services import ManagedServer, ensure_streams, start_nats, start_redis


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[ManagedServer]:
    server = start_nats(tmp_path / "nats")
    asyncio.run(ensure_streams(server.url))
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ManagedServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The signing key and revocation list that `biopilot` processes generate (in `$XDG_CONFIG_HOME/biopilot`)
    land in a tmp dir, never in the home dir of whoever runs the tests."""
    path = tmp_path_factory.mktemp("config")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(path))
        yield path
