"""Producers wait for a flow that falls behind, on a real broker, and never for one that is not reading."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from sources.backpressure import Backpressure
from sources.publish import publish_ticks
from sources.replay import Replay
from tests.stream_helpers import make_ticks

TICKS = make_ticks(reactors=1, ticks=4000)  # 40 messages of 100 ticks, ~17 kB each
MESSAGE_ROWS = 100


async def _flow_consumer(js: JetStreamContext, durable: str = "flow") -> None:
    await js.add_consumer("TELEMETRY", ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.NONE))


async def _read_some(sub: JetStreamContext.PullSubscription) -> int:
    """A slow flow: at most 5 messages a call, 50 ms apart."""
    await asyncio.sleep(0.05)
    try:
        return len(await sub.fetch(5, timeout=0.5))
    except nats.errors.TimeoutError:  # nothing there yet (or any more)
        return 0


async def _publish_all(js: JetStreamContext, gate: Backpressure) -> None:
    await publish_ticks(js, "R1", TICKS, max_rows=MESSAGE_ROWS, backpressure=gate)


def test_a_producer_waits_while_the_flow_is_behind_and_goes_on_as_it_reads(nats_server):
    async def run() -> tuple[int, list[int], Backpressure]:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await _flow_consumer(js)
        gate = Backpressure(js, "flow", max_bytes=50_000, check_every_s=0.0, poll_s=0.01)
        producer = asyncio.create_task(_publish_all(js, gate))
        sub = await js.pull_subscribe_bind("flow", "TELEMETRY")
        read, pending_seen = 0, []
        while not producer.done() or (read < 40 and not producer.exception()):
            pending_seen.append((await js.consumer_info("TELEMETRY", "flow")).num_pending)
            read += await _read_some(sub)
        await producer
        await nc.close()
        return read, pending_seen, gate

    read, pending_seen, gate = asyncio.run(run())
    assert read == 40
    assert gate.holds >= 3 and gate.held_s > 0.1
    # 50 kB is ~3 messages; the gate asks after each one, the reader samples between its fetches: room for both
    assert max(pending_seen) <= 7, pending_seen


def test_a_producer_does_not_wait_for_a_flow_that_has_stopped_reading(nats_server, caplog):
    async def run() -> Backpressure:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await _flow_consumer(js)  # never read
        gate = Backpressure(js, "flow", max_bytes=50_000, check_every_s=0.0, stall_s=0.5, poll_s=0.01)
        await asyncio.wait_for(_publish_all(js, gate), 10)
        await nc.close()
        return gate

    with caplog.at_level(logging.WARNING, logger="sources.backpressure"):
        gate = asyncio.run(run())
    assert gate.holds == 1 and 0.5 <= gate.held_s < 2.0  # held once for the stall time, then never again
    assert "consumer 'flow' has read nothing for 0.5 s" in caplog.text


def test_a_producer_does_not_wait_when_no_flow_has_a_consumer(nats_server):
    async def run() -> Backpressure:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        gate = Backpressure(js, "flow", max_bytes=1, check_every_s=0.0)
        await asyncio.wait_for(_publish_all(js, gate), 10)
        await nc.close()
        return gate

    assert asyncio.run(run()).holds == 0


def test_a_replay_at_max_waits_for_the_flow(nats_server):
    async def run() -> tuple[int, int, Replay]:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await _flow_consumer(js)
        replay = Replay(nats_server.url, TICKS, speed=None, batch_ticks=MESSAGE_ROWS, flow_durable="flow",
                        max_behind_bytes=50_000)
        sub = await js.pull_subscribe_bind("flow", "TELEMETRY")
        task = asyncio.create_task(replay.run())
        read, most_pending = 0, 0
        while not task.done():
            most_pending = max(most_pending, (await js.consumer_info("TELEMETRY", "flow")).num_pending)
            read += await _read_some(sub)
        await task
        await nc.close()
        return read, most_pending, replay

    read, most_pending, replay = asyncio.run(run())
    assert replay.published == TICKS.num_rows and read >= 30
    assert replay.backpressure.holds >= 3
    # every message (~17 kB) is over an eighth of 50 kB, so the gate asks after each one
    assert most_pending <= 7


def test_a_broker_that_cannot_answer_does_not_stop_the_producer(nats_server):
    async def run() -> Backpressure:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await _flow_consumer(js)
        await nc.close()  # every question now fails, as while the broker restarts
        gate = Backpressure(js, "flow", max_bytes=1, check_every_s=0.0)
        await gate.published(10_000)
        return gate

    assert asyncio.run(run()).holds == 0


def test_a_stopping_producer_is_released_at_once(nats_server):
    async def run() -> tuple[float, Backpressure]:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await _flow_consumer(js)  # never read, and never given up on below
        gate = Backpressure(js, "flow", max_bytes=50_000, check_every_s=0.0, stall_s=60.0, poll_s=0.01)
        producer = asyncio.create_task(_publish_all(js, gate))
        await asyncio.sleep(0.5)
        assert not producer.done()  # held
        released_at = asyncio.get_running_loop().time()
        gate.release()
        await asyncio.wait_for(producer, 5)
        waited = asyncio.get_running_loop().time() - released_at
        await nc.close()
        return waited, gate

    waited, gate = asyncio.run(run())
    assert gate.holds == 1 and waited < 1.0
