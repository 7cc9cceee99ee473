"""The plant feed as its own process, for `biopilot up` to supervise: `python -m biopilot.plant_process`, for
either plant kind (`--plant`: the bioreactor fleet's `PlantFeed` or the patient cohort's `PatientFeed`).

A restarted plant must not publish anything twice nor reuse a run: its progress file (JSON, `--progress`) says
which batch ran last (its seed and start) and whether it ended. A plant that died inside a batch leaves that
run as it was (every tick it published stays; its `runs` row says it never ended; a run that published no tick
before the kill gets no row) and the next plant starts a new batch, with the next seed, after the whole of the
dead one's time span and the turnaround: new run ids, and event times past everything published before, so
nothing is late and nothing is repeated.
"""

# ruff: noqa: E402 - the signal handlers below go in before the slow imports
from __future__ import annotations

import signal

# A stop asked for while the modules below load (seconds on a loaded machine) is kept rather than the default
# death by the signal: the plant still closes a batch the last plant process died in (whose closing watermarks
# release what the flow holds), then ends without starting one.
STOP_ASKED: list[int] = []
if __name__ == "__main__":  # the plant process itself, not a module importing this one
    for _stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_stop, lambda signum, _frame: STOP_ASKED.append(signum))

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from core.codec import decode_rows
from core.config import load_settings
from core.events import SCHEMAS
from core.plants import PLANTS
from core.services import connect_nats, write_private
from sinks import delta
from sources.patient.live import PatientFeed
from sources.patient.scenarios import PatientScenario
from sources.plant import LiveFeed, PlantFeed
from sources.publish import publish_watermark
from sources.scenarios import Scenario
from sources.telemetry import KIND_HEADER


@dataclass
class Progress:
    seed: int = 0  # the current (or next) batch's seed
    start: str = ""  # and its start, ISO-8601
    begun: bool = False  # a plant process began that batch and has not ended it
    batches_left: int | None = None  # None: no end
    batches: int = 0  # published by this `biopilot up`'s plant processes, all together
    ticks: int = 0
    assays: int = 0  # lab results
    doses: int = 0  # a patient plant's dose rows

    @classmethod
    def load(cls, path: Path) -> Progress:
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        write_private(tmp, json.dumps(asdict(self)))
        tmp.replace(path)  # whole or not at all: a kill mid-write leaves the last one

    def published(self, plant: str = "bioreactor") -> str:
        """What was published, in the plant kind's words."""
        if plant == "patient":
            return (f"{self.batches} cohort(s), {self.ticks:,} vitals rows, {self.assays} labs, {self.doses} doses "
                    "published")
        return f"{self.batches} batch(es), {self.ticks:,} ticks, {self.assays} assays published"


def prepare(path: Path, batches: int | None, now: datetime) -> None:
    """A new `biopilot up`'s plant: the batch count starts afresh, seeds and time go on from the last plant in
    this lake (a batch the last one died in is closed by the first plant process, which needs it as it was)."""
    last = Progress.load(path)
    start = last.start if last.begun else max(now, datetime.fromisoformat(last.start) if last.start else now).isoformat()
    left = None if batches is None else batches + (1 if last.begun else 0)
    Progress(seed=last.seed, start=start, begun=last.begun, batches_left=left).save(path)


class Supervised(LiveFeed):
    """A live feed (mixed in before a plant kind's: `SupervisedPlant`, `SupervisedPatients`), writing its
    progress at the start and end of every batch and what it records to the lake."""

    def __init__(self, progress: Progress, progress_path: Path, lake: str, *args: object, **kwargs: object) -> None:
        self.progress, self.progress_path, self.lake = progress, progress_path, lake
        # published by the plant processes before this one
        self.counted = (progress.batches, progress.ticks, progress.assays, progress.doses)
        super().__init__(*args, seed=progress.seed, start=datetime.fromisoformat(progress.start),
                         max_batches=progress.batches_left, record=self._record, **kwargs)

    def _new_sim(self, batch: int, start: datetime) -> object:
        sim = super()._new_sim(batch, start)
        self.progress.seed, self.progress.start, self.progress.begun = self.seed + batch, start.isoformat(), True
        self.save()
        return sim

    def _record(self, name: str, rows: pa.Table) -> None:
        delta.append(self.lake, name, rows, SCHEMAS[name])
        if name == "runs":  # a batch ended; until the next begins, the earliest it may start
            self.progress.seed += 1
            self.progress.start = self.after(datetime.fromisoformat(self.progress.start)).isoformat()
            self.progress.begun = False
            if self.progress.batches_left is not None:
                self.progress.batches_left -= 1
            self.save()

    def after(self, start: datetime) -> datetime:
        """When a batch begun at `start` is surely over and turned around, however far it got."""
        return start + timedelta(days=self.scenario.days, hours=self.turnaround_h, seconds=self.lateness_s)

    async def close_interrupted(self) -> None:
        """The batch a plant process died in: the `runs` rows (not ended) of its runs that published a tick, and
        their closing watermarks, if it has none yet; and the next batch after it. A run that published nothing
        (the kill came between the batch's start and its unit's first message) gets no row: the broker says
        which did."""
        start = datetime.fromisoformat(self.progress.start)
        sim = super()._new_sim(0, start)  # the same runs, rebuilt
        known = delta.read(self.lake, "runs", columns=["run_id"], run_ids=sim.run_ids)
        if known is None or known.num_rows == 0:
            nc = await connect_nats(self.nats_url, connect_timeout=5)
            try:
                js, since_us = nc.jetstream(), int(start.timestamp() * 1e6)
                published = []
                for unit, run in zip(sim.unit_ids, sim.run_ids, strict=True):
                    last_us = await last_event_us(js, unit)
                    if last_us is not None and last_us >= since_us:
                        published.append(run)
                        # its closing watermark, as a batch's end publishes it: the flow releases the ticks it
                        # holds for lateness now, not when (if ever) this unit's next batch comes
                        await publish_watermark(js, unit, last_us + int(self.lateness_s * 1e6) + 1)
            finally:
                await nc.close()
            rows = sim.runs_table(ended=False)
            rows = rows.filter(pc.is_in(rows["run_id"], pa.array(published, pa.string())))
            if rows.num_rows:
                delta.append(self.lake, "runs", rows, SCHEMAS["runs"])
            print(f"plant: {len(published)} of the batch's {len(sim.run_ids)} runs had published", flush=True)
        self.progress.seed += 1
        self.progress.start = self.after(datetime.fromisoformat(self.progress.start)).isoformat()
        self.progress.begun = False
        if self.progress.batches_left is not None:
            self.progress.batches_left -= 1
        self.seed, self.start, self.max_batches = self.progress.seed, datetime.fromisoformat(self.progress.start), \
            self.progress.batches_left
        self.save()

    def save(self) -> None:
        batches, ticks, assays, doses = self.counted
        self.progress.batches, self.progress.ticks = batches + self.stats.batches, ticks + self.stats.ticks
        self.progress.assays, self.progress.doses = assays + self.stats.assays, doses + self.stats.doses
        self.progress.save(self.progress_path)


