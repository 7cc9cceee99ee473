"""`biopilot bench predict`: the risk serving path (`outcomes.serving`) over a real redis-server and the shipped
outcome model, with `patients` live patients whose data keeps arriving.

The patients are simulated (`warfarin_standard`, 5-min vitals) for `days` days; the last `held_back_h` hours are
held back and arrive during the bench, an hour of a patient at a time, each arrival noted in the cache as the
dashboard's relay does (`RiskCache.note_data`). Records come from memory (the live data as it has arrived), so
`miss_*` are the cache's and the model's figures. The API's own miss path (`api_miss_*`) reads
`serving.RecordStore`, fed with each arriving hour as the relay feeds it, over a Delta lake of the data arrived
before the bench (the vitals in time-ordered files as the live lake holds them): a patient's first request
reads the lake (`api_cold_miss_*`, `lake_misses` of them). `lake_record_*`: the lake read alone, the vitals
bounded by what has arrived (as served) and not.

- batched: every patient scored in batches of `batch` (records, one forward pass, the cache writes):
  `predictions_per_s`; the model's forward pass alone: `model_predictions_per_s`.
- hits: `reads` requests of patients whose data has not changed since their last answer.
- misses: `misses` requests, each right after an hour of that patient's data arrived.
- stale: `rounds` operations by `readers` concurrent readers while a writer delivers hours of data; every answer's
  data watermark is checked against the patient's data that had arrived when its request began: an older one
  is stale (`stale_served`, the target 0).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.events import DOSES, LABS, VITALS
from core.services import redis_client, start_redis
from outcomes.contract import PatientRecord
from outcomes.features import WINDOW_H
from outcomes.serving import (
    Fixed,
    RecordStore,
    RiskCache,
    RiskService,
    Seen,
    lake_records,
    read_lake_records,
    to_us,
)
from sinks import delta
from sources.patient.cohort_sim import PatientCohortSim
from sources.patient.scenarios import load_patient_scenario

US_PER_H = 3_600_000_000
LAKE_FILE_H = 6.0  # the bench lake's vitals: a file per 6 hours, in time order


def _us(column: pa.ChunkedArray) -> np.ndarray:
    return column.cast(pa.int64()).to_numpy()


@dataclass
class Timeline:
    """One patient's simulated data and how much of it has arrived (up to `now_us`)."""

    patient: dict
    vitals: pa.Table
    labs: pa.Table
    doses: pa.Table
    now_us: int

    def __post_init__(self) -> None:
        self.vitals_us, self.labs_us, self.doses_us = (_us(self.vitals["ts"]), _us(self.labs["reported_ts"]),
                                                       _us(self.doses["ts"]))

    def _arrived(self, times: np.ndarray) -> int:
        return int(np.searchsorted(times, self.now_us, side="right"))

    def watermark_us(self) -> int:
        """The newest event time arrived (what a correct answer's data watermark is)."""
        return max(int(t[n - 1]) for t in (self.vitals_us, self.labs_us, self.doses_us) if (n := self._arrived(t)))

    def record(self) -> PatientRecord:
        n = self._arrived(self.vitals_us)
        first = int(np.searchsorted(self.vitals_us, self.now_us - WINDOW_H * US_PER_H, side="left"))
        labs = self.labs.slice(0, self._arrived(self.labs_us)).sort_by("sample_ts")
        as_of = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=self.watermark_us())
        return PatientRecord(self.patient, self.vitals.slice(first, n - first), labs,
                             self.doses.slice(0, self._arrived(self.doses_us)), as_of)

    def watermark_after(self, hours: float) -> int:
        """The watermark once the next `hours` of data have arrived."""
        now_us = self.now_us
        self.now_us += int(hours * US_PER_H)
        try:
            return self.watermark_us()
        finally:
            self.now_us = now_us

    def advance(self, hours: float) -> None:
        self.now_us += int(hours * US_PER_H)

    def arriving(self, hours: float) -> dict[str, pa.Table]:
        """kind -> the rows that arrive in the next `hours` (as the relay hands them to the record store)."""
        end_us = self.now_us + int(hours * US_PER_H)
        out = {}
        for kind, table, times in (("vitals", self.vitals, self.vitals_us), ("labs", self.labs, self.labs_us),
                                   ("doses", self.doses, self.doses_us)):
            first, end = np.searchsorted(times, [self.now_us, end_us], side="right")
            out[kind] = table.slice(first, end - first)
        return out


