"""The flow's NATS publisher: a batch leaves without holding the dataflow up, and an epoch's snapshot returns
only when the broker has acknowledged every message of it."""

from __future__ import annotations

import asyncio

import nats

from sinks.nats_sink import NatsPublishSink


def _stored(url: str, stream: str) -> int:
    async def ask() -> int:
        nc = await nats.connect(url)
        try:
            return (await nc.jetstream().stream_info(stream)).state.messages
        finally:
            await nc.close()
    return asyncio.run(ask())


def test_a_snapshot_returns_once_the_broker_has_every_published_message(nats_server):
    part = NatsPublishSink(nats_server.url).build_part("publish", "nats", None)
    for batch in range(5):
        part.write_batch([(f"biopilot.alerts.r{k}", b'{"k": %d}' % k, {"Nats-Msg-Id": f"a-{batch}-{k}"})
                          for k in range(200)])
    part.snapshot()
    assert _stored(nats_server.url, "ALERTS") == 1000
    part.write_batch([("biopilot.alerts.r0", b"{}", {"Nats-Msg-Id": "a-0-0"})])  # a republish after a restart
    part.close()
    assert _stored(nats_server.url, "ALERTS") == 1000  # dropped by the broker's duplicate window
