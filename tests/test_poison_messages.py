"""Poison messages against the live flow: each is dead-lettered with its reason, the flow stays up, and what comes
after it is still scored (real nats-server, real flow process, real Delta tables)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import nats
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.events import TICKS
from sinks import delta
from sources.backpressure import flow_backlog
from sources.jetstream import Message
from sources.telemetry import KIND_HEADER, route
from tests.stream_helpers import make_ticks, publish, publish_raw, wait_rows


async def _acked_and_dead_lettered(url: str, timeout_s: float = 20.0) -> tuple[bool, int]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while True:
            acked = await flow_backlog(js) == (0, 0)  # every partition's consumer: nothing pending or unacked
            dead = (await js.stream_info("DEADLETTER")).state.messages
            if (acked and dead >= 4) or time.monotonic() > deadline:
                return acked, dead
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def _dated_year_9999(ticks: pa.Table) -> pa.Table:
    """The same run's rows, moved to the year 9999 (and past its seqs): a clock gone wrong, or a crafted batch."""
    start_us = int(datetime(9999, 12, 1, tzinfo=UTC).timestamp() * 1e6)
    ts = pa.array(start_us + 60_000_000 * np.arange(ticks.num_rows), pa.int64()).cast(TICKS.field("ts").type)
    rows = ticks.set_column(ticks.schema.get_field_index("ts"), "ts", ts)
    return rows.set_column(rows.schema.get_field_index("seq"), "seq", pc.add(rows["seq"], 1_000_000))


def test_poison_watermarks_and_a_far_future_batch_are_dead_lettered_and_later_ticks_still_scored(nats_server,
                                                                                                  tmp_path, run_flow):
    lake = tmp_path / "lake"
    ticks = make_ticks(reactors=1, ticks=600, seed=11)
    reactor = ticks["reactor_id"][0].as_py()
    subject = f"biopilot.telemetry.{reactor}"
    watermark = {KIND_HEADER: "watermark"}
    flow = run_flow(nats_server.url, lake)
    try:
        publish(nats_server.url, ticks.slice(0, 300), watermark=False)
        wait_rows(lake, "scores", 1, flow)  # the reactor is live
        publish_raw(nats_server.url, [(subject, b'{"ts": null}', watermark), (subject, b'{"ts": Infinity}', watermark),
                                      (subject, b'{"ts": "9999-12-31T00:00:00Z"}', watermark)])
        publish(nats_server.url, _dated_year_9999(ticks.slice(300, 20)), watermark=False)
        publish(nats_server.url, ticks.slice(300))  # with a closing watermark just past its last tick

        assert wait_rows(lake, "deadletter", 4, flow) == 4
        assert wait_rows(lake, "scores", ticks.num_rows, flow) == ticks.num_rows  # every real tick, after them too
        assert flow.alive()
        assert delta.read(lake, "late_ticks") is None  # the far-future watermark did not raise the floor
        reasons = sorted(delta.read(lake, "deadletter", columns=["reason"])["reason"].to_pylist())
        assert any("watermark ts None" in r for r in reasons), reasons
        assert any("watermark ts inf" in r for r in reasons), reasons
        assert any(r.startswith("watermark 9999-12-31T00:00:00") and "beyond the horizon" in r for r in reasons)
        assert any(r.startswith("20 tick(s) from 9999-12-01") and "beyond the horizon" in r for r in reasons)
        assert delta.read(lake, "ticks", columns=["ts"])["ts"].cast(pa.int64()).to_numpy().max() \
            == ticks["ts"].cast(pa.int64()).to_numpy().max()
        # each poison message acked (it does not come back after a restart) and published as a dead letter
        assert asyncio.run(_acked_and_dead_lettered(nats_server.url)) == (True, 4)
    finally:
        flow.stop()


@pytest.mark.parametrize("body", [b'{"ts": null}', b'{"ts": Infinity}', b'{"ts": -Infinity}', b'{"ts": NaN}',
                                  b'{"ts": 1e300}', b'{"ts": true}', b'{"ts": "yesterday"}', b'{"ts": [1]}',
                                  b'{"at": 1}', b"[1, 2]", b"\xff\xfe", b""])
def test_an_unreadable_watermark_is_dead_lettered_with_its_reason_not_raised(body):
    msg = Message("biopilot.telemetry.r1", body, {KIND_HEADER: "watermark"}, 7)
    items, dead = route(msg)
    assert items == []
    [row] = dead.to_pylist()
    assert row["stream_seq"] == 7 and row["payload"] == body and row["reason"]