def simulate(patients: int, days: float, held_back_h: float, seed: int) -> tuple[dict[str, Timeline], dict]:
    """`patients` timelines with all but the last `held_back_h` hours arrived, and the tables they came from."""
    scenario = load_patient_scenario("warfarin_standard").with_overrides(days=days)
    sim = PatientCohortSim(scenario, patients, seed=seed)
    chunk = sim.step(sim.remaining_ticks)
    tables = {"patients": sim.patients_table(), "vitals": pa.Table.from_batches([chunk.vitals]),
              "labs": chunk.labs, "doses": chunk.doses}
    now_us = to_us(scenario.start) + int((days * 24 - held_back_h) * US_PER_H)
    parts = {name: _by_patient(t) for name, t in tables.items() if name != "patients"}
    timelines = {}
    for row in tables["patients"].to_pylist():
        p = row["patient_id"]
        timelines[p] = Timeline(row, parts["vitals"][p].sort_by("ts"), parts["labs"].get(p, LABS.empty_table())
                                .sort_by("reported_ts"), parts["doses"].get(p, DOSES.empty_table()).sort_by("ts"),
                                now_us)
    return timelines, tables


def _by_patient(table: pa.Table) -> dict[str, pa.Table]:
    table = table.sort_by("patient_id")
    ids = table["patient_id"].to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    return {ids[a]: table.slice(a, b - a) for a, b in zip(starts, ends, strict=True)}


