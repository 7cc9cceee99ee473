"""Server-sent events fan-out with resume: Redis Streams as the buffer, one bounded queue per client.

Every event is XADDed to `biopilot:sse:<channel>` (MAXLEN ~ `buffer`); its Redis id is the SSE event id. The
writer (`write`) chooses each id itself and keeps it across retries, so a retry after a timeout cannot add an
event twice: Redis refuses an id at or below the stream's last one, and an entry already at that id with the
same data is the earlier try's. One reader task per channel (XREAD BLOCK) hands new events to the clients'
queues, so 200 clients cost one Redis read, not 200. A client that reconnects with `Last-Event-ID` first gets
the buffered events after that id (XRANGE), then the live ones with any id it already had skipped: no gap, no
duplicate. An id older than the buffer's first one gets what the buffer still has (and, if asked, a note that
events were missed); an id newer than the buffer's last one (never issued here) resumes from the live edge.

Slow clients: each client's queue holds `queue_max` events. When it is full, the oldest *telemetry* event in it
is dropped (a screen only needs the latest points); alerts, incidents and agent chunks are never dropped — if
the queue is full of those, the client is disconnected and resumes from the buffer with its Last-Event-ID.
A slow client therefore never slows the others: the reader only appends to queues, it never waits on a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from core.services import REDIS_SOCKET_TIMEOUT_S

log = logging.getLogger(__name__)
CHANNELS = ("telemetry", "alerts", "incidents", "agents", "twin")  # twin: the patient twin's forecasts
DROPPABLE = {"telemetry"}
READ_BLOCK_MS = 1000  # the reader's XREAD BLOCK: below the client's socket timeout, or every idle read fails
assert READ_BLOCK_MS / 1000 < REDIS_SOCKET_TIMEOUT_S
STREAM_TTL_S = 7 * 86400  # refreshed on every write: the buffer of a dashboard gone for a week is dropped
MISSED = "missed"  # the `kind` of the note a resuming client gets when its id is older than the buffer
_EVENT_ID = re.compile(r"(\d{1,20})-(\d{1,20})")
_MAX_ID_PART = 2**64 - 1  # Redis stream ids are two unsigned 64-bit integers


def stream_key(channel: str) -> str:
    return f"biopilot:sse:{channel}"


def parse_event_id(text: str) -> tuple[int, int] | None:
    """A stream id `<ms>-<seq>` as a tuple, or None if `text` is not one."""
    match = _EVENT_ID.fullmatch(text)
    if match is None:
        return None
    ms, seq = int(match[1]), int(match[2])
    return (ms, seq) if ms <= _MAX_ID_PART and seq <= _MAX_ID_PART else None


def _id_tuple(event_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (event_id.decode() if isinstance(event_id, bytes) else event_id).partition("-")
    return int(ms), int(seq or 0)


def _id_text(event_id: tuple[int, int]) -> str:
    return f"{event_id[0]}-{event_id[1]}"


class Overflow(Exception):
    """The client fell too far behind on events that may not be dropped."""


@dataclass(eq=False)  # identity: a client is in its channel's set once
class Client:
    channel: str
    accept: Callable[[dict], bool]
    queue_max: int
    queue: deque = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    overflowed: bool = False

    def offer(self, event_id: str, event: dict) -> None:
        if self.overflowed or not self.accept(event):
            return
        if len(self.queue) >= self.queue_max:
            if self.channel in DROPPABLE:
                self.queue.popleft()
                self.dropped += 1
            else:
                self.overflowed = True
                self.wake.set()
                return
        self.queue.append((event_id, event))
        self.wake.set()


@dataclass(eq=False)
class Outgoing:
    """One event on its way into a channel's stream."""

    channel: str
    data: str  # the event as JSON
    event_id: tuple[int, int] | None = None  # chosen on the first try and kept for the retries


