"""Bytewax sinks that publish to NATS JetStream: alerts (JSON) and dead letters (payload + reason header).

Each message carries a `Nats-Msg-Id` (the alert id, or the dead letter's source sequence), so JetStream's
duplicate window drops a republish after a flow restart. Publishing does not hold the dataflow up: a batch's
messages go out on the connection's own thread while the flow works on, and the epoch's snapshot waits until
the broker has acknowledged every one of them (so a resumed flow republishes whatever was not).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
from datetime import datetime

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from core.aio import BackgroundLoop
from core.services import connect_nats

log = logging.getLogger(__name__)
MAX_BATCHES_IN_FLIGHT = 64  # back-pressure when the broker falls behind

Publish = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


def alert_json(alert: dict) -> bytes:
    def default(o: object) -> str:
        if isinstance(o, datetime):
            return o.isoformat()
        raise TypeError(type(o))
    return json.dumps(alert, default=default).encode()


class _Publisher(StatefulSinkPartition[Publish, None]):
    def __init__(self, url: str) -> None:
        self.io = BackgroundLoop()
        self.nc = self.io.run(connect_nats(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2))
        self.js = self.nc.jetstream()
        self.in_flight: list[concurrent.futures.Future] = []

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        for attempt in range(50):  # ride out a broker restart
            try:
                await self.js.publish(subject, data, headers=headers, timeout=2)
                return
            except Exception as err:  # noqa: BLE001 - any publish failure is retried, then logged
                if attempt == 49:
                    log.error("could not publish to %s: %s", subject, err)
                await asyncio.sleep(0.1)

    async def _publish_all(self, items: list[Publish]) -> None:
        # all in flight at once: a burst of alerts (many reactors crossing at once) waits one broker round
        # trip, not one per alert. They leave in order on the one connection; a retried one may come later
        await asyncio.gather(*(self._publish(*item) for item in items))

    def write_batch(self, items: list[Publish]) -> None:
        self.in_flight = [f for f in self.in_flight if not f.done()]
        if len(self.in_flight) >= MAX_BATCHES_IN_FLIGHT:
            self.in_flight.pop(0).result()
        self.in_flight.append(self.io.submit(self._publish_all(items)))

    def snapshot(self) -> None:
        """The epoch is done when the broker has every message it produced."""
        for future in self.in_flight:
            future.result()
        self.in_flight = []

    def close(self) -> None:
        self.snapshot()
        self.io.run(self.nc.close(), timeout=5)
        self.io.close()


class NatsPublishSink(FixedPartitionedSink[Publish, None]):
    """Items are (subject, payload, headers), keyed (any key: one partition publishes them all)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def list_parts(self) -> list[str]:
        return ["nats"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Publisher:
        return _Publisher(self.url)