def _ms(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


async def _api_misses(timelines: dict[str, Timeline], cache: RiskCache, model: object, lake: str, misses: int,
                      cold: int, rng: random.Random, say: Callable[[str], None]) -> dict:
    """The API's miss path (`serving.RecordStore` over the lake, as dashboard/routers/risk.py serves): `cold`
    first requests of a patient (their record read from the lake), then `misses` requests each right after an
    hour of the patient's data arrived (handed to the store, then noted in the cache, as the relay does)."""
    store = RecordStore()
    lake_reads = [0]  # patients whose record was read from the lake

    async def from_lake(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
        lake_reads[0] += len(patient_ids)
        return await read_lake_records(lake, patient_ids, seen)

    async def records(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
        return await store.read(patient_ids, seen, from_lake)

    service = RiskService(Fixed(model), cache, records)
    chosen = rng.sample(sorted(timelines), k=min(misses, len(timelines)))
    say(f"API misses: {min(cold, len(chosen))} first requests (the lake), then {len(chosen)} after new data")
    cold_s = []
    for p in chosen[:cold]:
        t = time.perf_counter()
        await service.compute([p])
        cold_s.append(time.perf_counter() - t)
    await store.read(chosen[cold:], await cache.seen(chosen[cold:]), from_lake)  # the rest joined in one read
    miss_s, cached, stale, joined = [], 0, 0, lake_reads[0]
    for p in chosen:
        arrived_us = timelines[p].watermark_after(1.0)
        for kind, rows in timelines[p].arriving(1.0).items():
            store.add(kind, rows)
        await cache.note_data({p: arrived_us})
        timelines[p].advance(1.0)
        t = time.perf_counter()
        answer = await service.risk(p)
        miss_s.append(time.perf_counter() - t)
        cached += answer["cached"]
        stale += to_us(datetime.fromisoformat(answer["data_watermark"])) < arrived_us
    return ({f"api_miss_{k}": v for k, v in _ms(miss_s).items()} |
            {f"api_cold_miss_{k}": v for k, v in _ms(cold_s).items()} |
            {"api_cached_after_new_data": cached, "api_stale_served": stale,
             "api_misses_from_lake": lake_reads[0] - joined})


async def _bench(timelines: dict[str, Timeline], redis_url: str, model: object, batch: int, reads: int,
                 misses: int, rounds: int, readers: int, rng: random.Random, say: Callable[[str], None],
                 lake: str | None = None, lake_misses: int = 0) -> dict:
    redis = redis_client(redis_url)
    cache = RiskCache(redis)
    ids = sorted(timelines)

    async def records(patient_ids: Sequence[str], _seen: Sequence[Seen]) -> dict[str, PatientRecord]:
        return {p: timelines[p].record() for p in patient_ids if p in timelines}

    service = RiskService(Fixed(model), cache, records)
    await cache.note_data({p: t.watermark_us() for p, t in timelines.items()})  # what had arrived before
    await service.risk_many(ids[:batch], use_cache=False)  # warm-up: the first forward passes are slower
    out: dict[str, float | int] = {}

    say(f"batched: {len(ids)} patients in batches of {batch}")
    t = time.perf_counter()
    for k in range(0, len(ids), batch):
        await service.compute(ids[k:k + batch])
    out["predictions_per_s"] = round(len(ids) / (time.perf_counter() - t), 1)
    recs = [timelines[p].record() for p in ids[:batch]]
    t = time.perf_counter()
    model.predict(recs)
    out["model_predictions_per_s"] = round(len(recs) / (time.perf_counter() - t), 1)

    say(f"hits: {reads} requests")
    hit_s, not_hit = [], 0
    for p in rng.choices(ids, k=reads):
        t = time.perf_counter()
        answer = await service.risk(p)
        hit_s.append(time.perf_counter() - t)
        not_hit += not answer["cached"]
    out |= {f"hit_{k}": v for k, v in _ms(hit_s).items()} | {"hit_requests_not_cached": not_hit}

    if lake:
        out |= await _api_misses(timelines, cache, model, lake, misses, lake_misses, rng, say)

    say(f"misses: {misses} requests, each after an hour of new data")
    miss_s, hit_after_data = [], 0
    for p in rng.sample(ids, k=min(misses, len(ids))):
        await cache.note_data({p: timelines[p].watermark_after(1.0)})
        timelines[p].advance(1.0)
        t = time.perf_counter()
        answer = await service.risk(p)
        miss_s.append(time.perf_counter() - t)
        hit_after_data += answer["cached"]
    out |= {f"miss_{k}": v for k, v in _ms(miss_s).items()} | {"cached_after_new_data": hit_after_data}

    say(f"stale check: {rounds} requests by {readers} readers while data arrives")
    counts = {"stale_served": 0, "served": 0, "served_cached": 0, "arrivals": 0}
    done = asyncio.Event()

    async def reader(n: int) -> None:
        for _ in range(n):
            p = rng.choice(ids)
            arrived_us = timelines[p].watermark_us()  # what had arrived when the request began
            answer = await service.risk(p)
            served_us = to_us(datetime.fromisoformat(answer["data_watermark"]))
            counts["stale_served"] += served_us < arrived_us
            counts["served"] += 1
            counts["served_cached"] += answer["cached"]

    async def writer() -> None:
        while not done.is_set():
            p = rng.choice(ids)
            # as live: the relay notes the data on NATS before the lake (here: memory) has it
            await cache.note_data({p: timelines[p].watermark_after(1.0)})
            await asyncio.sleep(0.001)
            timelines[p].advance(1.0)
            counts["arrivals"] += 1
            await asyncio.sleep(0.002)

    writing = asyncio.create_task(writer())
    await asyncio.gather(*(reader(rounds // readers) for _ in range(readers)))
    done.set()
    await writing
    out |= counts
    await redis.aclose()
    return out


def write_lake(tables: dict, until_us: int, file_h: float = LAKE_FILE_H) -> str:
    """A Delta lake of every patient's data that has arrived by `until_us` (labs by their report), the vitals
    written in time order, a file per `file_h` hours (the live lake: the flow's micro-batches, compacted)."""
    lake = tempfile.mkdtemp(prefix="bench-predict-lake-")
    vitals = tables["vitals"].sort_by("ts")
    ts_us = _us(vitals["ts"])
    edges = np.arange(ts_us[0], until_us + int(file_h * US_PER_H), int(file_h * US_PER_H))
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        first, end = np.searchsorted(ts_us, [a, min(b, until_us + 1)])
        if end > first:
            delta.append(lake, "vitals", vitals.slice(first, end - first), VITALS)
    for name, schema, column in (("labs", LABS, "reported_ts"), ("doses", DOSES, "ts")):
        arrived = tables[name].filter(pa.array(_us(tables[name][column]) <= until_us))
        delta.append(lake, name, arrived, schema)
    delta.append(lake, "patients", tables["patients"], tables["patients"].schema)
    return lake


def lake_miss_seconds(lake: str, tables: dict, timelines: dict[str, Timeline], n: int, rng: random.Random,
                      ) -> dict[str, list[float]]:
    """The lake's record read alone: `n` patients' records from the bench lake (`write_lake`), each with its
    vitals bounded by what has arrived (as `read_lake_records` does: "bounded") and without."""
    runs = dict(zip(tables["patients"]["patient_id"].to_pylist(), tables["patients"]["run_id"].to_pylist(),
                    strict=True))
    newest = delta.read(lake, "vitals", columns=["ts"])["ts"]
    newest = pc.max(newest).as_py()
    seconds: dict[str, list[float]] = {"bounded": [], "unbounded": []}
    for p in rng.sample(sorted(timelines), k=min(n, len(timelines))):
        for how, since in (("bounded", newest - timedelta(hours=WINDOW_H + 1)), ("unbounded", None)):
            t = time.perf_counter()
            lake_records(lake, {p: runs[p]}, vitals_since=since)
            seconds[how].append(time.perf_counter() - t)
    return seconds


def run(patients: int = 1000, days: float = 10.0, held_back_h: float = 48.0, batch: int = 250, reads: int = 2000,
        misses: int = 300, rounds: int = 4000, readers: int = 8, lake_misses: int = 50, seed: int = 0,
        model_path: str | None = None, say: Callable[[str], None] = lambda _: None) -> dict:
    """The figures (module docstring); `model_path`: a checkpoint (default the shipped one)."""
    import torch

    from outcomes.model import load_model

    torch.set_num_threads(1)  # as the dashboard and the risk worker serve (`serving.Champion`)

    rng = random.Random(seed)
    say(f"simulating {patients} patients x {days:g} days")
    t = time.perf_counter()
    timelines, tables = simulate(patients, days, held_back_h, seed)
    simulate_s = time.perf_counter() - t
    model = load_model(Path(model_path) if model_path else None)
    root = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    server = start_redis(root / "redis")
    lake = None
    try:
        if lake_misses:
            say(f"writing a Delta lake of {patients} patients' arrived data")
            lake = write_lake(tables, next(iter(timelines.values())).now_us)
        out = asyncio.run(_bench(timelines, server.url, model, batch, reads, misses, rounds, readers, rng, say,
                                 lake, lake_misses))
        if lake:
            say(f"lake reads: {lake_misses} records")
            for how, seconds in lake_miss_seconds(lake, tables, timelines, lake_misses, rng).items():
                out |= {f"lake_record_{how}_{k}": v for k, v in _ms(seconds).items()}
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
        if lake:
            shutil.rmtree(lake, ignore_errors=True)
    vitals_rows = tables["vitals"].num_rows
    return {"patients": patients, "days": days, "vitals_rows": vitals_rows, "model_version": model.version,
            "simulate_s": round(simulate_s, 1), "batch": batch, "readers": readers} | out
