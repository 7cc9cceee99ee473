"""The continuous plant feed: N reactors run batch after batch at a speed factor and stream to NATS.

Ticks go to `biopilot.telemetry.<reactor>` as Arrow IPC, assays to `biopilot.assays.<reactor>` when their lab
result is reported (`reported_ts`, late as in a real lab). Commands on `biopilot.control.<reactor>` change the
running process between steps:

    {"type": "setpoint", "name": "do_setpoint_pct", "value": 50}
    {"type": "feed", "volume_ml": 30}
    {"type": "fault", "fault": "overfeed", "duration_h": 3, "magnitude": 2, "signal": null}
    {"type": "stop"}                       # stop the whole feed (sent to one of its reactors)

Each command is validated with the dashboard's own models (`sources.commands`); one that is not valid (not
JSON, an unknown field, a number out of range, NaN, or a reactor this plant does not run) is logged, counted in
`PlantStats.rejected_commands` and dropped. An injected fault starts now and writes its label row.

With `jitter_share > 0` that share of ticks is delivered out of order (shuffled within a few ticks), as a real
network would. The plant waits while the flow's consumer `flow_durable` is more than 1 GB behind
(`sources.backpressure`: at `max` it could outrun the flow).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats
import numpy as np
import pyarrow as pa

from core.events import LABELS, Label, to_table
from core.services import FLOW_DURABLE
from sources.backpressure import Backpressure
from sources.commands import Command, CommandError, ReplayCommand, parse_command
from sources.fleet import Fleet, run_id_for
from sources.publish import publish_assays, publish_ticks, publish_watermark, split_by_reactor
from sources.scenarios import Scenario

log = logging.getLogger(__name__)


@dataclass
class PlantStats:
    batches: int = 0
    ticks: int = 0
    assays: int = 0
    commands: int = 0
    rejected_commands: int = 0
    # why the latest ones were refused; bounded, since anyone on the broker can send them
    rejections: deque[str] = field(default_factory=lambda: deque(maxlen=100))

    def reject(self, reactor: str, reason: str) -> None:
        self.rejected_commands += 1
        self.rejections.append(f"{reactor}: {reason}")
        log.warning("rejected command for %s: %s", reactor, reason)


def jitter(table: pa.Table, share: float, max_shift: int, rng: np.random.Generator) -> pa.Table:
    """Move a `share` of rows up to `max_shift` positions later (out-of-order delivery)."""
    n = table.num_rows
    if share <= 0 or n < 2:
        return table
    key = np.arange(n, dtype=np.float64)
    moved = rng.random(n) < share
    key[moved] += rng.integers(1, max_shift + 1, int(moved.sum())) + 0.5
    return table.take(pa.array(np.argsort(key, kind="stable")))


class PlantFeed:
    def __init__(self, nats_url: str, scenario: Scenario, reactors: int = 4, speed: float | None = 600.0,
                 seed: int = 0, jitter_share: float = 0.0, step_s: float = 0.5, lateness_s: float = 300.0,
                 max_batches: int | None = None, start: datetime | None = None, turnaround_h: float = 12.0,
                 record: Callable[[str, pa.Table], None] | None = None, flow_durable: str = FLOW_DURABLE) -> None:
        """`record(table_name, rows)` stores the `labels` and `runs` rows (the caller's lake writer)."""
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0 (or None for as fast as possible)")
        self.nats_url, self.scenario = nats_url, scenario
        self.record = record or (lambda name, rows: None)
        self.reactors, self.speed, self.seed = reactors, speed, seed
        self.jitter_share, self.step_s, self.lateness_s = jitter_share, step_s, lateness_s
        self.max_batches = max_batches
        self.turnaround_h = turnaround_h
        self.start = start or datetime.now(UTC).replace(microsecond=0)
        self.stats = PlantStats()
        self.stopping = asyncio.Event()
        self.interrupted = False
        self.commands: asyncio.Queue[tuple[str, Command]] = asyncio.Queue()
        self.reactor_ids: list[str] = []  # the running batch's, set before the first command can arrive
        self.rng = np.random.default_rng(seed)
        self.backpressure = Backpressure(None, flow_durable)  # connected by `run`

    def interrupt(self) -> None:
        """Ctrl-C: stop at the next step."""
        self.interrupted = True
        self.stopping.set()
        self.backpressure.release()

    # ---- commands -------------------------------------------------------------------------------------
    async def _on_control(self, msg: nats.aio.msg.Msg) -> None:
        reactor = msg.subject.rsplit(".", 1)[-1]
        try:
            command = parse_command(msg.data)
        except CommandError as err:
            self.stats.reject(reactor, str(err))
            return
        if isinstance(command, ReplayCommand):
            return  # for a replay on the same subjects; the live plant does not pause
        if reactor not in self.reactor_ids:
            # a stop sent to any id (a replay's, a typo) would otherwise stop every reactor of the plant
            self.stats.reject(reactor, f"unknown reactor; this plant runs {', '.join(self.reactor_ids)}")
            return
        if command.type == "stop":
            self.backpressure.release()  # a step held for the flow would apply the stop only once it caught up
        await self.commands.put((reactor, command))

    def _apply(self, fleet: Fleet, reactor: str, command: Command) -> list[Label]:
        """A validated command (`parse_command`) for one of this fleet's reactors."""
        self.stats.commands += 1
        if command.type == "stop":
            self.stopping.set()
            return []
        k = fleet.reactor_ids.index(reactor)
        if command.type == "setpoint":
            fleet.set_control(k, command.name, command.value)
        elif command.type == "feed":
            fleet.add_bolus(k, command.volume_ml)
        elif command.type == "fault":
            return [fleet.inject_fault(k, command.fault, float(fleet.t_h[k]), command.duration_h,
                                       command.magnitude, command.signal)]
        return []

    # ---- main loop ------------------------------------------------------------------------------------
    def _new_fleet(self, batch: int, start: datetime) -> Fleet:
        scenario = self.scenario.with_overrides(start=start)
        seed = self.seed + batch
        ids = [run_id_for(scenario, seed, i) for i in range(self.reactors)]
        fleet = Fleet(scenario, self.reactors, seed=seed, run_ids=ids)
        self.reactor_ids = fleet.reactor_ids
        return fleet

    async def run(self) -> PlantStats:
        nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        self.backpressure.js = js
        sub = await nc.subscribe("biopilot.control.*", cb=self._on_control)
        try:
            start = self.start
            batch = 0
            while not self.stopping.is_set() and (self.max_batches is None or batch < self.max_batches):
                fleet = self._new_fleet(batch, start)
                for spec_label in fleet.labels:
                    log.info("scheduled fault %s on %s", spec_label.fault, spec_label.reactor_id)
                if fleet.labels:
                    self.record("labels", fleet.labels_table())
                end_ts = await self._run_batch(js, fleet)
                self.record("runs", fleet.runs_table())
                self.stats.batches += 1
                batch += 1
                start = end_ts
        finally:
            await sub.unsubscribe()
            await nc.drain()
        return self.stats

    async def _run_batch(self, js: nats.js.JetStreamContext, fleet: Fleet) -> datetime:
        pending_assays: list[tuple[int, int, pa.Table]] = []  # heap of (reported_us, order, rows)
        order = 0
        ticks_per_step = fleet.remaining_ticks if self.speed is None else max(
            1, int(round(self.speed * self.step_s / fleet.dt_s)))
        ticks_per_step = min(ticks_per_step, 1440)
        t_wall = time.monotonic()
        now_us = 0
        while not fleet.done and not self.stopping.is_set():
            while not self.commands.empty():
                reactor, command = self.commands.get_nowait()
                try:
                    labels = self._apply(fleet, reactor, command)
                except ValueError as err:  # valid, but not now (e.g. no free sensor-fault slot)
                    self.stats.reject(reactor, str(err))
                    continue
                if labels:
                    self.record("labels", to_table(labels, LABELS))
            chunk = fleet.step(ticks_per_step)
            ticks = pa.Table.from_batches([chunk.ticks])
            now_us = int(ticks["ts"].cast(pa.int64()).to_numpy().max())
            step_wall_s = ticks_per_step * fleet.dt_s / self.speed if self.speed is not None else 0.0
            per_reactor = split_by_reactor(ticks)
            for k, (reactor, rows) in enumerate(per_reactor.items()):
                # each reactor at its own phase of the step, as independent plants publish: all in one instant,
                # the last reactor's message waits in the flow for all the others (bursts against staggered in
                # docs/PERFORMANCE.md)
                await asyncio.sleep(max(0.0, t_wall + step_wall_s * k / len(per_reactor) - time.monotonic()))
                await publish_ticks(js, reactor, jitter(rows, self.jitter_share, 5, self.rng),
                                    backpressure=self.backpressure)
            self.stats.ticks += ticks.num_rows
            for row in chunk.assays.to_pylist():
                heapq.heappush(pending_assays, (int(row["reported_ts"].timestamp() * 1e6), order,
                                                pa.Table.from_pylist([row], schema=chunk.assays.schema)))
                order += 1
            while pending_assays and pending_assays[0][0] <= now_us:
                _, _, rows = heapq.heappop(pending_assays)
                await publish_assays(js, rows["reactor_id"][0].as_py(), rows)
                self.stats.assays += 1
            if self.speed is not None:
                t_wall += step_wall_s
                await asyncio.sleep(max(0.0, t_wall - time.monotonic()))
            else:
                await asyncio.sleep(0)
        for _, _, rows in sorted(pending_assays):  # the lab reports what is left when the batch ends
            await publish_assays(js, rows["reactor_id"][0].as_py(), rows)
            self.stats.assays += 1
        for reactor in fleet.reactor_ids:
            await publish_watermark(js, reactor, now_us + int(self.lateness_s * 1e6) + 1)
        # the next batch starts after the turnaround (cleaning, sterilisation) and past the closing watermark
        gap_s = max(self.turnaround_h * 3600.0, self.lateness_s + fleet.dt_s)
        return datetime.fromtimestamp(now_us / 1e6 + gap_s, UTC)
