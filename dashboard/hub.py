"""Server-sent events fan-out with resume: Redis Streams as the buffer, one bounded queue per client.

Every event is XADDed to `biopilot:sse:<channel>` (MAXLEN ~ `buffer`); its Redis id is the SSE event id. One
reader task per channel (XREAD BLOCK) hands new events to the clients' queues, so 200 clients cost one Redis
read, not 200. A client that reconnects with `Last-Event-ID` first gets the buffered events after that id
(XRANGE), then the live ones with any id it already had skipped: no gap, no duplicate.

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
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

log = logging.getLogger(__name__)
CHANNELS = ("telemetry", "alerts", "incidents", "agents")
DROPPABLE = {"telemetry"}


def stream_key(channel: str) -> str:
    return f"biopilot:sse:{channel}"


def _id_tuple(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


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

    async def publish(self, channel: str, event: dict) -> str:
        return (await self.redis.xadd(stream_key(channel), {"data": json.dumps(event, default=str)},
                                      maxlen=self.buffer, approximate=True)).decode()

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
                reply = await self.redis.xread({key: last}, block=1000, count=1000)
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

    async def events(self, channel: str, accept: Callable[[dict], bool], last_event_id: str | None = None,
                     ) -> AsyncIterator[tuple[str, dict]]:
        """(id, event) for one client: the buffered ones after `last_event_id`, then live ones."""
        client = Client(channel, accept, self.queue_max)
        self.clients[channel].add(client)  # register before reading the buffer: nothing falls in between
        try:
            seen = (0, 0)
            if last_event_id:
                seen = _id_tuple(last_event_id)
                for raw_id, fields in await self.redis.xrange(stream_key(channel), min=f"({last_event_id}"):
                    event = json.loads(fields[b"data"])
                    seen = _id_tuple(raw_id.decode())
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