async def last_event_us(js: JetStreamContext, unit: str) -> int | None:
    """The event time of the last message on `unit`'s telemetry subject (under whichever partition the stream
    stores it): its ticks' latest, or its watermark's; None if it has none. From a batch's start on, it is that
    batch's: an earlier batch's messages are all before, the next batch starts past its closing watermark."""
    found = []
    for subject in (f"biopilot.telemetry.{unit}", f"biopilot.telemetry.{unit}.*"):
        with contextlib.suppress(NotFoundError):
            found.append(await js.get_last_msg("TELEMETRY", subject))
    if not found:
        return None
    last = max(found, key=lambda msg: msg.seq)
    if (last.headers or {}).get(KIND_HEADER) == "watermark":
        return round(json.loads(last.data)["ts"] * 1e6)
    return pc.max(decode_rows(last.data)["ts"].cast(pa.int64())).as_py()


class SupervisedPlant(Supervised, PlantFeed):
    """The bioreactor fleet, supervised."""


class SupervisedPatients(Supervised, PatientFeed):
    """The patient cohort, supervised."""


# per plant kind: the supervised feed and its scenario model
FEEDS: dict[str, tuple[type[Supervised], type[BaseModel]]] = {
    "bioreactor": (SupervisedPlant, Scenario), "patient": (SupervisedPatients, PatientScenario)}


async def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    if not settings.nats_url:
        print("plant: BIOPILOT_NATS_URL is not set", file=sys.stderr)
        return 2
    path = Path(args.progress)
    progress = Progress.load(path)
    feed_class, scenario_model = FEEDS[args.plant]
    feed = feed_class(progress, path, args.lake, settings.nats_url,
                      scenario_model.model_validate_json(Path(args.scenario_json).read_text()), args.units,
                      speed=None if args.speed == "max" else float(args.speed), jitter_share=args.jitter,
                      lateness_s=args.lateness_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the closing below: a stop then publishes nothing
        loop.add_signal_handler(sig, feed.interrupt)
    if STOP_ASKED:
        feed.interrupt()
    if progress.begun:
        print(f"plant: the last plant process died in batch {progress.seed}; starting batch {progress.seed + 1}",
              flush=True)
        await feed.close_interrupted()
    if progress.batches_left is not None and progress.batches_left <= 0:
        return 0

    async def keep_counts() -> None:  # what was published, for `up` to report however this process ends
        while True:
            await asyncio.sleep(1.0)
            feed.save()

    counting = asyncio.create_task(keep_counts())
    try:
        stats = await feed.run()
    finally:
        counting.cancel()
        feed.save()
    mine = Progress(batches=stats.batches, ticks=stats.ticks, assays=stats.assays, doses=stats.doses)
    print(f"plant: {mine.published(args.plant)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biopilot.plant_process", description=__doc__.split("\n")[0])
    parser.add_argument("--progress", required=True, help="the progress file (JSON), made by `prepare`")
    parser.add_argument("--scenario-json", required=True, help="the scenario, as Scenario.model_dump_json wrote it")
    parser.add_argument("--lake", required=True)
    parser.add_argument("--plant", choices=sorted(PLANTS), default="bioreactor")
    parser.add_argument("--units", "--reactors", "--patients", dest="units", type=int, default=4,
                        help="reactors or patients")
    parser.add_argument("--speed", default="600", help="a factor, or max")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--lateness-s", type=float, default=300.0)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
