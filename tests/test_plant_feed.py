"""The continuous plant feed on a real broker: reactors publish on their own clocks."""

from __future__ import annotations

import asyncio
import time

import nats

from sources.plant import PlantFeed
from sources.scenarios import load_scenario


def test_each_reactor_publishes_at_its_own_phase_of_the_step(nats_server):
    # 600x, 60 s ticks, 0.5 s steps: 5 ticks per reactor per step; 4 reactors a quarter of a step (125 ms) apart
    async def run() -> list[tuple[float, str]]:
        arrivals: list[tuple[float, str]] = []
        nc = await nats.connect(nats_server.url)

        async def on_ticks(msg) -> None:
            arrivals.append((time.monotonic(), msg.subject.rsplit(".", 1)[-1]))
            if len(arrivals) == 24:
                feed.interrupt()

        await nc.subscribe("biopilot.telemetry.*", cb=on_ticks)
        feed = PlantFeed(nats_server.url, load_scenario("normal").with_overrides(days=1.0), reactors=4, speed=600.0)
        await asyncio.wait_for(feed.run(), 60)
        await nc.close()
        return arrivals

    arrivals = asyncio.run(run())
    step = arrivals[20:24]  # the sixth step: the first ones catch up on the fleet's start-up, all at once
    assert len({reactor for _, reactor in step}) == 4
    gaps = [b[0] - a[0] for a, b in zip(step, step[1:], strict=False)]
    assert all(0.08 < gap < 0.25 for gap in gaps), gaps
