"""The continuous plant feed: N reactors run batch after batch at a speed factor and stream to NATS.

`LiveFeed` is what any plant kind's live feed shares (batches of units, pacing, backpressure, late lab results,
commands and their rejection, labels); `PlantFeed` is the bioreactor's, `sources.patient.live.PatientFeed` the
patient cohort's.

Ticks go to `biopilot.telemetry.<reactor>` as Arrow IPC, assays to `biopilot.assays.<reactor>` when their lab
result is reported (`reported_ts`, late as in a real lab). Commands on `biopilot.control.<reactor>` change the
running process between steps:

    {"type": "setpoint", "name": "do_setpoint_pct", "value": 50, "changed_by": "operator@plant"}
    {"type": "feed", "volume_ml": 30}                   # changed_by is optional
    {"type": "fault", "fault": "overfeed", "duration_h": 3, "magnitude": 2, "signal": null}
    {"type": "stop"}                       # stop the whole feed (sent to one of its reactors)

Each command is validated with the dashboard's own models (`sources.commands`); one that is not valid (not
JSON, an unknown field, a number out of range, NaN, or a reactor this plant does not run) is logged, counted in
`PlantStats.rejected_commands` and dropped. An injected fault starts now and writes its label row. The bioreactor plant publishes each run's recipe
(`detectors.recipe`'s JSON in a `RECIPES` row) on `biopilot.assays.<reactor>` with header `BioPilot-Kind: recipe`
when the run starts and after each command that changes it (a setpoint, a feed bolus), before the ticks that
follow it, so the monitor re-bases its reference from that moment.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nats
import numpy as np
import pyarrow as pa

from core.events import LABELS, RECIPES, to_table
from core.plants import PLANTS, PlantVocabulary
from core.services import FLOW_DURABLE, connect_nats
from sources.backpressure import Backpressure
from sources.commands import Command, CommandError, ReplayCommand, parse_command
from sources.fleet import Fleet, run_id_for
from sources.publish import publish_assays, publish_ticks, publish_watermark, split_by_reactor
from sources.recipe import BOLUS, Recipe
from sources.scenarios import Scenario

log = logging.getLogger(__name__)


@dataclass
class PlantStats:
    batches: int = 0
    ticks: int = 0
    assays: int = 0  # lab results (a patient's labs)
    doses: int = 0  # a patient's dose rows
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


def timed_rows(table: pa.Table, ts_column: str) -> Iterator[tuple[int, pa.Table]]:
    """(event time in us of `ts_column`, the one-row table) of each row: what is published when its time comes."""
    due = table[ts_column].cast(pa.int64()).to_numpy()
    for i in range(table.num_rows):
        yield int(due[i]), table.slice(i, 1)


class LiveFeed:
    """N units of one plant kind running batch after batch: the simulator of a batch (`_new_sim`) has
    `unit_ids`, `run_ids`, `labels`, `dt_s`, `remaining_ticks`, `done`, `step(n)` and `runs_table(ended)`; a kind
    says what a chunk publishes (`_ticks`, `_timed`), which commands it takes (`_parse`, `_control`) and which
    tables a batch writes when it begins (`_begin_tables`)."""

    vocabulary: PlantVocabulary = PLANTS["bioreactor"]

    def __init__(self, nats_url: str, scenario: object, units: int, speed: float | None = 600.0, seed: int = 0,
                 jitter_share: float = 0.0, step_s: float = 0.5, lateness_s: float = 300.0,
                 max_batches: int | None = None, start: datetime | None = None, turnaround_h: float = 12.0,
                 record: Callable[[str, pa.Table], None] | None = None, flow_durable: str = FLOW_DURABLE) -> None:
        """`record(table_name, rows)` stores the rows the plant writes itself (`labels`, `runs`...: the caller's
        lake writer)."""
        if speed is not None and speed <= 0:
            raise ValueError("speed must be > 0 (or None for as fast as possible)")
        self.nats_url, self.scenario = nats_url, scenario
        self.record = record or (lambda name, rows: None)
        self.units, self.speed, self.seed = units, speed, seed
        self.jitter_share, self.step_s, self.lateness_s = jitter_share, step_s, lateness_s
        self.max_batches = max_batches
        self.turnaround_h = turnaround_h
        self.start = start or datetime.now(UTC).replace(microsecond=0)
        self.stats = PlantStats()
        self.stopping = asyncio.Event()
        self.interrupted = False
        self.commands: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        self.unit_ids: list[str] = []  # the running batch's, set before the first command can arrive
        self.labels_recorded = 0  # of the running batch's `labels`
        self.rng = np.random.default_rng(seed)
        self.backpressure = Backpressure(None, flow_durable)  # connected by `run`

    def interrupt(self) -> None:
        """Ctrl-C: stop at the next step."""
        self.interrupted = True
        self.stopping.set()
        self.backpressure.release()

    # ---- what a plant kind says -----------------------------------------------------------------------
    def _new_sim(self, batch: int, start: datetime) -> object:
        raise NotImplementedError

    def _parse(self, data: bytes) -> object:
        """A command from the broker, validated (`CommandError`: one line)."""
        raise NotImplementedError

    def _control(self, sim: object, unit: str, command: object) -> None:
        """Apply a validated command other than stop (`ValueError`: valid, but not now)."""
        raise NotImplementedError

    def _ticks(self, chunk: object) -> pa.Table:
        raise NotImplementedError

    def _timed(self, chunk: object) -> Iterator[tuple[int, str | None, pa.Table]]:
        """(when to publish it in event-time us, its kind header or None for lab results, one unit's rows)."""
        raise NotImplementedError

    def _begin_tables(self, sim: object) -> list[tuple[str, pa.Table]]:
        """Tables a batch writes when it begins, before its labels."""
        return []

    def _announcements(self) -> list[tuple[str, str, pa.Table]]:
        """(unit, kind header, rows) to publish on `biopilot.assays.<unit>` now, before the next ticks: taken
        from what the kind queued at a batch's start or a command."""
        return []

    # ---- commands -------------------------------------------------------------------------------------
    async def _on_control(self, msg: nats.aio.msg.Msg) -> None:
        unit = msg.subject.rsplit(".", 1)[-1]
        try:
            command = self._parse(msg.data)
        except CommandError as err:
            self.stats.reject(unit, str(err))
            return
        if isinstance(command, ReplayCommand):
            return  # for a replay on the same subjects; the live plant does not pause
        if unit not in self.unit_ids:
            # a stop sent to any id (a replay's, a typo) would otherwise stop every unit of the plant
            known = ", ".join(self.unit_ids[:10]) + (", ..." if len(self.unit_ids) > 10 else "")
            self.stats.reject(unit, f"unknown {self.vocabulary.unit}; this plant runs {known}")
            return
        if command.type == "stop":
            self.backpressure.release()  # a step held for the flow would apply the stop only once it caught up
        await self.commands.put((unit, command))

    def _apply(self, sim: object, unit: str, command: object) -> None:
        """A validated command for one of this batch's units."""
        self.stats.commands += 1
        if command.type == "stop":
            self.stopping.set()
            return
        self._control(sim, unit, command)

    def _record_labels(self, sim: object) -> None:
        """The batch's labels not yet recorded: planned ones at its start, injected ones, those found while it
        runs (a patient's INR episodes)."""
        new = sim.labels[self.labels_recorded:]
        if new:
            for label in new:
                log.info("label %s on %s", label.fault, label.reactor_id)
            self.record("labels", to_table(new, LABELS))
            self.labels_recorded = len(sim.labels)

    # ---- main loop ------------------------------------------------------------------------------------
    async def run(self) -> PlantStats:
        nc = await connect_nats(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream()
        self.backpressure.js = js
        sub = await nc.subscribe("biopilot.control.*", cb=self._on_control)
        try:
            start = self.start
            batch = 0
            while not self.stopping.is_set() and (self.max_batches is None or batch < self.max_batches):
                sim = self._new_sim(batch, start)
                self.unit_ids, self.labels_recorded = list(sim.unit_ids), 0
                for name, rows in self._begin_tables(sim):
                    self.record(name, rows)
                self._record_labels(sim)
                end_ts = await self._run_batch(js, sim)
                self.record("runs", sim.runs_table())
                self.stats.batches += 1
                batch += 1
                start = end_ts
        finally:
            await sub.unsubscribe()
            await nc.drain()
        return self.stats

    async def _publish_timed(self, js: nats.js.JetStreamContext, kind: str | None, rows: pa.Table) -> None:
        await publish_assays(js, rows[self.vocabulary.unit_column][0].as_py(), rows, kind)
        if kind == "doses":
            self.stats.doses += 1
        else:
            self.stats.assays += 1

    async def _run_batch(self, js: nats.js.JetStreamContext, sim: object) -> datetime:
        pending: list[tuple[int, int, str | None, pa.Table]] = []  # heap of (due_us, order, kind, rows)
        order = 0
        ticks_per_step = sim.remaining_ticks if self.speed is None else max(
            1, int(round(self.speed * self.step_s / sim.dt_s)))
        ticks_per_step = min(ticks_per_step, 1440)
        t_wall = time.monotonic()
        now_us = 0
        while not sim.done and not self.stopping.is_set():
            while not self.commands.empty():
                unit, command = self.commands.get_nowait()
                try:
                    self._apply(sim, unit, command)
                except ValueError as err:  # valid, but not now (e.g. no free sensor-fault slot)
                    self.stats.reject(unit, str(err))
                    continue
                self._record_labels(sim)
            for unit, kind, rows in self._announcements():
                await publish_assays(js, unit, rows, kind)
            chunk = sim.step(ticks_per_step)
            ticks = self._ticks(chunk)
            now_us = int(ticks["ts"].cast(pa.int64()).to_numpy().max())
            step_wall_s = ticks_per_step * sim.dt_s / self.speed if self.speed is not None else 0.0
            per_unit = split_by_reactor(ticks, self.vocabulary.unit_column)
            for k, (unit, rows) in enumerate(per_unit.items()):
                # each unit at its own phase of the step, as independent plants publish: all in one instant,
                # the last unit's message waits in the flow for all the others (bursts against staggered in
                # docs/PERFORMANCE.md)
                await asyncio.sleep(max(0.0, t_wall + step_wall_s * k / len(per_unit) - time.monotonic()))
                await publish_ticks(js, unit, jitter(rows, self.jitter_share, 5, self.rng),
                                    backpressure=self.backpressure)
            self.stats.ticks += ticks.num_rows
            for due_us, kind, rows in self._timed(chunk):
                heapq.heappush(pending, (due_us, order, kind, rows))
                order += 1
            while pending and pending[0][0] <= now_us:
                _, _, kind, rows = heapq.heappop(pending)
                await self._publish_timed(js, kind, rows)
            self._record_labels(sim)
            if self.speed is not None:
                t_wall += step_wall_s
                await asyncio.sleep(max(0.0, t_wall - time.monotonic()))
            else:
                await asyncio.sleep(0)
        for _, _, kind, rows in sorted(pending, key=lambda p: p[:2]):  # the lab reports what is left at the end
            await self._publish_timed(js, kind, rows)
        for unit in sim.unit_ids:
            await publish_watermark(js, unit, now_us + int(self.lateness_s * 1e6) + 1)
        # the next batch starts after the turnaround (cleaning, sterilisation) and past the closing watermark
        gap_s = max(self.turnaround_h * 3600.0, self.lateness_s + sim.dt_s)
        return datetime.fromtimestamp(now_us / 1e6 + gap_s, UTC)


class PlantFeed(LiveFeed):
    """The bioreactor fleet, live: commands as `sources.commands` validates them."""

    def __init__(self, nats_url: str, scenario: Scenario, reactors: int = 4, **kwargs: object) -> None:
        super().__init__(nats_url, scenario, reactors, **kwargs)
        self.recipes: list[Recipe] = []  # each reactor's, as now changed
        self.queued: list[tuple[str, str, pa.Table]] = []

    def _new_sim(self, batch: int, start: datetime) -> Fleet:
        scenario = self.scenario.with_overrides(start=start)
        seed = self.seed + batch
        ids = [run_id_for(scenario, seed, i) for i in range(self.units)]
        fleet = Fleet(scenario, self.units, seed=seed, run_ids=ids)
        self.recipes = [Recipe.from_scenario(scenario)] * self.units
        for k in range(self.units):
            self._queue_recipe(fleet, k, None)
        return fleet

    def _queue_recipe(self, fleet: Fleet, k: int, changed_by: str | None) -> None:
        started = fleet.started[k]
        row = {"run_id": fleet.run_ids[k], "reactor_id": fleet.reactor_ids[k],
               "ts": started + timedelta(hours=float(fleet.t_h[k])), "recipe_hash": self.recipes[k].hash,
               "recipe_json": self.recipes[k].to_json(), "run_start_ts": started, "changed_by": changed_by}
        self.queued.append((fleet.reactor_ids[k], "recipe", pa.Table.from_pylist([row], schema=RECIPES)))

    def _announcements(self) -> list[tuple[str, str, pa.Table]]:
        queued, self.queued = self.queued, []
        return queued

    def _parse(self, data: bytes) -> Command:
        return parse_command(data)

    def _control(self, fleet: Fleet, reactor: str, command: Command) -> None:
        k = fleet.reactor_ids.index(reactor)
        if command.type == "setpoint":
            fleet.set_control(k, command.name, command.value)
            self.recipes[k] = self.recipes[k].changed_at(float(fleet.t_h[k]), command.name, command.value)
            self._queue_recipe(fleet, k, command.changed_by)
        elif command.type == "feed":
            fleet.add_bolus(k, command.volume_ml)
            self.recipes[k] = self.recipes[k].changed_at(float(fleet.t_h[k]), BOLUS, command.volume_ml)
            self._queue_recipe(fleet, k, command.changed_by)
        elif command.type == "fault":
            fleet.inject_fault(k, command.fault, float(fleet.t_h[k]), command.duration_h, command.magnitude,
                               command.signal)

    def _ticks(self, chunk: object) -> pa.Table:
        return pa.Table.from_batches([chunk.ticks])

    def _timed(self, chunk: object) -> Iterator[tuple[int, str | None, pa.Table]]:
        for due_us, rows in timed_rows(chunk.assays, "reported_ts"):
            yield due_us, None, rows
