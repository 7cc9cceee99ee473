"""A Bytewax source over NATS JetStream: batched pulls from a durable consumer, resumable after a crash.

The partition's snapshot is the stream sequence below which everything was handed to the flow; Bytewax
stores it with the epoch, and a resumed partition re-creates its consumer to start right after it. Without a
recovery store the durable consumer's acks are the resume point (messages are acked one epoch after they were
handed over, when the sinks have committed them), so a restarted flow still continues where the last one
stopped; a message lost in transit is redelivered after `ack_wait`. A broker outage is waited out.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass

import nats
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from core.aio import BackgroundLoop
from core.services import FLOW_DURABLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str]
    stream_seq: int


class ContinuousPull:
    """Keeps a pull consumer's messages flowing into a local buffer, as the newer NATS clients' `consume` does
    (nats-py has only `fetch`). Pull requests ask for up to `window` messages in all, minus what is buffered,
    and each message is available the moment it arrives. A `fetch(8)` instead holds the messages it has until
    its batch is full or it expires: at live rates (one ~50-tick message at a time) up to its whole timeout.

    Runs on `io`'s loop; `take` is called from the dataflow thread. A request lives `expires_s`; the server ends
    it with a 408 status that says how many of its messages it did not send. A request that never gets its
    status is written off a second after it should have ended, and asked again; a new connection (after a
    broker restart) asks again at once."""

    def __init__(self, io: BackgroundLoop, nc: nats.NATS, api_subject: str, window: int, expires_s: float) -> None:
        self.io, self.nc, self.api_subject = io, nc, api_subject
        self.window, self.expires_s = window, expires_s
        self.buffer: collections.deque = collections.deque()
        self.ready = threading.Event()
        self.requests: collections.deque[list] = collections.deque()  # [deadline, messages still to come], oldest first
        self.inbox = nc.new_inbox()
        self.sub = None
        self.ticker: asyncio.Task | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_bytes_limit=0, pending_msgs_limit=0)
        self.ticker = asyncio.get_running_loop().create_task(self._tick())
        await self._top_up()

    def _outstanding(self) -> int:
        return sum(r[1] for r in self.requests)

    async def _top_up(self) -> None:
        wanted = self.window - len(self.buffer) - self._outstanding()
        if wanted < max(1, self.window // 2):  # ask in halves, not message by message
            return
        self.requests.append([time.monotonic() + self.expires_s + 1.0, wanted])
        body = json.dumps({"batch": wanted, "expires": int(self.expires_s * 1e9)}).encode()
        try:
            await self.nc.publish(self.api_subject, body, reply=self.inbox)
        except Exception as err:  # noqa: BLE001 - broker away: the ticker asks again
            self.requests.pop()
            log.warning("NATS pull request failed (%s); retrying", err)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            if self.requests:
                self.requests[0][1] -= 1
                if self.requests[0][1] <= 0:
                    self.requests.popleft()
            self.buffer.append(msg)
            self.ready.set()
        elif status in ("408", "409"):  # a request ended (expired, or refused: then it asked for nothing)
            if self.requests:
                self.requests.popleft()
            if status == "409":
                log.warning("NATS pull request ended: %s", msg.headers.get("Description", ""))
                await asyncio.sleep(0.1)
        else:  # 100 heartbeats and the like
            return
        await self._top_up()

    async def reconnected(self) -> None:
        """A new connection: the requests the broker held for the last one may be gone with it."""
        self.requests.clear()
        await self._top_up()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.expires_s / 2))
            now = time.monotonic()
            while self.requests and self.requests[0][0] < now:  # its end never came: written off
                self.requests.popleft()
            await self._top_up()

    def take(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to `limit` buffered messages, waiting up to `wait_s` for the first (dataflow thread)."""
        if not self.buffer:
            self.ready.clear()
            if not self.buffer:
                self.ready.wait(wait_s)
        out = []
        while self.buffer and len(out) < limit:
            out.append(self.buffer.popleft())
        if out:
            self.io.submit(self._top_up())
        return out

    async def stop(self) -> None:
        if self.ticker:
            self.ticker.cancel()
        if self.sub:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


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
        self.stream_first_seq = 0  # the stream's oldest message, as last asked (an epoch ago)
        self.discarded = 0  # messages the broker dropped before the flow read them
        self.asking: concurrent.futures.Future | None = None
        self.nc = None
        self.pull: ContinuousPull | None = None
        self.io.run(self._connect(resume_seq))

    async def _connect(self, resume_seq: int | None) -> None:
        async def reconnected() -> None:
            if self.pull:
                await self.pull.reconnected()

        self.nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                     connect_timeout=5, pending_size=256 * 1024 * 1024, reconnected_cb=reconnected)
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
        # the window: the next messages are on their way while the flow works on the last ones (waiting for
        # each round trip left the dataflow thread idle: docs/PERFORMANCE.md)
        self.pull = ContinuousPull(self.io, self.nc, f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}",
                                   window=2 * self.batch, expires_s=5.0)
        await self.pull.start()

    def next_batch(self) -> list[Message]:
        msgs = self.pull.take(self.batch, self.wait_s)
        out = []
        for m in msgs:
            seq = m.metadata.sequence.stream
            self.unacked.append(m.reply)
            if seq <= self.floor or seq in self.above:  # a redelivery of something already handed over
                continue
            self.above.add(seq)
            out.append(Message(m.subject, m.data, dict(m.headers or {}), seq))
        self._advance_floor()
        return out

    def _advance_floor(self) -> None:
        while self.floor + 1 in self.above:
            self.floor += 1
            self.above.discard(self.floor)

    def _skip_discarded(self) -> None:
        """A stream at its size limit drops its oldest messages, read or not. One dropped before the flow read
        it never comes: the resume point moves past it (else it waited for it for good, and every later
        message stayed in `above`) and the loss is logged. The stream's first sequence was asked an epoch ago,
        so what was delivered before then is buffered or handed over by now; buffered ones are not skipped."""
        if self.stream_first_seq - 1 <= self.floor:  # nothing dropped unread: the usual case, every epoch
            return
        buffered = [m.metadata.sequence.stream for m in list(self.pull.buffer)] if self.pull else []
        target = min([self.stream_first_seq - 1, *(seq - 1 for seq in buffered)])
        if target <= self.floor:
            return
        lost = target - self.floor - sum(1 for seq in self.above if seq <= target)
        self.above = {seq for seq in self.above if seq > target}
        self.floor = target
        self._advance_floor()
        if lost:
            self.discarded += lost
            log.error("the broker discarded %d message(s) of stream %s before the flow read them (%d in all): "
                      "the flow is further behind than the stream's limits hold", lost, self.stream, self.discarded)

    async def _ask_first_seq(self) -> None:
        with contextlib.suppress(Exception):  # broker away: asked again at the next epoch
            self.stream_first_seq = (await self.nc.jetstream().stream_info(self.stream)).state.first_seq

    async def _ack(self, replies: list[str]) -> None:
        for reply in replies:
            with contextlib.suppress(Exception):
                await self.nc.publish(reply, b"+ACK")
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=5)

    def snapshot(self) -> int:
        # ack one epoch late: by the time epoch N+1 closes, the sinks have flushed what epoch N produced. The
        # acks go out on the connection's thread: an epoch's are one per message, many at the live rate
        if self.ack_next:
            self.io.submit(self._ack(self.ack_next))
        self.ack_next, self.unacked = self.unacked, []
        self._skip_discarded()
        self.asking = self.io.submit(self._ask_first_seq())
        return self.floor

    def close(self) -> None:
        # buffered messages were never handed over nor acked: the consumer delivers them again after a restart
        if self.asking is not None:  # an answer on its way: not left pending on a stopped loop
            with contextlib.suppress(Exception):
                self.asking.result(timeout=2)
        with contextlib.suppress(Exception):
            self.io.run(self.pull.stop(), timeout=5)
        with contextlib.suppress(Exception):
            self.io.run(self.nc.close(), timeout=5)
        self.io.close()


class JetStreamSource(FixedPartitionedSource[Message, int]):
    """One partition per consumer (`durable`), handing `subjects` of `stream` to the flow in batches of up to
    `batch` messages as they arrive, with up to twice that many buffered or on their way. A message is itself a
    batch of ticks, so 8 is enough for throughput (8 x 10k ticks at full rate) while at live rates (~50-tick
    messages) a message waits for at most 7 others. `wait_s`: how long an idle `next_batch` waits for one."""

    def __init__(self, url: str, stream: str = "TELEMETRY", durable: str = FLOW_DURABLE,
                 subjects: list[str] | None = None, batch: int = 8, wait_s: float = 0.01) -> None:
        self.url, self.stream, self.durable = url, stream, durable
        self.subjects = subjects or ["biopilot.telemetry.>", "biopilot.assays.>"]
        self.batch, self.wait_s = batch, wait_s

    def list_parts(self) -> list[str]:
        return [self.durable]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        return _Partition(self.url, self.stream, self.durable, self.subjects, self.batch, self.wait_s,
                          resume_state)
