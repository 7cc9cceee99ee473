"""Back-pressure from the flow to the producers: hold a publisher while the flow is too far behind.

`TELEMETRY` keeps its last 4 GB and drops the oldest messages beyond (`DiscardPolicy.OLD`), read or not: a
producer faster than the flow (a replay or the plant at `max`) would make the broker drop what the flow has not
read yet. A producer that calls `Backpressure.published` after each message waits while the flow's durable
consumer has more than `max_bytes` undelivered (its pending messages times the stream's mean message size).

It never holds a producer for a flow that is not reading: with no such consumer (no flow has run yet) it does not
wait, and a consumer that delivers nothing for `stall_s` (its flow stopped) is warned about once and not waited
for again until it reads.

>>> import asyncio
>>> class Broker:  # stands in for a JetStream context: the flow is 4 messages of 1 MB behind, then caught up
...     pending = [4, 4, 0]
...     async def consumers_info(self, stream):  # the flow's one consumer (a partitioned flow: one per partition)
...         n = self.pending.pop(0)
...         return [type("Info", (), {"name": "biopilot-monitor", "num_pending": n,
...                                   "delivered": type("D", (), {"stream_seq": 10 - n})()})()]
...     async def stream_info(self, stream):
...         return type("Info", (), {"state": type("S", (), {"bytes": 10 << 20, "messages": 10})()})()
>>> gate = Backpressure(Broker(), max_bytes=2 << 20, poll_s=0.01, check_every_s=0.0)
>>> asyncio.run(gate.published(1 << 20))
>>> gate.holds, gate.held_s > 0
(1, True)
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from core.services import FLOW_DURABLE, STREAMS, transform_partitions

log = logging.getLogger(__name__)

# a quarter of the stream: the flow may fall this far behind before producers wait, well inside what is kept
DEFAULT_MAX_BYTES = STREAMS["TELEMETRY"].max_bytes // 4


async def flow_consumers(js: JetStreamContext, durable: str = FLOW_DURABLE, stream: str = "TELEMETRY",
                         ) -> list[ConsumerInfo]:
    """The flow's consumers on `stream`: `durable`, and `<durable>-<k>` for each partition of the stream
    (sources/jetstream.py)."""
    partition = re.compile(re.escape(durable) + r"(-\d+)?")
    return [c for c in await js.consumers_info(stream) if partition.fullmatch(c.name)]


async def flow_backlog(js: JetStreamContext, durable: str = FLOW_DURABLE, stream: str = "TELEMETRY",
                       ) -> tuple[int, int] | None:
    """How far the flow's consumers are behind: (messages not yet delivered, delivered but not yet
    acknowledged), summed; None while one of them (one per partition of the stream) does not exist yet."""
    partitions = transform_partitions((await js.stream_info(stream)).config.subject_transform)
    consumers = await flow_consumers(js, durable, stream)
    if len(consumers) < 1 + partitions:
        return None
    return sum(c.num_pending for c in consumers), sum(c.num_ack_pending for c in consumers)


class Backpressure:
    def __init__(self, js: JetStreamContext | None, durable: str = FLOW_DURABLE, stream: str = "TELEMETRY",
                 max_bytes: int = DEFAULT_MAX_BYTES, check_every_s: float = 1.0, stall_s: float = 30.0,
                 poll_s: float = 0.05) -> None:
        """`js`: a JetStream context, or None until the producer connects (then set `js`; no wait without one).
        The broker is asked at most every `check_every_s`, or after `max_bytes / 8` published since it was last
        asked, so a fast producer overshoots `max_bytes` by at most an eighth."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.js, self.durable, self.stream = js, durable, stream
        self.max_bytes, self.check_every_s, self.stall_s, self.poll_s = max_bytes, check_every_s, stall_s, poll_s
        self.holds = 0  # how many times a producer was held
        self.held_s = 0.0  # for how long in all
        self._since_check = 0
        self._checked_at = float("-inf")
        self._stalled_at: int | None = None  # the consumer's delivered stream seq when it was found stalled
        self._released = False

    def release(self) -> None:
        """The producer is stopping (Ctrl-C, a stop command): a hold ends at once, and none follows."""
        self._released = True

    async def published(self, nbytes: int) -> None:
        """Call after each message: returns at once, or when the flow is no more than `max_bytes` behind."""
        self._since_check += nbytes
        if self._released or (self._since_check < self.max_bytes // 8
                and time.monotonic() - self._checked_at < self.check_every_s):
            return
        self._since_check, self._checked_at = 0, time.monotonic()
        behind = await self._behind()
        if behind is None or behind[0] <= self.max_bytes:
            return
        self.holds += 1
        start = progress_at = time.monotonic()
        last_seq = behind[1]
        while behind is not None and behind[0] > self.max_bytes and not self._released:
            if behind[1] != last_seq:
                last_seq, progress_at = behind[1], time.monotonic()
            elif time.monotonic() - progress_at >= self.stall_s:
                self._stalled_at = last_seq
                log.warning("the flow's consumer %r has read nothing for %g s with %.0f MB waiting: publishing on "
                            "without waiting for it (the stream keeps its last %.0f GB)", self.durable, self.stall_s,
                            behind[0] / 1e6, STREAMS[self.stream].max_bytes / 2**30)
                break
            await asyncio.sleep(self.poll_s)
            behind = await self._behind()
        self.held_s += time.monotonic() - start
        self._checked_at = time.monotonic()

    async def _behind(self) -> tuple[float, int] | None:
        """(bytes the consumer has not been delivered, its delivered stream seq), or None: nothing to wait for."""
        if self.js is None:
            return None
        try:
            consumers = await flow_consumers(self.js, self.durable, self.stream)
            if not consumers:
                return None
            seq = sum(c.delivered.stream_seq for c in consumers)  # grows while any partition reads
            pending = sum(c.num_pending for c in consumers)
            if self._stalled_at is not None:
                if seq == self._stalled_at:
                    return None
                self._stalled_at = None
                log.info("the flow's consumer %r reads again: producers wait for it again", self.durable)
            if not pending:
                return 0.0, seq
            state = (await self.js.stream_info(self.stream)).state
        except NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error, OSError) as err:
            # the broker is away (a restart): the publish itself waits it out; asked again at the next check
            log.debug("could not ask the broker how far the flow is behind: %s", err)
            return None
        return pending * state.bytes / max(1, state.messages), seq

    def held_text(self) -> str:
        """"held 2.3 s while the flow caught up", or "" when it never held the producer noticeably."""
        return f"held {self.held_s:.1f} s while the flow caught up" if self.held_s >= 0.05 else ""
