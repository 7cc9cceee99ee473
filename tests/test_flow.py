"""The monitoring flow end to end: real nats-server, real flow process, real Delta tables."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.codec import encode_arrow
from core.services import restart
from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from sinks import delta
from tests.stream_helpers import by_reactor, make_ticks, publish, publish_raw, wait_rows


@pytest.fixture
def lake(tmp_path):
    return tmp_path / "lake"


def _keys(lake, table="ticks"):
    t = delta.read(lake, table, columns=["run_id", "seq"])
    return list(zip(t["run_id"].to_pylist(), t["seq"].to_pylist(), strict=True))


def test_every_published_tick_lands_exactly_once_with_its_scores(nats_server, lake, run_flow):
    ticks = make_ticks(reactors=2, ticks=1500)
    flow = run_flow(nats_server.url, lake)
    try:
        publish(nats_server.url, ticks)
        assert wait_rows(lake, "ticks", ticks.num_rows, flow) == ticks.num_rows
        assert len(set(_keys(lake))) == ticks.num_rows
        assert wait_rows(lake, "scores", ticks.num_rows, flow) == ticks.num_rows
    finally:
        flow.stop()


def _expected_scores(ticks: pa.Table, lateness_s: float) -> dict[tuple[str, int], float]:
    expected = {}
    for reactor, rows in by_reactor(ticks).items():
        mon = ReactorMonitor(reactor, MonitorConfig.for_detector("fusion", lateness_s))
        out = mon.on_ticks(rows)
        scores = [out.tables["scores"]] if "scores" in out.tables else []
        scores += [mon.on_watermark(2**62).tables["scores"]]
        for t in scores:
            expected.update(zip(zip(t["run_id"].to_pylist(), t["seq"].to_pylist(), strict=True),
                                t["score"].to_pylist(), strict=True))
    return expected


def test_out_of_order_within_lateness_is_scored_in_event_time_order(nats_server, lake, run_flow):
    from sources.plant import jitter

    ticks = make_ticks(reactors=1, ticks=1200, seed=3)
    shuffled = jitter(ticks, 0.3, 5, np.random.default_rng(0))
    assert shuffled["seq"].to_pylist() != ticks["seq"].to_pylist()
    flow = run_flow(nats_server.url, lake, lateness_s=600)
    try:
        publish(nats_server.url, shuffled, chunk=40)
        wait_rows(lake, "scores", ticks.num_rows, flow)
        scores = delta.read(lake, "scores")
        got = dict(zip(zip(scores["run_id"].to_pylist(), scores["seq"].to_pylist(), strict=True),
                       scores["score"].to_pylist(), strict=True))
        assert got == pytest.approx(_expected_scores(ticks, 600))
        assert delta.read(lake, "late_ticks") is None
    finally:
        flow.stop()


def test_ticks_beyond_the_lateness_go_to_late_ticks_not_lost(nats_server, lake, run_flow):
    ticks = make_ticks(reactors=1, ticks=600, seed=4)
    on_time = ticks.filter(pc.invert(pc.is_in(ticks["seq"], pa.array([100, 101, 102], pa.int64()))))
    stragglers = ticks.filter(pc.is_in(ticks["seq"], pa.array([100, 101, 102], pa.int64())))
    flow = run_flow(nats_server.url, lake, lateness_s=300)
    try:
        publish(nats_server.url, on_time.slice(0, 400), watermark=False)
        publish(nats_server.url, stragglers, watermark=False)  # 5 hours behind: far beyond 300 s
        publish(nats_server.url, on_time.slice(400))
        assert wait_rows(lake, "late_ticks", 3, flow) == 3
        assert wait_rows(lake, "ticks", on_time.num_rows, flow) == on_time.num_rows
        late = delta.read(lake, "late_ticks")
        assert sorted(late["seq"].to_pylist()) == [100, 101, 102]
        assert all(w > t for w, t in zip(late["watermark_ts"].to_pylist(), late["ts"].to_pylist(), strict=True))
    finally:
        flow.stop()


def _malformed(ticks: pa.Table) -> list[tuple[str, bytes, dict | None]]:
    row = ticks.slice(0, 1).to_pylist()[0]
    row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
    bad: list[tuple[str, bytes, dict | None]] = []
    rng = np.random.default_rng(0)
    subject = f"biopilot.telemetry.{row['reactor_id']}"
    for i in range(1000):
        kind = i % 5
        if kind == 0:
            data = rng.bytes(64)  # garbage
        elif kind == 1:
            data = encode_arrow(pa.table({"colour": ["blue"], "size": [3]}))  # wrong schema
        elif kind == 2:
            data = json.dumps({**row, "ts": float("nan")}).encode()  # NaN timestamp
        elif kind == 3:
            data = json.dumps({k: v for k, v in row.items() if k != "ts"}).encode()  # missing timestamp
        else:
            data = b"[" + b"9" * 200 + b"]"  # valid JSON, wrong shape
        bad.append((subject, data, None))
    bad[500] = (subject, b"\x00" * (10 * 1024 * 1024), None)  # a 10 MB payload
    return bad


def test_malformed_payloads_are_dead_lettered_and_good_ticks_still_land(nats_server, lake, run_flow):
    import asyncio

    import nats as nats_client

    ticks = make_ticks(reactors=1, ticks=800, seed=5)
    flow = run_flow(nats_server.url, lake)
    try:
        publish(nats_server.url, ticks.slice(0, 400), watermark=False)
        publish_raw(nats_server.url, _malformed(ticks))
        publish(nats_server.url, ticks.slice(400))
        assert wait_rows(lake, "ticks", ticks.num_rows, flow) == ticks.num_rows
        assert wait_rows(lake, "deadletter", 1000, flow, timeout_s=90) == 1000
        dead = delta.read(lake, "deadletter", columns=["reason", "size_bytes"])
        reasons = " ".join(dead["reason"].to_pylist())
        for needle in ("not Arrow IPC and not JSON", "missing required", "field ts: cannot convert float NaN", "exceeds"):
            assert needle in reasons, needle
        assert flow.alive()

        async def stream_count() -> int:
            nc = await nats_client.connect(nats_server.url)
            info = await nc.jetstream().stream_info("DEADLETTER")
            await nc.close()
            return info.state.messages

        deadline = time.monotonic() + 30
        while asyncio.run(stream_count()) < 1000 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert asyncio.run(stream_count()) == 1000
    finally:
        flow.stop()


def test_nats_server_restart_mid_stream_loses_nothing(nats_server, lake, run_flow):
    ticks = make_ticks(reactors=2, ticks=900, seed=6)
    flow = run_flow(nats_server.url, lake)
    try:
        first = pc.less(ticks["seq"], 450)
        publish(nats_server.url, ticks.filter(first), watermark=False)
        nats_server.stop()
        time.sleep(1.0)
        server = restart(nats_server)
        try:
            publish(server.url, ticks.filter(pc.invert(first)))
            assert wait_rows(lake, "ticks", ticks.num_rows, flow, timeout_s=90) == ticks.num_rows
            assert len(set(_keys(lake))) == ticks.num_rows
        finally:
            server.stop()
    finally:
        flow.stop()


def test_kill_9_mid_stream_then_restart_gives_every_tick_exactly_once(nats_server, lake, run_flow):
    ticks = make_ticks(reactors=2, ticks=4000, seed=7)
    flow = run_flow(nats_server.url, lake)
    publisher = threading.Thread(target=publish, args=(nats_server.url, ticks), kwargs={"chunk": 50, "pace_s": 0.1})  # 16 s: past the flow's first commit
    publisher.start()
    deadline = time.monotonic() + 60
    while delta.read(lake, "ticks", columns=["seq"]) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    flow.kill9()  # mid-stream: some ticks written, more coming
    written_before = delta.read(lake, "ticks", columns=["seq"]).num_rows
    assert 0 < written_before < ticks.num_rows
    publisher.join()
    flow = run_flow(nats_server.url, lake)
    try:
        assert wait_rows(lake, "ticks", ticks.num_rows, flow, timeout_s=90) == ticks.num_rows
        keys = _keys(lake)
        assert len(keys) == len(set(keys)) == ticks.num_rows
        assert wait_rows(lake, "scores", ticks.num_rows, flow, timeout_s=30) == ticks.num_rows
        scored = _keys(lake, "scores")
        assert len(scored) == len(set(scored)) == ticks.num_rows
    finally:
        flow.stop()


def _scores_and_alerts(lake):
    scores = delta.read(lake, "scores").sort_by([("run_id", "ascending"), ("seq", "ascending")])
    alerts = delta.read(lake, "alerts")
    alert_rows = [] if alerts is None else sorted(
        ({k: v for k, v in a.items() if k != "emitted_at"} for a in alerts.to_pylist()), key=lambda a: a["alert_id"])
    return scores.select(["run_id", "seq", "score", "is_alarm"]).to_pylist(), alert_rows


def test_replay_at_scaled_speed_and_at_max_gives_identical_scores_and_alerts(run_flow, tmp_path):
    import asyncio

    from biopilot.simulate import simulate_to_lake
    from sources.replay import Replay
    from sources.scenarios import load_scenario

    store = tmp_path / "store"
    run_id = simulate_to_lake(load_scenario("contamination"), 1, 2, store).run_ids[0]
    ticks = delta.read(store, "ticks", run_ids=[run_id])
    assays = delta.read(store, "assays", run_ids=[run_id])
    results = []
    for name, speed in (("scaled", 250_000.0), ("max", None)):
        lake = tmp_path / name
        from core.services import ensure_streams, start_nats

        server = start_nats(tmp_path / f"nats-{name}")
        asyncio.run(ensure_streams(server.url))
        flow = run_flow(server.url, lake, name=f"flow-{name}")
        try:
            replay = Replay(server.url, ticks, assays, speed=speed, batch_ticks=700 if speed else 3000)
            started = time.monotonic()
            assert asyncio.run(replay.run()) == ticks.num_rows
            elapsed = time.monotonic() - started
            wait_rows(lake, "scores", ticks.num_rows, flow)
            results.append(_scores_and_alerts(lake))
            if speed:  # event-time spacing divided by the speed
                assert elapsed >= 0.9 * (ticks.num_rows - 1) * 60 / speed
        finally:
            flow.stop()
            server.stop()
    (scores_a, alerts_a), (scores_b, alerts_b) = results
    assert len(scores_a) == ticks.num_rows
    assert scores_a == scores_b
    assert alerts_a == alerts_b
    assert alerts_a, "the contaminated run raises at least one alert"


@pytest.mark.integration
def test_the_flow_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    # a fresh interpreter: the malloc settings are per process
    code = """
import resource
import numpy as np
from flows.monitor import keep_freed_memory

def page_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        np.ones(8 << 20)  # 64 MB, freed at once: past glibc's own limit for keeping blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = page_faults()
assert keep_freed_memory()
page_faults()  # the heap grows once
print(plain, page_faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    plain, kept = map(int, out.stdout.split())
    assert plain > 500 and kept < 50, (plain, kept)
