"""Shared fixtures. Those that start something (a nats-server or redis-server on a free port in a tmp dir, a
dashboard, the flow process, a fake OpenAI endpoint, headless Chromium) stop it at teardown; the factories
stop everything they started. A test using any of them is marked `integration` (`make test-unit` leaves those
out); a test starting a process another way carries the mark itself."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from core.config import Settings
from core.processes import stop_process_groups
from core.services import ManagedServer, ensure_streams, free_port, start_nats, start_redis, wait_port
from dashboard.app import create_app
from dashboard.auth import create_token
from flows.launch import start_flow
from tests.browser_helpers import CHROMIUM, WatchedPage
from tests.dashboard_helpers import SECRET, Dashboard
from tests.llm_helpers import fake_openai
from tests.stream_helpers import Flow

# fixtures that start servers or processes: the tests using them, directly or through another fixture, are
# `integration` tests
INTEGRATION_FIXTURES = {"nats_server", "redis_server", "start_dashboard", "start_module_dashboard", "run_flow",
                        "fake_openai_server", "chromium_page"}
# Chromium's flags for a closed network and a root user (see .ci/run)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The signing key and revocation list that `biopilot` processes generate (in `$XDG_CONFIG_HOME/biopilot`)
    land in a tmp dir, never in the home dir of whoever runs the tests."""
    path = tmp_path_factory.mktemp("config")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(path))
        yield path


# ---- the broker and the cache -----------------------------------------------------------------------------

def _nats_with_streams(data_dir: Path) -> ManagedServer:
    server = start_nats(data_dir)
    asyncio.run(ensure_streams(server.url))
    return server


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[ManagedServer]:
    """A nats-server with JetStream and the project's streams (a test that restarts it stops the new one)."""
    server = _nats_with_streams(tmp_path / "nats")
    yield server
    server.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[ManagedServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


# ---- servers in a thread: the dashboard, a fake OpenAI endpoint -------------------------------------------

def _serve(app: ASGIApp, join_s: float) -> tuple[str, Callable[[], None]]:
    """`app` under uvicorn in a daemon thread on a free loopback port: its URL, and what stops it (waiting up
    to `join_s` for the thread)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(port)

    def stop() -> None:
        server.should_exit = True
        thread.join(join_s)

    return f"http://127.0.0.1:{port}", stop


def _dashboard(nats_url: str, redis_url: str, lake: Path | str, config_dir: Path | None = None,
               **settings_overrides: Any) -> Dashboard:
    # the revocation list lives beside the secret file: in the test's tmp dir (`config_dir`, else beside a local
    # lake), not the home dir
    secret_file = str((config_dir or Path(lake).parent / "config") / "secret")
    settings = Settings(nats_url=nats_url, redis_url=redis_url, lake=str(lake), secret=SECRET,
                        secret_file=secret_file, **settings_overrides)
    url, stop = _serve(create_app(settings), join_s=15)
    tokens = {role: create_token(SECRET, role, f"test-{role}") for role in ("viewer", "operator", "admin")}
    return Dashboard(url, str(lake), tokens, nats_url, redis_url, secret_file, stop)


@pytest.fixture
def start_dashboard(nats_server: ManagedServer, redis_server: ManagedServer,
                    tmp_path: Path) -> Iterator[Callable[..., Dashboard]]:
    """`start_dashboard(lake=tmp_path / "lake", **settings_overrides)`: a dashboard over this test's
    nats-server and redis-server. It stops at the end of a `with` block on it, or at teardown."""
    with ExitStack() as started:
        def start(lake: Path | str | None = None, **settings_overrides: Any) -> Dashboard:
            dash = _dashboard(nats_server.url, redis_server.url, lake or tmp_path / "lake", tmp_path / "config",
                              **settings_overrides)
            started.callback(dash.stop)
            return dash

        yield start


@pytest.fixture(scope="module")
def start_module_dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Dashboard]]:
    """For a module whose tests share one dashboard (its own fixture picks the settings):
    `start_module_dashboard(**settings_overrides)` starts a nats-server, a redis-server and a dashboard over
    them in a fresh tmp dir; all of them stop when the module is done."""
    with ExitStack() as started:
        def start(**settings_overrides: Any) -> Dashboard:
            root = tmp_path_factory.mktemp("stack")
            nats_server = _nats_with_streams(root / "nats")
            started.callback(nats_server.stop)
            redis_server = start_redis(root / "redis")
            started.callback(redis_server.stop)
            dash = _dashboard(nats_server.url, redis_server.url, root / "lake", **settings_overrides)
            started.callback(dash.stop)
            return dash

        yield start


@pytest.fixture
def fake_openai_server() -> Iterator[Callable[[dict], tuple[str, FastAPI]]]:
    """`fake_openai_server(mode)`: (base URL, app) of a running `tests.llm_helpers.fake_openai(mode)`."""
    with ExitStack() as started:
        def start(mode: dict) -> tuple[str, FastAPI]:
            app = fake_openai(mode)
            url, stop = _serve(app, join_s=5)
            started.callback(stop)
            return f"{url}/v1", app

        yield start


# ---- the flow process -------------------------------------------------------------------------------------

@pytest.fixture
def run_flow() -> Iterator[Callable[..., Flow]]:
    """`run_flow(nats_url, lake, lateness_s=300.0, recovery=True, name="flow", plant="bioreactor")`: the
    monitoring flow process of the plant kind `plant` (its log and recovery store beside `lake`, named `name`);
    every one still running is stopped at teardown."""
    flows: list[Flow] = []

    def run(nats_url: str, lake: Path, lateness_s: float = 300.0, recovery: bool = True,
            name: str = "flow", plant: str = "bioreactor") -> Flow:
        log = lake.parent / f"{name}.log"
        # epochs of 1 s: a test's short stream then crosses several stored snapshots
        proc = start_flow(nats_url, str(lake), lake.parent / f"{name}-recovery" if recovery else None, lateness_s,
                          log_path=log, snapshot_s=1.0, plant=plant)
        flows.append(Flow(proc, log))
        return flows[-1]

    yield run
    stop_process_groups([flow.proc for flow in flows])


# ---- headless Chromium ------------------------------------------------------------------------------------

@pytest.fixture
def chromium_page() -> Iterator[Callable[..., WatchedPage]]:
    """`chromium_page(**context_options)`: a fresh page in headless Chromium (Debian's `chromium` driven by
    Playwright: no browser download); `context_options` go to `browser.new_context` (e.g. headers). The page's
    dialogs are dismissed and recorded, and so are its Content-Security-Policy violations. The browser is closed
    at teardown."""
    with ExitStack() as opened:
        browsers: list[Any] = []  # one, launched at the first page

        def new_page(**context_options: Any) -> WatchedPage:
            if not browsers:
                from playwright.sync_api import sync_playwright  # only browser tests need Playwright

                playwright = opened.enter_context(sync_playwright())
                browsers.append(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS))
                opened.callback(browsers[0].close)
            context = browsers[0].new_context(viewport={"width": 1440, "height": 900}, **context_options)
            watched = WatchedPage(context.new_page())

            def on_dialog(dialog: Any) -> None:
                watched.dialogs.append(dialog.message)
                dialog.dismiss()

            def on_console(message: Any) -> None:
                if "Content Security Policy" in message.text:
                    watched.csp_violations.append(message.text)

            watched.page.on("dialog", on_dialog)
            watched.page.on("console", on_console)
            return watched

        yield new_page
