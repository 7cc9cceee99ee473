"""A Bytewax source over NATS JetStream: batched pulls from durable consumers, one per partition of the stream
(`core.services.telemetry_transform`), resumable after a crash.

A partition's snapshot is the highest stream sequence it handed to the flow; Bytewax stores it with the epoch,
and a resumed partition re-creates its consumer to start right after it. Without a recovery store the durable
consumer's acks are the resume point (messages are acked one epoch after they were handed over, when the sinks
have committed them), so a restarted flow still continues where the last one stopped; a message lost in
transit makes the consumer start again after the last one handed over. A broker outage is waited out. The
partitions of a Bytewax cluster's processes share the work (docs/SCALE-OUT.md).
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from nats.aio.msg import Msg
from nats.js.api import DEFAULT_PREFIX, AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from core.aio import BackgroundLoop
from core.services import FLOW_DURABLE, connect_nats, transform_partitions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str]
    stream_seq: int


# Handed to the flow once per epoch by every partition, before its messages: Bytewax snapshots a sink partition
# only in an epoch that brought it items, and the lake's sink commits what an epoch sealed at a later snapshot
# (sinks/lake_sink.py), so every sink partition is sent one at each epoch (flows/monitor.py).
EPOCH_MARK = Message("", b"", {}, 0)


class Arrivals:
    """Whether any of a process's partitions has messages buffered. A partition with none waits for a message on
    any of them, not only on its own: each waiting for its own, the eight partitions of a live stream kept the
    dataflow thread asleep for most of each round while the others' messages waited, and the flow fell behind
    (docs/PERFORMANCE.md)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.pulls: list[ContinuousPull] = []

    def wait(self, wait_s: float) -> None:
        """Up to `wait_s` for a message on any partition, unless one has some already (dataflow thread)."""
        self.event.clear()
        if not any(pull.buffer for pull in self.pulls):  # after the clear: an arrival in between sets it again
            self.event.wait(wait_s)


class ContinuousPull:
    """Keeps a pull consumer's messages flowing into a local buffer, as the newer NATS clients' `consume` does
    (nats-py has only `fetch`). Pull requests ask for up to `window` messages in all, minus what is buffered,
    and each message is available the moment it arrives. A `fetch(8)` instead holds the messages it has until
    its batch is full or it expires: at live rates (one ~50-tick message at a time) up to its whole timeout.

    Runs on `io`'s loop; `take` is called from the dataflow thread. A request lives `expires_s`; the server ends
    it with a 408 status that says how many of its messages it did not send. A request that never gets its
    status is written off a second after it should have ended, and asked again; a new connection (after a
    broker restart) asks again at once."""

    def __init__(self, io: BackgroundLoop, nc: nats.NATS, api_subject: str, window: int, expires_s: float,
                 arrivals: Arrivals | None = None) -> None:
        self.io, self.nc, self.api_subject = io, nc, api_subject
        self.window, self.expires_s = window, expires_s
        self.buffer: collections.deque = collections.deque()
        self.arrivals = arrivals or Arrivals()
        self.arrivals.pulls.append(self)
        self.requests: collections.deque[list] = collections.deque()  # [deadline, messages still to come], oldest first
        # their sum, kept by the loop's thread (every change there is followed by its own `_top_up`), read by
        # `take` to ask for more only when the window is short: asking after every message woke the loop's
        # thread for nothing at live rates, and the dataflow thread waited for the GIL behind nine of them
        self.pending = 0
        self.inbox = nc.new_inbox()
        self.sub = None
        self.ticker: asyncio.Task | None = None

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg, pending_bytes_limit=0, pending_msgs_limit=0)
        self.ticker = asyncio.get_running_loop().create_task(self._tick())
        await self._top_up()

    def _short(self) -> int:
        """How many messages to ask for: none unless half the window or more is free (asked in halves, not
        message by message)."""
        wanted = self.window - len(self.buffer) - self.pending
        return wanted if wanted >= max(1, self.window // 2) else 0

    def _written_off(self, request: list) -> None:
        self.pending -= request[1]

    async def _top_up(self) -> None:
        wanted = self._short()
        if not wanted:
            return
        self.requests.append([time.monotonic() + self.expires_s + 1.0, wanted])
        self.pending += wanted
        body = json.dumps({"batch": wanted, "expires": int(self.expires_s * 1e9)}).encode()
        try:
            await self.nc.publish(self.api_subject, body, reply=self.inbox)
        except Exception as err:  # noqa: BLE001 - broker away: the ticker asks again
            self._written_off(self.requests.pop())
            log.warning("NATS pull request failed (%s); retrying", err)

    async def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            if self.requests:
                self.requests[0][1] -= 1
                self.pending -= 1
                if self.requests[0][1] <= 0:
                    self.requests.popleft()
            self.buffer.append(msg)
            self.arrivals.event.set()
        elif status in ("408", "409"):  # a request ended (expired, or refused: then it asked for nothing)
            if self.requests:
                self._written_off(self.requests.popleft())
            if status == "409":
                log.warning("NATS pull request ended: %s", msg.headers.get("Description", ""))
                await asyncio.sleep(0.1)
        else:  # 100 heartbeats and the like
            return
        await self._top_up()

    async def reconnected(self) -> None:
        """A new connection: the requests the broker held for the last one may be gone with it."""
        self.requests.clear()
        self.pending = 0
        await self._top_up()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.expires_s / 2))
            now = time.monotonic()
            while self.requests and self.requests[0][0] < now:  # its end never came: written off
                self._written_off(self.requests.popleft())
            await self._top_up()

    def take(self, limit: int, wait_s: float) -> list[Msg]:
        """Up to `limit` buffered messages; none buffered, first up to `wait_s` for a message on any partition
        (dataflow thread)."""
        if not self.buffer:
            self.arrivals.wait(wait_s)
        out = []
        while self.buffer and len(out) < limit:
            out.append(self.buffer.popleft())
        if out and self._short():  # else the loop's thread asks when the next message or a request's end comes
            self.io.submit(self._top_up())
        return out

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):  # its buffer is never taken again: no longer a reason not to wait
            self.arrivals.pulls.remove(self)
        if self.ticker:
            self.ticker.cancel()
        if self.sub:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()