@dataclass
class Hub:
    redis: aioredis.Redis
    buffer: int = 10_000
    queue_max: int = 500
    clients: dict[str, set[Client]] = field(default_factory=lambda: {c: set() for c in CHANNELS})
    tasks: list[asyncio.Task] = field(default_factory=list)
    sent: int = 0
    dropped: int = 0
    disconnected: int = 0
    last_ids: dict[str, tuple[int, int]] = field(default_factory=dict)  # the last id written, per channel

    def _next_id(self, channel: str) -> tuple[int, int]:
        ms, seq = self.last_ids.get(channel, (0, 0))
        now_ms = time.time_ns() // 1_000_000
        self.last_ids[channel] = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
        return self.last_ids[channel]

    async def write(self, batch: list[Outgoing]) -> None:
        """XADD the batch (one round trip), each event exactly once however often this is retried. Raises on a
        Redis outage: the caller keeps the batch and tries again."""
        todo = batch
        while todo:
            for item in todo:
                item.event_id = item.event_id or self._next_id(item.channel)
            async with self.redis.pipeline(transaction=False) as pipe:
                for item in todo:
                    pipe.xadd(stream_key(item.channel), {"data": item.data}, id=_id_text(item.event_id),
                              maxlen=self.buffer, approximate=True)
                for channel in {item.channel for item in todo}:
                    pipe.expire(stream_key(channel), STREAM_TTL_S)
                replies = await pipe.execute(raise_on_error=False)
            refused = []
            for item, reply in zip(todo, replies, strict=False):
                if isinstance(reply, ResponseError) and "equal or smaller" in str(reply):
                    refused.append(item)
                elif isinstance(reply, Exception):  # out of memory, a wrong type...: the caller retries later
                    raise reply
            todo = [item for item in refused if not await self._written_before(item)]

    async def _written_before(self, item: Outgoing) -> bool:
        """After XADD refused `item`'s id as not above the stream's last: True if an earlier try wrote
        it; else (another writer, or a clock that went back) it gets a fresh id past the last, and False."""
        key, event_id = stream_key(item.channel), _id_text(item.event_id)
        there = await self.redis.xrange(key, min=event_id, max=event_id)
        if there and there[0][1][b"data"] == item.data.encode():
            return True
        last = (await self.redis.xinfo_stream(key))["last-generated-id"]
        self.last_ids[item.channel] = max(self.last_ids.get(item.channel, (0, 0)), _id_tuple(last))
        item.event_id = None
        return False

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._read(c), name=f"hub-{c}") for c in CHANNELS]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _read(self, channel: str) -> None:
        key, last = stream_key(channel), "$"
        while True:
            try:
                reply = await self.redis.xread({key: last}, block=READ_BLOCK_MS, count=1000)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a Redis hiccup: retry, clients resume by id anyway
                log.warning("hub reader %s: %s", channel, err)
                await asyncio.sleep(0.5)
                continue
            for _, entries in reply or []:
                for raw_id, fields in entries:
                    last = raw_id.decode()
                    event = json.loads(fields[b"data"])
                    for client in list(self.clients[channel]):
                        client.offer(last, event)

    async def _resume_point(self, channel: str, last_event_id: str) -> tuple[tuple[int, int], bool]:
        """Where a client that last saw `last_event_id` resumes, and whether events it never saw have left the
        buffer (its id is older than the oldest buffered one)."""
        asked = parse_event_id(last_event_id)
        if asked is None:
            raise ValueError(f"Last-Event-ID {last_event_id[:40]!r} is not a stream id <ms>-<seq>")
        key = stream_key(channel)
        oldest, newest = await self.redis.xrange(key, count=1), await self.redis.xrevrange(key, count=1)
        if not newest:  # an empty buffer (Redis lost it): what the client missed is gone
            return (0, 0), True
        return min(asked, _id_tuple(newest[0][0])), asked < _id_tuple(oldest[0][0])

    async def events(self, channel: str, accept: Callable[[dict], bool], last_event_id: str | None = None,
                     report_gaps: bool = False) -> AsyncIterator[tuple[str | None, dict]]:
        """(id, event) for one client: the buffered ones after `last_event_id`, then live ones. With
        `report_gaps`, resuming from an id older than the buffer first yields (None, {"kind": MISSED})."""
        client = Client(channel, accept, self.queue_max)
        self.clients[channel].add(client)  # register before reading the buffer: nothing falls in between
        try:
            seen = (0, 0)
            if last_event_id:
                seen, missed = await self._resume_point(channel, last_event_id)
                if missed and report_gaps:
                    yield None, {"kind": MISSED, "after": last_event_id,
                                 "message": "events after this id have left the buffer; resuming from the "
                                            "oldest one still there"}
                for raw_id, fields in await self.redis.xrange(stream_key(channel), min=f"({_id_text(seen)}"):
                    event = json.loads(fields[b"data"])
                    seen = _id_tuple(raw_id)
                    if accept(event):
                        self.sent += 1
                        yield raw_id.decode(), event
            while True:
                while not client.queue and not client.overflowed:
                    client.wake.clear()
                    await client.wake.wait()
                if client.overflowed:
                    self.disconnected += 1
                    raise Overflow(f"client fell {self.queue_max} {channel} events behind")
                event_id, event = client.queue.popleft()
                if _id_tuple(event_id) <= seen:
                    continue  # already sent from the buffer
                self.sent += 1
                yield event_id, event
        finally:
            self.dropped += client.dropped
            self.clients[channel].discard(client)
