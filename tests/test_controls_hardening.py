"""Controls that a careless or hostile caller cannot turn against the plant: NaN, infinite and out-of-range
setpoints, stops aimed at unknown reactors or sent without the admin role, and malformed commands published
straight to the broker — over a real dashboard, nats-server, redis-server and plant feed."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import nats
import pyarrow as pa
import pytest

from dashboard.routers.control import MAX_FINISHED_REPLAYS, ReplayEntry, forget_finished, next_replay_number
from sources.commands import SETPOINT_LIMITS
from sources.fleet import Fleet
from sources.plant import PlantFeed
from sources.replay import Replay
from sources.scenarios import load_scenario
from tests.dashboard_helpers import Dashboard, mark_live, wait_for

HUGE_INT = "1" + "0" * 400  # 10**400: float() of it raised OverflowError in the plant


@pytest.fixture
def dash(start_dashboard) -> Dashboard:
    d = start_dashboard()
    mark_live(d.redis_url, "r1")
    return d


@contextmanager
def published_controls(nats_url: str) -> Iterator[list[tuple[str, bytes]]]:
    """Every message on biopilot.control.> while the block runs (subject, body)."""
    got: list[tuple[str, bytes]] = []
    ready, done = threading.Event(), threading.Event()

    async def listen() -> None:
        nc = await nats.connect(nats_url)

        async def on(msg) -> None:  # noqa: ANN001
            got.append((msg.subject, msg.data))

        await nc.subscribe("biopilot.control.>", cb=on)
        await nc.flush()
        ready.set()
        while not done.is_set():
            await asyncio.sleep(0.05)
        await nc.flush()
        await asyncio.sleep(0.2)  # what the dashboard published last is delivered
        await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(listen(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield got
    finally:
        done.set()
        thread.join(10)


@pytest.mark.parametrize("body", [
    '{"type": "setpoint", "name": "do_setpoint_pct", "value": NaN}',
    '{"type": "setpoint", "name": "do_setpoint_pct", "value": 1e999}',
    '{"type": "setpoint", "name": "temp_setpoint_c", "value": -Infinity}',
    f'{{"type": "setpoint", "name": "ph_setpoint", "value": {HUGE_INT}}}',
    '{"type": "setpoint", "name": "do_setpoint_pct", "value": 150}',
    '{"type": "setpoint", "name": "ph_setpoint", "value": 2}',
    '{"type": "setpoint", "name": "feed_pump_ml_min", "value": 0}',
    '{"type": "feed", "volume_ml": NaN}',
    '{"type": "setpoint", "name": "do_setpoint_pct", "value": true}',
    '{"type": "feed", "volume_ml": true}',
], ids=["NaN", "1e999", "-Infinity", "10**400", "DO 150 %", "pH 2", "feed pump 0", "feed NaN", "value true",
        "feed true"])
def test_nan_infinite_huge_and_out_of_range_controls_are_422_and_publish_nothing(dash, nats_server, body):
    with published_controls(nats_server.url) as got, dash.client("operator") as c:
        r = c.post("/api/reactors/r1/control", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, r.text
        message = r.json()["message"]
        assert "finite" in message or "must be within" in message or "valid number" in message \
            or "greater than" in message, message
    assert got == []


@pytest.mark.parametrize("body", [
    '{"fault": "overfeed", "magnitude": NaN}',
    '{"fault": "overfeed", "duration_h": Infinity}',
    '{"fault": "overfeed", "duration_h": -1e999}',
], ids=["magnitude NaN", "duration Infinity", "duration -1e999"])
def test_faults_with_nan_or_infinite_numbers_are_422(dash, body):
    with dash.client("operator") as c:
        r = c.post("/api/reactors/r1/faults", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "finite" in r.json()["message"], r.text


def test_a_whole_body_refusal_and_a_bool_fault_number_read_as_plain_lines(dash):
    with dash.client("operator") as c:
        r = c.post("/api/reactors/r1/control", json={"type": "setpoint", "name": "do_setpoint_pct", "value": 150})
        f = c.post("/api/reactors/r1/faults", json={"fault": "overfeed", "magnitude": True})
    # the range check is on the whole body: no empty field name before it, no "Value error, " from pydantic
    assert r.status_code == 422 and r.json()["message"] == "do_setpoint_pct must be within 1..100, got 150", r.text
    assert f.status_code == 422 and f.json()["message"] == "magnitude: must be a valid number, not true", f.text


def test_every_setpoint_range_is_finite_and_in_the_api_description(dash):
    with dash.client("viewer") as c:
        schema = c.get("/openapi.json").json()["components"]["schemas"]["ControlCommand"]
    for name, (lo, hi) in SETPOINT_LIMITS.items():
        assert float("-inf") < lo <= hi < float("inf")
        assert f"{name} {lo:g}..{hi:g}" in schema["properties"]["value"]["description"]


def test_a_live_reactor_takes_a_setpoint_an_unknown_one_is_404(dash, nats_server):
    with published_controls(nats_server.url) as got, dash.client("operator") as c:
        ok = c.post("/api/reactors/r1/control", json={"type": "setpoint", "name": "do_setpoint_pct", "value": 55})
        assert ok.status_code == 202, ok.text
        for path, body in (("control", {"type": "setpoint", "name": "do_setpoint_pct", "value": 55}),
                           ("control", {"type": "feed", "volume_ml": 10}), ("faults", {"fault": "overfeed"})):
            r = c.post(f"/api/reactors/r99/{path}", json=body)
            assert r.status_code == 404 and "no live reactor 'r99'" in r.json()["detail"], r.text
    assert [s for s, _ in got] == ["biopilot.control.r1"]


def test_the_readmes_published_fault_json_is_also_a_valid_http_body(dash, nats_server):
    readme_form = {"type": "fault", "fault": "overfeed", "duration_h": 3, "magnitude": 2}
    with published_controls(nats_server.url) as got, dash.client("operator") as c:
        r = c.post("/api/reactors/r1/faults", json=readme_form)
        wrong = c.post("/api/reactors/r1/faults", json=readme_form | {"type": "setpoint"})
    assert r.status_code == 202, r.text
    assert wrong.status_code == 422 and "type" in wrong.json()["message"], wrong.text
    assert [{k: v for k, v in json.loads(data).items() if v is not None} for _, data in got] == [readme_form]


def test_stop_on_an_unknown_reactor_is_404_and_publishes_nothing(dash, nats_server):
    with published_controls(nats_server.url) as got, dash.client("admin") as c:
        r = c.post("/api/reactors/ghost/control", json={"type": "stop"})
    assert r.status_code == 404 and "ghost" in r.json()["detail"], r.text
    assert got == []


def test_stop_as_operator_is_403_and_the_api_says_stop_needs_admin(dash, nats_server):
    with published_controls(nats_server.url) as got, dash.client("operator") as c:
        r = c.post("/api/reactors/r1/control", json={"type": "stop"})
        assert r.status_code == 403, r.text
        assert "whole plant" in r.json()["detail"] and "admin" in r.json()["detail"]
        description = c.get("/openapi.json").json()["paths"]["/api/reactors/{reactor_id}/control"]["post"]
        assert "admin role" in description["description"] and "403" in description["responses"]
    assert got == []


# ---- the plant on the broker ------------------------------------------------------------------------------
@contextmanager
def running_plant(nats_url: str, reactors: int = 2) -> Iterator[PlantFeed]:
    """A real plant feed (one-day batches at 600x) in its own thread and event loop."""
    feed = PlantFeed(nats_url, load_scenario("normal").with_overrides(days=1.0), reactors=reactors, speed=600.0)
    loop = asyncio.new_event_loop()
    result: dict = {}

    def run() -> None:
        try:
            result["stats"] = loop.run_until_complete(feed.run())
        except BaseException as err:  # noqa: BLE001 - the test reports it
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_for(lambda: feed.stats.ticks > 0 or result, 30) and not result, result
    feed.result = result  # type: ignore[attr-defined]
    feed.thread = thread  # type: ignore[attr-defined]
    try:
        yield feed
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(feed.interrupt)
            thread.join(30)


async def _publish(nats_url: str, messages: list[tuple[str, bytes]]) -> None:
    nc = await nats.connect(nats_url)
    for subject, body in messages:
        await nc.publish(subject, body)
    await nc.flush()
    await nc.close()


def test_the_plant_drops_malformed_commands_from_the_broker_and_runs_on(nats_server):
    bad = [b"not json", b"[1, 2]", b'{"type": "warp"}',
           f'{{"type": "setpoint", "name": "do_setpoint_pct", "value": {HUGE_INT}}}'.encode(),
           b'{"type": "setpoint", "name": "do_setpoint_pct", "value": NaN}',
           b'{"type": "setpoint", "name": "do_setpoint_pct", "value": 1e999}',
           b'{"type": "setpoint", "name": "ph_setpoint", "value": 12}',
           b'{"type": "feed", "volume_ml": 5, "evil": true}',
           f'{{"type": "fault", "fault": "overfeed", "magnitude": {HUGE_INT}}}'.encode(),
           b"{" * 100_000]  # nesting deep enough to break a recursive parser
    with running_plant(nats_server.url) as feed:
        asyncio.run(_publish(nats_server.url, [("biopilot.control.r1", body) for body in bad]
                             + [("biopilot.control.ghost", b'{"type": "stop"}'),
                                ("biopilot.control.r2", b'{"type": "pause"}')]))  # a replay's: ignored
        assert wait_for(lambda: feed.stats.rejected_commands == len(bad) + 1), list(feed.stats.rejections)
        ticks_then = feed.stats.ticks
        asyncio.run(_publish(nats_server.url, [("biopilot.control.r1", json.dumps(
            {"type": "setpoint", "name": "do_setpoint_pct", "value": 55}).encode())]))
        assert wait_for(lambda: feed.stats.commands == 1 and feed.stats.ticks > ticks_then + 20)
        assert feed.thread.is_alive() and not feed.stopping.is_set() and not feed.result
    assert feed.stats.rejected_commands == len(bad) + 1
    assert any("ghost: unknown reactor" in r for r in feed.stats.rejections)


def test_a_stop_for_an_unknown_reactor_through_the_api_leaves_the_plant_running(nats_server, start_dashboard):
    with start_dashboard() as d, \
            running_plant(nats_server.url) as feed, d.client("admin") as c:
        assert wait_for(lambda: "r1" in c.get("/api/reactors").json())  # the relay saw the plant's ticks
        assert c.post("/api/reactors/ghost/control", json={"type": "stop"}).status_code == 404
        ticks_then = feed.stats.ticks
        assert wait_for(lambda: feed.stats.ticks > ticks_then + 20)
        assert feed.thread.is_alive() and not feed.stopping.is_set()
        # an admin's stop to a live reactor does stop the plant
        assert c.post("/api/reactors/r1/control", json={"type": "stop"}).status_code == 202
        feed.thread.join(30)
        assert not feed.thread.is_alive() and "stats" in feed.result, feed.result


# ---- replays the dashboard keeps ----------------------------------------------------------------------------
def _small_replay() -> Replay:
    fleet = Fleet(load_scenario("normal").with_overrides(days=0.1), 1, seed=0)
    return Replay("nats://127.0.0.1:1", pa.Table.from_batches([fleet.step(20).ticks]), as_reactor="replay1")


def test_a_finished_replay_keeps_its_figures_and_lets_go_of_its_tables():
    replay = _small_replay()
    replay.published = 20
    entry = ReplayEntry(replay, "run-a", "run-a-replay-1", replay.reactor, None, replay.ticks.num_rows)
    tables = weakref.ref(replay.ticks)
    del replay
    entry.finish("done")
    gc.collect()
    assert tables() is None
    status = entry.status("replay1")
    assert (status.state, status.published, status.total) == ("done", 20, 20)


def test_only_the_latest_finished_replays_are_kept_and_ids_keep_growing():
    replays = {f"replay{n}": ReplayEntry(None, "run", f"run-{n}", f"replay{n}", None, 10, "done")
               for n in range(1, MAX_FINISHED_REPLAYS + 11)}
    running = _small_replay()
    replays["replay3"] = ReplayEntry(running, "run", "run-3", "replay3", None, 20)  # still running
    forget_finished(replays)
    finished = [k for k, e in replays.items() if e.replay is None]
    assert len(finished) == MAX_FINISHED_REPLAYS and finished[-1] == f"replay{MAX_FINISHED_REPLAYS + 10}"
    assert "replay3" in replays and "replay1" not in replays
    assert next_replay_number(replays) == MAX_FINISHED_REPLAYS + 11