API_TIMEOUT_S = 30.0  # consumer requests, answered behind a backlog's messages when the broker is busy


class SharedLoop:
    """The one thread the connections of a process's partitions live on, started with the first and stopped
    with the last: their sockets need no more than one (a thread per partition made nine; the latency measured
    the same either way: docs/SCALE-OUT.md §5)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.io: BackgroundLoop | None = None
        self.users = 0

    def acquire(self) -> BackgroundLoop:
        with self.lock:
            if self.io is None:
                self.io = BackgroundLoop()
            self.users += 1
            return self.io

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if not self.users and self.io is not None:
                self.io.close()
                self.io = None


class _Client:
    """A partition's NATS connection, on its process's shared thread. (One connection shared by a process's
    partitions timed out its consumer requests behind the other partitions' messages while they pulled a
    backlog.)"""

    def __init__(self, url: str, reconnected: Callable[[], Awaitable[None]], loop: SharedLoop) -> None:
        self.loop = loop
        self.io = loop.acquire()
        try:
            self.nc = self.io.run(connect_nats(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
                                               connect_timeout=5, pending_size=256 * 1024 * 1024,
                                               reconnected_cb=reconnected))
        except BaseException:
            loop.release()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.io.run(self.nc.close(), timeout=5)
        self.loop.release()


class _Partition(StatefulSourcePartition[Message, int]):
    """One consumer's messages. The snapshot (`floor`) is the highest stream sequence handed to the flow: a
    consumer with a filter sees a sparse subset of the stream's sequences, so the gaps below it say nothing; one
    connection delivers in stream order, so everything of the filter below the floor was handed over too. A
    message lost in transit goes with its connection: after a reconnect the consumer is made again to start
    right after the floor (a redelivery after `ack_wait` would come below it, taken for a repeat)."""

    def __init__(self, url: str, stream: str, durable: str, subjects: list[str], batch: int, wait_s: float,
                 resume_seq: int | None, partitioned: bool, arrivals: Arrivals, loop: SharedLoop) -> None:
        self.stream, self.durable, self.subjects, self.arrivals = stream, durable, subjects, arrivals
        self.batch, self.wait_s, self.partitioned = batch, wait_s, partitioned
        self.floor = resume_seq or 0  # every stream sequence <= floor of this filter has been handed to the flow
        self.unacked: list[str] = []  # reply subjects: no payloads kept alive
        self.ack_next: list[str] = []
        self.stream_first_seq = 0  # the stream's oldest message, as last asked (an epoch ago)
        self.discarded = 0  # messages the broker dropped before the flow read them (at most)
        self.asking: concurrent.futures.Future | None = None
        self.pull: ContinuousPull | None = None
        self.resuming: asyncio.Task | None = None  # the consumer made again after a reconnect
        self.epoch_marked = False
        self.client = _Client(url, self.reconnected, loop)
        self.io, self.nc = self.client.io, self.client.nc
        self.io.run(self._connect(resume_seq))

    def _config(self, start_seq: int | None = None) -> ConsumerConfig:
        config = ConsumerConfig(durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1,
                                filter_subjects=self.subjects, ack_wait=60)
        if start_seq is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start_seq
        return config

    async def _renew(self, start_seq: int) -> None:
        js = self.nc.jetstream(timeout=API_TIMEOUT_S)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(self.stream, self.durable)
        await js.add_consumer(self.stream, self._config(start_seq))

    async def _connect(self, resume_seq: int | None) -> None:
        js = self.nc.jetstream(timeout=API_TIMEOUT_S)
        if resume_seq is not None:  # Bytewax recovery knows better than the consumer's ack state
            await self._renew(resume_seq + 1)
        else:
            try:
                info = await js.consumer_info(self.stream, self.durable)
            except NotFoundError:
                await js.add_consumer(self.stream, self._config())
            else:
                # a restart without recovery state: continue right after what was acknowledged, in stream
                # order, now (messages delivered but never acked would otherwise wait out `ack_wait`)
                self.floor = info.ack_floor.stream_seq
                await self._renew(self.floor + 1)
        # the window: the next messages are on their way while the flow works on the last ones (waiting for
        # each round trip left the dataflow thread idle: docs/PERFORMANCE.md)
        self.pull = ContinuousPull(self.io, self.nc, f"{DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}",
                                   window=2 * self.batch, expires_s=5.0, arrivals=self.arrivals)
        await self.pull.start()

    async def reconnected(self) -> None:
        """A new connection: what the last one had in flight may be lost, so start again after the floor (in a
        task: nats-py awaits this callback inside its reconnect, which must not wait on our retries)."""
        if self.pull is None:
            return
        if self.resuming is not None:
            self.resuming.cancel()
        self.resuming = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        # retried until it works: after a cluster node's loss the stream may have no leader for seconds, and a
        # renewal given up between its delete and its add left the partition without a consumer for good
        while True:
            try:
                await self._renew(self.floor + 1)
                break
            except Exception as err:  # noqa: BLE001 - no stream leader yet, or the broker away again
                log.warning("making consumer %s again failed (%s); retrying", self.durable, err)
                await asyncio.sleep(0.5)
        await self.pull.reconnected()

    async def _stop(self) -> None:
        if self.resuming is not None:
            self.resuming.cancel()
        await self.pull.stop()

    def next_batch(self) -> list[Message]:
        msgs = self.pull.take(self.batch, self.wait_s)
        out = [] if self.epoch_marked else [EPOCH_MARK]
        self.epoch_marked = True
        for m in msgs:
            seq = m.metadata.sequence.stream
            self.unacked.append(m.reply)
            if seq <= self.floor:  # a redelivery of something already handed over
                continue
            self._note_discarded(seq)
            self.floor = seq
            # a partition's subjects carry the partition as a last token: the flow sees what was published
            subject = m.subject.rpartition(".")[0] if self.partitioned else m.subject
            out.append(Message(subject, m.data, dict(m.headers or {}), seq))
        return out

    def _note_discarded(self, seq: int) -> None:
        """A stream at its size limit drops its oldest messages, read or not. One dropped before the flow read it
        never comes: the loss is logged (up to the gap's size: a filtered consumer's gap holds other subjects'
        messages too). The stream's first sequence was asked an epoch ago."""
        gone_below = min(seq, self.stream_first_seq)
        if gone_below - 1 <= self.floor:  # nothing dropped unread: the usual case
            return
        lost = gone_below - 1 - self.floor
        self.discarded += lost
        log.error("the broker discarded up to %d message(s) of stream %s before the flow read them (%d in all): "
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
        self.asking = self.io.submit(self._ask_first_seq())
        self.epoch_marked = False
        return self.floor

    def close(self) -> None:
        # buffered messages were never handed over nor acked: the consumer delivers them again after a restart
        if self.asking is not None:  # an answer on its way: not left pending on a stopped loop
            with contextlib.suppress(Exception):
                self.asking.result(timeout=2)
        with contextlib.suppress(Exception):
            self.io.run(self._stop(), timeout=5)
        self.client.close()


def stream_partitions(url: str, stream: str = "TELEMETRY") -> int:
    """How many partitions `stream`'s subject transform makes (`core.services.telemetry_transform`); 0 if none
    (a stream made before partitions, or never given one)."""
    async def ask() -> int:
        nc = await connect_nats(url, connect_timeout=5)
        try:
            return transform_partitions((await nc.jetstream().stream_info(stream)).config.subject_transform)
        finally:
            await nc.close()

    return asyncio.run(ask())


def unit_partition(unit_id: str, partitions: int) -> int:
    """The partition NATS's `{{partition(n, token)}}` puts `unit_id` in: FNV-1a (32 bits) modulo `partitions`."""
    digest = 0x811C9DC5
    for byte in unit_id.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions if partitions else 0


# what a partitioned stream leaves untransformed: messages stored before the stream had partitions (one token for
# the unit), and subjects of more tokens than a unit's (dead letters for the flow)
UNPARTITIONED_SUBJECTS = ["biopilot.telemetry.*", "biopilot.assays.*", "biopilot.*.*.*.>"]


class JetStreamSource(FixedPartitionedSource[Message, int]):
    """Messages of `stream` in batches of up to `batch` as they arrive, with up to twice that many buffered or
    on their way per partition. A message is itself a batch of ticks, so 8 is enough for throughput (8 x 10k
    ticks at full rate) while at live rates (~50-tick messages) a message waits for at most 7 others.
    `wait_s`: how long an idle `next_batch` waits for one (on any of the process's partitions).

    With `subjects`, one partition: the consumer `durable` on those subjects. Without, one partition per
    partition of the stream's subject transform (`partitions`, asked of the stream if None): consumer
    `<durable>-<k>` on `biopilot.*.*.<k>`, plus `durable` itself on what the transform left alone (the stream's
    messages from before it had partitions: an older stack's consumer goes on where it stopped)."""

    def __init__(self, url: str, stream: str = "TELEMETRY", durable: str = FLOW_DURABLE,
                 subjects: list[str] | None = None, batch: int = 8, wait_s: float = 0.01,
                 partitions: int | None = None) -> None:
        self.url, self.stream, self.durable = url, stream, durable
        self.subjects, self.partitions = subjects, partitions
        self.batch, self.wait_s = batch, wait_s
        self.arrivals, self.loop = Arrivals(), SharedLoop()  # shared by this process's partitions

    def _parts(self) -> dict[str, tuple[list[str], bool]]:
        """Each partition's consumer name: its subjects, and whether they carry the partition token."""
        if self.subjects is not None:
            return {self.durable: (self.subjects, False)}
        if self.partitions is None:
            self.partitions = stream_partitions(self.url, self.stream)
        parts = {self.durable: (UNPARTITIONED_SUBJECTS if self.partitions else
                                ["biopilot.telemetry.>", "biopilot.assays.>"], False)}
        parts.update({f"{self.durable}-{k}": ([f"biopilot.*.*.{k}"], True) for k in range(self.partitions)})
        return parts

    def list_parts(self) -> list[str]:
        return list(self._parts())

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Partition:
        subjects, partitioned = self._parts()[for_part]
        return _Partition(self.url, self.stream, for_part, subjects, self.batch, self.wait_s, resume_state,
                          partitioned, self.arrivals, self.loop)
