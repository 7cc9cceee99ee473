"""Bytewax sinks that publish to NATS JetStream: alerts (JSON) and dead letters (payload + reason header).

Each message carries a `Nats-Msg-Id` (the alert id, or the dead letter's source sequence), so JetStream's
duplicate window drops a republish after a flow restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime

import nats
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from biopilot.aio import BackgroundLoop

log = logging.getLogger(__name__)


def alert_json(alert: dict) -> bytes:
    def default(o: object) -> str:
        if isinstance(o, datetime):
            return o.isoformat()
        raise TypeError(type(o))
    return json.dumps(alert, default=default).encode()


class _Publisher(StatelessSinkPartition[tuple[str, bytes, dict[str, str]]]):
    def __init__(self, url: str) -> None:
        self.io = BackgroundLoop()
        self.nc = self.io.run(nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2))
        self.js = self.nc.jetstream()

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        for attempt in range(50):  # ride out a broker restart
            try:
                await self.js.publish(subject, data, headers=headers, timeout=2)
                return
            except Exception as err:  # noqa: BLE001 - any publish failure is retried, then logged
                if attempt == 49:
                    log.error("could not publish to %s: %s", subject, err)
                await asyncio.sleep(0.1)

    async def _publish_all(self, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
        # all in flight at once: a burst of alerts (many reactors crossing at once) waits one broker round
        # trip, not one per alert. They leave in order on the one connection; a retried one may come later
        await asyncio.gather(*(self._publish(*item) for item in items))

    def write_batch(self, items: list[tuple[str, bytes, dict[str, str]]]) -> None:
        self.io.run(self._publish_all(items))

    def close(self) -> None:
        self.io.run(self.nc.close(), timeout=5)
        self.io.close()


class NatsPublishSink(DynamicSink[tuple[str, bytes, dict[str, str]]]):
    """Items are (subject, payload, headers)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Publisher:
        return _Publisher(self.url)
