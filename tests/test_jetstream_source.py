"""The flow's JetStream source pulls continuously: every message once, in stream order, as it arrives, with a
bounded number buffered, and pull requests renewed as they expire (real nats-server)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, StreamConfig

from core.aio import BackgroundLoop
from core.services import ManagedServer, restart
from sources.jetstream import (
    EPOCH_MARK,
    ContinuousPull,
    JetStreamSource,
    Message,
    stream_partitions,
    unit_partition,
)


def _pull(server: ManagedServer, window: int, expires_s: float, published: int) -> tuple[BackgroundLoop, object,
                                                                                           ContinuousPull]:
    io = BackgroundLoop()

    async def setup() -> tuple[object, ContinuousPull]:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_consumer("TELEMETRY", ConsumerConfig(durable_name="test", ack_policy=AckPolicy.EXPLICIT,
                                                          filter_subjects=["biopilot.telemetry.>"]))
        for k in range(published):
            await js.publish("biopilot.telemetry.r1", str(k).encode())
        pull = ContinuousPull(io, nc, "$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.test", window, expires_s)
        await pull.start()
        return nc, pull

    nc, pull = io.run(setup(), timeout=10)
    return io, nc, pull


def _close(io: BackgroundLoop, nc: object, pull: ContinuousPull) -> None:
    io.run(pull.stop(), timeout=5)
    io.run(nc.close(), timeout=5)  # type: ignore[attr-defined]
    io.close()


def test_an_empty_partition_does_not_wait_while_another_partition_of_the_process_has_messages(
        nats_server: ManagedServer) -> None:
    # the dataflow thread asks each partition in turn: one waiting out its own timeout while another's messages
    # were buffered held the flow up, and with eight partitions it fell behind a live stream
    io_busy, nc_busy, busy = _pull(nats_server, window=8, expires_s=5.0, published=4)
    arrivals = busy.arrivals
    io_idle = BackgroundLoop()

    async def idle_pull() -> tuple[object, ContinuousPull]:
        nc = await nats.connect(nats_server.url)
        pull = ContinuousPull(io_idle, nc, "$JS.API.CONSUMER.MSG.NEXT.TELEMETRY.none", 8, 5.0, arrivals=arrivals)
        return nc, pull

    nc_idle, idle = io_idle.run(idle_pull(), timeout=10)
    try:
        deadline = time.monotonic() + 5
        while len(busy.buffer) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        assert idle.take(8, wait_s=3.0) == []
        assert time.monotonic() - started < 1.0, "the empty partition waited although another had messages"
        assert len(busy.take(8, wait_s=3.0)) == 4
        started = time.monotonic()
        assert idle.take(8, wait_s=0.3) == []  # none buffered anywhere: it waits
        assert time.monotonic() - started >= 0.25
        io_busy.run(nc_busy.jetstream().publish("biopilot.telemetry.r1", b"late"), timeout=5)
        started = time.monotonic()
        assert idle.take(8, wait_s=3.0) == []  # a message on the other partition ends the wait
        assert time.monotonic() - started < 2.0
        assert [m.data for m in busy.take(8, wait_s=0.0)] == [b"late"]
    finally:
        _close(io_busy, nc_busy, busy)
        io_idle.run(nc_idle.close(), timeout=5)
        io_idle.close()


def test_continuous_pull_hands_over_every_message_once_in_order_with_a_bounded_buffer(
        nats_server: ManagedServer) -> None:
    io, nc, pull = _pull(nats_server, window=8, expires_s=5.0, published=40)
    try:
        deadline = time.monotonic() + 5
        while len(pull.buffer) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # more would have come by now if the window let them
        assert len(pull.buffer) == 8
        got = []
        while len(got) < 40 and time.monotonic() < deadline:
            got += [m.data.decode() for m in pull.take(3, wait_s=0.5)]
            assert len(pull.buffer) <= 8
        assert got == [str(k) for k in range(40)]
        assert pull.take(3, wait_s=0.2) == []
    finally:
        _close(io, nc, pull)


def test_continuous_pull_renews_its_requests_as_they_expire(nats_server: ManagedServer) -> None:
    io, nc, pull = _pull(nats_server, window=4, expires_s=0.2, published=0)
    try:
        time.sleep(1.0)  # several requests expire unused meanwhile
        assert 0 < pull.pending <= 4 and pull.pending == sum(r[1] for r in pull.requests)
        # renewed when the server ended the last one (every 0.2 s), not written off 1.2 s after it was made
        made_s_ago = 0.2 + 1.0 - (pull.requests[0][0] - time.monotonic())
        assert made_s_ago < 0.6

        async def publish() -> None:
            await nc.jetstream().publish("biopilot.telemetry.r1", b"late")  # type: ignore[attr-defined]

        io.run(publish(), timeout=5)
        assert [m.data for m in pull.take(4, wait_s=2.0)] == [b"late"]
    finally:
        _close(io, nc, pull)


def test_after_a_broker_crash_the_source_asks_again_at_once(nats_server: ManagedServer) -> None:
    source = JetStreamSource(nats_server.url, durable="restart-test", subjects=["biopilot.telemetry.>"])
    part = source.build_part("nats", "restart-test", None)
    server = None
    try:
        nats_server.proc.kill()  # no goodbye: the pull requests it held are gone without a word
        nats_server.proc.wait()
        server = restart(nats_server)

        async def publish() -> None:
            nc = await nats.connect(server.url)
            await nc.jetstream().publish("biopilot.telemetry.r1", b"after")
            await nc.close()

        asyncio.run(publish())
        start, got = time.monotonic(), []
        while not got and time.monotonic() - start < 10:
            got = [m for m in part.next_batch() if m is not EPOCH_MARK]
        # the lost requests would be written off only 6 s after they were made, had the source not noticed
        assert [m.data for m in got] == [b"after"]
        assert time.monotonic() - start < 4
    finally:
        part.close()
        if server is not None:  # the fixture stops only the server it started
            server.stop()


def test_messages_the_broker_discarded_unread_are_skipped_and_logged(nats_server: ManagedServer,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async def setup() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="SMALL", subjects=["small.>"], max_msgs=5,
                                         discard=DiscardPolicy.OLD))
        for k in range(10):  # the first 5 are dropped to keep 5
            await js.publish("small.r1", str(k).encode())
        await nc.close()

    asyncio.run(setup())
    part = JetStreamSource(nats_server.url, stream="SMALL", durable="small", subjects=["small.>"]).build_part(
        "nats", "small", 2)  # resumed after 2: 3-5 are gone unread
    try:
        deadline = time.monotonic() + 5
        part.snapshot()  # asks for the stream's first sequence
        while part.stream_first_seq == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = []
        with caplog.at_level(logging.ERROR, logger="sources.jetstream"):
            while len(got) < 5 and time.monotonic() < deadline:
                got += [m.stream_seq for m in part.next_batch() if m is not EPOCH_MARK]
        assert got == [6, 7, 8, 9, 10]
        assert part.snapshot() == 10  # resumes after what is there, not before what is gone
        assert part.discarded == 3
        assert "discarded up to 3 message(s) of stream SMALL" in caplog.text
    finally:
        part.close()


def test_a_partition_resumes_after_the_last_message_it_handed_over_though_its_sequences_are_sparse(
        nats_server: ManagedServer) -> None:
    async def publish(units: list[str]) -> None:
        nc = await nats.connect(nats_server.url)
        for unit in units:
            await nc.jetstream().publish(f"biopilot.telemetry.{unit}", unit.encode())
        await nc.close()

    partitions = stream_partitions(nats_server.url)
    units = [f"r{k}" for k in range(12)]
    mine = [u for u in units if unit_partition(u, partitions) == unit_partition("r0", partitions)]
    asyncio.run(publish(units))
    source = JetStreamSource(nats_server.url, durable="sparse")
    name = f"sparse-{unit_partition('r0', partitions)}"
    assert name in source.list_parts()

    def take(part: object, n: int) -> list[Message]:
        got, deadline = [], time.monotonic() + 5
        while len(got) < n and time.monotonic() < deadline:
            got += [m for m in part.next_batch() if m is not EPOCH_MARK]  # type: ignore[attr-defined]
        return got

    part = source.build_part("nats", name, None)
    try:
        first = take(part, len(mine))
        assert [m.data.decode() for m in first] == mine  # its units only, in order, on the published subject
        assert {m.subject for m in first} == {f"biopilot.telemetry.{u}" for u in mine}
        resume = part.snapshot()
        assert resume == first[-1].stream_seq
    finally:
        part.close()
    asyncio.run(publish(units))  # more of every unit: the partition's next ones are far apart in the stream
    part = source.build_part("nats", name, resume)
    try:
        assert [m.data.decode() for m in take(part, len(mine))] == mine  # nothing again, nothing skipped
    finally:
        part.close()


def test_a_processs_partitions_share_one_connection_thread_that_ends_with_the_last(
        nats_server: ManagedServer) -> None:
    def nats_threads() -> int:
        return sum(t.name == "biopilot-nats" and t.is_alive() for t in threading.enumerate())

    before = nats_threads()
    source = JetStreamSource(nats_server.url, durable="shared")
    parts = [source.build_part("nats", name, None) for name in source.list_parts()]
    try:
        assert len(parts) > 2
        assert nats_threads() == before + 1
        assert len({id(p.nc) for p in parts}) == len(parts)  # a connection each: requests not queued behind
    finally:
        for part in parts[:-1]:
            part.close()
    assert nats_threads() == before + 1  # the last partition's connection still lives on it
    parts[-1].close()
    assert nats_threads() == before
