"""A Bytewax source over NATS JetStream: batched pulls from a durable consumer, resumable after a crash.

The partition's snapshot is the last stream sequence it handed to the flow; Bytewax stores it with the
epoch, and a resumed partition re-creates its consumer to start right after it. Without a recovery store the
durable consumer's own ack floor is the resume point (messages are acked when an epoch closes), so a
restarted flow still continues where the last one stopped. A broker outage is waited out, never fatal.
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
        self.loop = asyncio.new_event_loop()
        self.url, self.stream, self.durable, self.subjects = url, stream, durable, subjects
        self.batch, self.wait_s = batch, wait_s
        self.last_seq = resume_seq or 0
        self.unacked = None
        self.ack_next = None
        self.nc = None
        self.sub = None
        self.loop.run_until_complete(self._connect(resume_seq))

    async def _connect(self, resume_seq: int | None) -> None:
        self.nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                     connect_timeout=5)
        js = self.nc.jetstream()
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.ALL, max_ack_pending=-1,
                                filter_subjects=self.subjects, ack_wait=3600)
        if resume_seq is not None:  # Bytewax recovery knows better than the consumer's ack floor
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(self.stream, self.durable)
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = resume_seq + 1
            await js.add_consumer(self.stream, config)
        else:
            try:
                await js.consumer_info(self.stream, self.durable)
            except NotFoundError:
                await js.add_consumer(self.stream, config)
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
        msgs = self.loop.run_until_complete(self._fetch())
        out = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            if seq <= self.last_seq:  # redelivered after a reconnect
                continue
            self.last_seq = seq
            out.append(Message(m.subject, m.data, dict(m.headers or {}), seq))
        if msgs:
            self.unacked = msgs[-1]
        return out

    def snapshot(self) -> int:
        # ack one epoch late: by the time epoch N+1 closes, the sinks have flushed what epoch N produced
        if self.ack_next is not None:  # AckPolicy.ALL: acking the last acks everything before it
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(self.ack_next.ack())
        self.ack_next, self.unacked = self.unacked, None
        return self.last_seq

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run_until_complete(self.nc.close())
        self.loop.close()


class JetStreamSource(FixedPartitionedSource[Message, int]):
    """One partition per consumer (`durable`), reading `subjects` of `stream` in batches of `batch` messages
    (a message is a batch of ticks: 32 x 10k-tick messages is ~40 MB in flight, which bounds memory)."""

    def __init__(self, url: str, stream: str = "TELEMETRY", durable: str = "biopilot-monitor",
                 subjects: list[str] | None = None, batch: int = 32, wait_s: float = 0.05) -> None:
        self.url, self.stream, self.durable = url, stream, durable
        self.subjects = subjects or ["biopilot.telemetry.>", "biopilot.assays.>"]
        self.batch, self.wait_s = batch, wait_s

    def list_parts(self) -> list[str]:
        return [self.durable]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self.url, self.stream, self.durable, self.subjects, self.batch, self.wait_s,
                          resume_state)
