"""A Bytewax source over NATS JetStream: batched pulls from a durable consumer, resumable after a crash.

The partition's snapshot is the stream sequence below which everything was handed to the flow; Bytewax
stores it with the epoch, and a resumed partition re-creates its consumer to start right after it. Without a
recovery store the durable consumer's acks are the resume point (messages are acked one epoch after they were
handed over, when the sinks have committed them), so a restarted flow still continues where the last one
stopped; a message lost in transit is redelivered after `ack_wait`. A broker outage is waited out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import nats
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from biopilot.aio import BackgroundLoop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str]
    stream_seq: int


class _Partition(StatefulSourcePartition[Message, int]):
    def __init__(self, url: str, stream: str, durable: str, subjects: list[str], batch: int, wait_s: float,
                 resume_seq: int | None) -> None:
        self.io = BackgroundLoop()
        self.url, self.stream, self.durable, self.subjects = url, stream, durable, subjects
        self.batch, self.wait_s = batch, wait_s
        self.floor = resume_seq or 0  # every stream sequence <= floor has been handed to the flow
        self.above: set[int] = set()  # handed over, above the floor (a gap below them is still coming)
        self.unacked: list[str] = []  # reply subjects: no payloads kept alive
        self.ack_next: list[str] = []
        self.nc = None
        self.sub = None
        self.io.run(self._connect(resume_seq))
        # the next pull is always in flight while the flow works on the last one's messages: waiting for each
        # round trip (8 x 1 MB at full rate) had the dataflow thread idle a fifth of the time
        self.prefetch = self.io.submit(self._fetch())

    async def _connect(self, resume_seq: int | None) -> None:
        self.nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                     connect_timeout=5, pending_size=256 * 1024 * 1024)
        js = self.nc.jetstream()
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1,
                                filter_subjects=self.subjects, ack_wait=60)
        if resume_seq is not None:  # Bytewax recovery knows better than the consumer's ack state
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(self.stream, self.durable)
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = resume_seq + 1
            await js.add_consumer(self.stream, config)
        else:
            try:
                info = await js.consumer_info(self.stream, self.durable)
            except NotFoundError:
                await js.add_consumer(self.stream, config)
            else:
                # a restart without recovery state: continue right after what was acknowledged, in stream
                # order, now (messages delivered but never acked would otherwise wait out `ack_wait`)
                start = info.ack_floor.stream_seq + 1
                await js.delete_consumer(self.stream, self.durable)
                config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
                config.opt_start_seq = start
                await js.add_consumer(self.stream, config)
                self.floor = start - 1
        self.sub = await js.pull_subscribe_bind(self.durable, self.stream)

    async def _fetch(self) -> list:
        try:
            return await self.sub.fetch(self.batch, timeout=self.wait_s)
        except (TimeoutError, NatsTimeout):
            return []
        except (ConnectionClosedError, NoServersError, OSError) as err:  # broker away: try again later
            log.warning("NATS fetch failed (%s); retrying", err)
            await asyncio.sleep(0.2)
            return []
        except Exception as err:  # a flow must outlive its broker's hiccups
            log.warning("NATS fetch error (%s: %s); retrying", err.__class__.__name__, err)
            await asyncio.sleep(0.2)
            return []

    def next_batch(self) -> list[Message]:
        msgs = self.prefetch.result()
        self.prefetch = self.io.submit(self._fetch())
        out = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            self.unacked.append(m.reply)
            if seq <= self.floor or seq in self.above:  # a redelivery of something already handed over
                continue
            self.above.add(seq)
            out.append(Message(m.subject, m.data, dict(m.headers or {}), seq))
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)
        return out

    async def _ack(self, replies: list[str]) -> None:
        for reply in replies:
            with contextlib.suppress(Exception):
                await self.nc.publish(reply, b"+ACK")
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=5)

    def snapshot(self) -> int:
        # ack one epoch late: by the time epoch N+1 closes, the sinks have flushed what epoch N produced. The
        # acks go out on the connection's thread: an epoch of 5 s at the live rate is ~1,000 of them
        if self.ack_next:
            self.io.submit(self._ack(self.ack_next))
        self.ack_next, self.unacked = self.unacked, []
        return self.floor

    def close(self) -> None:
        # a prefetched batch was never handed over nor acked: the consumer delivers it again after a restart
        self.prefetch.cancel()
        with contextlib.suppress(Exception):
            self.io.run(self.nc.close(), timeout=5)
        self.io.close()


class JetStreamSource(FixedPartitionedSource[Message, int]):
    """One partition per consumer (`durable`), reading `subjects` of `stream` in batches of up to `batch`
    messages. A message is itself a batch of ticks, so 8 is enough for throughput (8 x 10k ticks at full rate)
    while at live rates (~50-tick messages) an alert waits for at most 7 other messages of its fetch; 32 made
    that wait the bulk of the publish -> alert median."""

    def __init__(self, url: str, stream: str = "TELEMETRY", durable: str = "biopilot-monitor",
                 subjects: list[str] | None = None, batch: int = 8, wait_s: float = 0.01) -> None:
        self.url, self.stream, self.durable = url, stream, durable
        self.subjects = subjects or ["biopilot.telemetry.>", "biopilot.assays.>"]
        self.batch, self.wait_s = batch, wait_s

    def list_parts(self) -> list[str]:
        return [self.durable]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self.url, self.stream, self.durable, self.subjects, self.batch, self.wait_s,
                          resume_state)
