"""Serving the outcome model: a patient's record from the lake, its data watermark, and the risk cache in Redis
(docs/OUTCOMES.md, "Serving").

A record (`contract.PatientRecord`) is the patient's `patients` row, the vitals of the model's window
(`features.WINDOW_H` hours) and all their labs and doses in the lake (the days on warfarin, the INR history);
its data watermark is the latest event time in it (a vital's or dose's `ts`, a lab's `reported_ts`: a lab is
data once reported).

The cache keeps one answer per patient, model version and data watermark (`ANSWER_KEY`, `ANSWER_TTL_S`). Whoever
sees a patient's data arrive (the dashboard's relay, from NATS, before the flow writes it to the lake) calls
`RiskCache.note_data`, which raises the patient's seen watermark and bumps their data version (`SEEN_KEY`). A
lookup reads both and takes the answer stored under the seen watermark only if it was computed at the current
data version, in one round trip (a Lua script): an answer is never older than the data that has arrived. An
answer is stored only if no data arrived while it was computed and its record is not behind the seen watermark
(the lake lags NATS by the flow's flush): until the lake has caught up, each request computes afresh and says
how far its data is behind (`data_behind_s`).

Limit: a row that arrives out of order (event time below the seen watermark) bumps the version; an answer
computed after that bump from a lake not yet holding the row would be stored as current. The flow's lateness
bound (`lateness_s`) keeps such rows within minutes of the watermark.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from core.events import DOSES, LABS, PATIENTS, VITALS
from outcomes.contract import PatientRecord, Predictor, RiskPrediction
from outcomes.features import WINDOW_H
from sinks import delta

SEEN_KEY = "biopilot:risk:seen:{patient}"  # hash: watermark_us (newest event time arrived), version (arrivals)
ANSWER_KEY = "biopilot:risk:answer:{patient}:{model}:{watermark_us}"
ANSWER_TTL_S = 3600  # an answer nobody asks for again leaves within the hour
SEEN_TTL_S = 7 * 86400  # refreshed at every arrival: a patient gone for a week is forgotten
US = 1_000_000
CHAMPION_CHECK_S = 30.0  # how soon a promoted model version is served

# KEYS: seen; ARGV: newest event time us, seen ttl s. The seen watermark only rises; the version counts arrivals.
_NOTE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'watermark_us') or '-1')
if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'watermark_us', ARGV[1]) end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# KEYS: seen; ARGV: answer key prefix. {watermark, version, the answer under the seen watermark if computed at
# the current version}; {} when nothing of the patient has arrived.
_LOOKUP = """
local seen = redis.call('HMGET', KEYS[1], 'watermark_us', 'version')
if not seen[1] then return {} end
local version = seen[2] or '0'
local raw = redis.call('GET', ARGV[1] .. seen[1])
if raw and string.sub(raw, 1, string.len(version) + 1) ~= version .. '|' then raw = false end
return {seen[1], version, raw}
"""
# KEYS: seen, answer; ARGV: record watermark us, the version read before computing, answer ttl, seen ttl,
# answer. Stored only if nothing arrived since (same version) and the record is not behind what arrived.
_STORE = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'watermark_us') or '-1')
local version = redis.call('HGET', KEYS[1], 'version') or '0'
if version ~= ARGV[2] or tonumber(ARGV[1]) < cur then return 0 end
if tonumber(ARGV[1]) > cur then
  redis.call('HSET', KEYS[1], 'watermark_us', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
redis.call('SET', KEYS[2], version .. '|' .. ARGV[5], 'EX', ARGV[3])
return 1
"""


def to_us(ts: datetime) -> int:
    return int(ts.timestamp() * US)


def data_watermark(vitals: pa.Table, labs: pa.Table, doses: pa.Table) -> datetime | None:
    """The latest event time in a patient's data: a vital's or dose's `ts`, a lab's `reported_ts`."""
    times = [pc.max(t[c]).as_py() for t, c in ((vitals, "ts"), (labs, "reported_ts"), (doses, "ts")) if t.num_rows]
    return max(times) if times else None


@dataclass(frozen=True)
class Seen:
    """What has arrived of a patient's data: the newest event time (us; -1 none yet) and the arrival count."""

    watermark_us: int
    version: str


class RiskCache:
    """The answers in Redis, keyed by patient, model version and data watermark (module docstring)."""

    def __init__(self, redis: aioredis.Redis, ttl_s: int = ANSWER_TTL_S) -> None:
        self.redis, self.ttl_s = redis, ttl_s
        self._note = redis.register_script(_NOTE)
        self._lookup = redis.register_script(_LOOKUP)
        self._store = redis.register_script(_STORE)

    async def note_data(self, newest_us: Mapping[str, int]) -> None:
        """New data arrived: patient -> the newest event time (us) among the rows that arrived. One round trip."""
        if not newest_us:
            return
        await self._run(self._note, [([SEEN_KEY.format(patient=p)], [int(at_us), SEEN_TTL_S])
                                     for p, at_us in newest_us.items()])

    async def seen(self, patients: Sequence[str]) -> list[Seen]:
        """What has arrived of each patient's data (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for patient in patients:
                pipe.hmget(SEEN_KEY.format(patient=patient), "watermark_us", "version")
            replies = await pipe.execute()
        return [Seen(int(w) if w is not None else -1, v.decode() if v is not None else "0") for w, v in replies]

    async def lookup(self, patients: Sequence[str], model_version: str) -> list[tuple[Seen, dict | None]]:
        """What has arrived of each patient's data and their stored answer for it, or None (one round trip)."""
        replies = await self._run(self._lookup, [
            ([SEEN_KEY.format(patient=p)], [ANSWER_KEY.format(patient=p, model=model_version, watermark_us="")])
            for p in patients])
        out = []
        for reply in replies:
            if not reply:
                out.append((Seen(-1, "0"), None))
                continue
            watermark, version, *raw = reply
            answer = json.loads(raw[0].split(b"|", 1)[1]) if raw and raw[0] else None
            out.append((Seen(int(watermark), version.decode()), answer))
        return out

    async def store(self, answers: Sequence[dict], seen_before: Sequence[Seen]) -> list[bool]:
        """Keep each answer (`prediction_json` + `patient_id`) if no data arrived since its `seen_before` was
        read and its watermark is not behind the newest arrived; whether each was kept (one round trip)."""
        calls = []
        for answer, seen in zip(answers, seen_before, strict=True):
            at_us = to_us(datetime.fromisoformat(answer["data_watermark"]))
            key = ANSWER_KEY.format(patient=answer["patient_id"], model=answer["model_version"], watermark_us=at_us)
            calls.append(([SEEN_KEY.format(patient=answer["patient_id"]), key],
                          [at_us, seen.version, self.ttl_s, SEEN_TTL_S, json.dumps(answer)]))
        return [bool(r) for r in await self._run(self._store, calls)]

    async def _run(self, script: AsyncScript, calls: list[tuple[list, list]]) -> list:
        """`script` once per (keys, args) in one round trip: EVALSHA pipelined (redis-py's pipelined scripts
        would first ask SCRIPT EXISTS, a second round trip); loaded again after a Redis restart lost it."""
        for _ in range(2):
            async with self.redis.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in replies):
                break
            await self.redis.script_load(script.script)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies


def prediction_json(prediction: RiskPrediction) -> dict:
    """A prediction as JSON values (times in ISO 8601, tuples as lists)."""
    return json.loads(json.dumps(asdict(prediction) | {"data_watermark": prediction.data_watermark.isoformat()},
                                 default=str))


# ---- records from the lake --------------------------------------------------------------------------------
def _empty(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def patient_runs(lake: str, patient_ids: Sequence[str], live: Mapping[str, str] | None = None) -> dict[str, str]:
    """patient -> the run to score: the live one (`live`: patient -> run, the relay's record) if any, else the
    latest started of theirs in the lake's `patients` table. Patients with neither are left out."""
    live = live or {}
    out = {p: live[p] for p in patient_ids if p in live}
    rest = [p for p in patient_ids if p not in out]
    if not rest:
        return out
    rows = delta.read(lake, "patients", columns=["run_id", "patient_id"])
    if rows is None:
        return out
    rows = rows.filter(pc.is_in(rows["patient_id"], pa.array(rest, pa.string())))
    runs = delta.read(lake, "runs", columns=["run_id", "started_ts"], run_ids=rows["run_id"].to_pylist())
    started = {} if runs is None else {r["run_id"]: r["started_ts"].timestamp() for r in runs.to_pylist()}
    for row in sorted(rows.to_pylist(), key=lambda r: started.get(r["run_id"], 0.0)):
        out[row["patient_id"]] = row["run_id"]  # the latest started last
    return out


def lake_records(lake: str, runs: Mapping[str, str], as_of: datetime | None = None,
                 vitals_h: float = WINDOW_H, vitals_since: datetime | None = None) -> dict[str, PatientRecord]:
    """patient -> their record from the lake (`runs`: patient -> run), one read per table for all of them.
    `as_of` None: everything the lake holds (live, it holds what has arrived), as of its data watermark; else
    the rows by then (labs reported by then). `vitals_since`: no record needs vitals before it (the files and
    row groups wholly before it are not read: the live lake's are in time order). Patients without a `patients`
    row or any data are left out."""
    if not runs:
        return {}
    ids = sorted(set(runs.values()))
    tables = {name: delta.read(lake, name, run_ids=ids) for name in ("patients", "labs", "doses")}
    tables["vitals"] = delta.read(lake, "vitals", run_ids=ids, where=None if vitals_since is None else
                                  pc.field("ts") >= pa.scalar(vitals_since, VITALS.field("ts").type))
    for name, schema in (("patients", PATIENTS), ("vitals", VITALS), ("labs", LABS), ("doses", DOSES)):
        tables[name] = _empty(schema) if tables[name] is None else tables[name]
    if as_of is not None:
        limit = pa.scalar(as_of, VITALS.field("ts").type)
        tables["vitals"] = tables["vitals"].filter(pc.less_equal(tables["vitals"]["ts"], limit))
        tables["labs"] = tables["labs"].filter(pc.less_equal(tables["labs"]["reported_ts"], limit))
        tables["doses"] = tables["doses"].filter(pc.less_equal(tables["doses"]["ts"], limit))
    by_run = {name: _split_by_run(t) for name, t in tables.items()}
    out = {}
    for patient, run in runs.items():
        rows = by_run["patients"].get(run)
        if rows is None:
            continue
        parts = {name: by_run[name].get(run, _empty(tables[name].schema)) for name in ("vitals", "labs", "doses")}
        newest = data_watermark(parts["vitals"], parts["labs"], parts["doses"])
        if newest is None:
            continue
        end = as_of or newest
        since = pa.scalar(end - timedelta(hours=vitals_h), VITALS.field("ts").type)
        vitals = parts["vitals"].filter(pc.greater_equal(parts["vitals"]["ts"], since)).sort_by("seq")
        out[patient] = PatientRecord(rows.to_pylist()[0], vitals, parts["labs"].sort_by("sample_ts"),
                                     parts["doses"].sort_by("ts"), end)
    return out


async def read_lake_records(lake: str, patient_ids: Sequence[str], seen: Sequence[Seen],
                            live: Mapping[str, str] | None = None) -> dict[str, PatientRecord]:
    """`lake_records` of the patients' runs (`patient_runs`), off the event loop. What has arrived of their data
    (`seen`) bounds the vitals to read when every one of them has some."""
    since = None if any(s.watermark_us < 0 for s in seen) else \
        datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=min(s.watermark_us for s in seen)) - \
        timedelta(hours=WINDOW_H + 1)
    return await asyncio.to_thread(lambda: lake_records(lake, patient_runs(lake, patient_ids, live),
                                                        vitals_since=since))


def _split_by_run(table: pa.Table) -> dict[str, pa.Table]:
    if table.num_rows == 0:
        return {}
    table = table.sort_by("run_id")
    runs = table["run_id"].to_numpy(zero_copy_only=False)
    bounds = [0, *(i + 1 for i in range(len(runs) - 1) if runs[i] != runs[i + 1]), len(runs)]
    return {runs[a]: table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)}


# ---- records in memory ------------------------------------------------------------------------------------
_KINDS: dict[str, tuple[pa.Schema, str]] = {"vitals": (VITALS, "ts"), "labs": (LABS, "reported_ts"),
                                             "doses": (DOSES, "ts")}  # kind -> schema, its event time
_COMPACT_AT = 64  # chunks a patient's kind holds before they are joined (and old vitals dropped)


def _first_of(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    """The table without repeated rows of the same `keys` (the lake's rows and the same rows from NATS)."""
    if table.num_rows < 2:
        return table
    table = table.sort_by([(k, "ascending") for k in keys])
    cols = [table[k].cast(pa.int64()).to_numpy() if pa.types.is_timestamp(table[k].type) else
            table[k].to_numpy(zero_copy_only=False) for k in keys]
    new = np.ones(table.num_rows, bool)
    same = np.ones(table.num_rows - 1, bool)
    for col in cols:
        same &= col[1:] == col[:-1]
    new[1:] = ~same
    return table.filter(pa.array(new))


_KEYS = {"vitals": ("seq",), "labs": ("sample_ts", "reported_ts"), "doses": ("ts", "drug")}
IDLE_TTL_S = 6 * 3600.0  # no data for 6 h: vitals come every few minutes while a patient is monitored
MAX_HELD_PATIENTS = 5_000  # ~120 kB each (5 days of 5-min vitals): ~0.6 GB at most


@dataclass
class _Held:
    """One patient's rows of one run: NATS arrivals, joined with their lake record once `patient` is known."""

    run_id: str
    patient: dict | None = None  # the `patients` row: set by the lake backfill, from then on the record is whole
    chunks: dict[str, list[pa.Table]] = field(default_factory=lambda: {k: [] for k in _KINDS})
    first_us: int = -1  # the oldest event time that arrived on NATS (-1: none)
    arrived_s: float = 0.0  # when their data last arrived (the store's clock)

    def table(self, kind: str) -> pa.Table:
        chunks = self.chunks[kind]
        if len(chunks) != 1:
            chunks[:] = [pa.concat_tables(chunks) if chunks else _KINDS[kind][0].empty_table()]
        return chunks[0]


class RecordStore:
    """Each live patient's record in memory (the API's miss path without the lake read): fed with the vitals,
    labs and doses that arrive on NATS (`add`, by the dashboard's relay, before it notes the arrival in the
    cache), whole once joined with the patient's lake record (`backfill`, at their first request: the `patients`
    row, the labs and doses from before the relay started). The vitals kept are the model's window
    (`features.WINDOW_H`) and an hour; labs and doses all (the INR history, the days on warfarin).

    A backfill makes the record whole only if the lake reaches the oldest row held from NATS (nothing between
    them can be missing); otherwise the lake record is served (and not cached if behind), and the next request
    tries again. A patient whose rows come from a new run starts again from the lake. Limit: a row lost between
    NATS and this process (the relay's connection dropped) is missing from the record until the patient's next
    run; the lookup's watermark check catches only a loss at the newest end.

    Bounded: a patient is dropped when their run ends (`end`: the closing watermark of their stream), when no
    data of theirs has arrived for `idle_ttl_s` (a monitor unplugged, a transfer: a request then reads the lake
    again), and, the least recently fed first, beyond `max_patients`. `held` is kept in order of the last
    arrival, so the sweep reads only the patients it drops."""

    def __init__(self, window_h: float = WINDOW_H + 1.0, *, idle_ttl_s: float = IDLE_TTL_S,
                 max_patients: int = MAX_HELD_PATIENTS, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_us = int(window_h * 3600 * US)
        self.idle_ttl_s, self.max_patients, self.clock = idle_ttl_s, max_patients, clock
        self.held: dict[str, _Held] = {}  # in order of their data's last arrival, oldest first
        self.dropped = 0  # patients dropped (ended, idle or beyond max_patients)

    def add(self, kind: str, rows: pa.Table) -> None:
        """Rows of one kind (`vitals`, `labs`, `doses`) that arrived on NATS, any patients."""
        if rows.num_rows == 0:
            return
        schema, time_column = _KINDS[kind]
        rows = rows.select(schema.names).cast(schema)
        for (patient, run), part in _split_by(rows, ("patient_id", "run_id")).items():
            held = self.held.pop(patient, None)
            if held is None or held.run_id != run:
                held = _Held(run)
            held.arrived_s = self.clock()
            self.held[patient] = held  # the newest arrival last
            oldest = pc.min(part[time_column]).value
            held.first_us = oldest if held.first_us < 0 else min(held.first_us, oldest)
            chunks = held.chunks[kind]
            chunks.append(part)
            if len(chunks) >= _COMPACT_AT:
                self._compact(held)
        self.sweep()

    def end(self, patient: str) -> None:
        """The patient's run ended (their stream's closing watermark): nothing more arrives to keep it for."""
        if self.held.pop(patient, None) is not None:
            self.dropped += 1

    def sweep(self) -> None:
        """Drop the patients idle past `idle_ttl_s`, then the least recently fed beyond `max_patients`."""
        idle_before = self.clock() - self.idle_ttl_s
        while self.held:
            patient, held = next(iter(self.held.items()))
            if held.arrived_s >= idle_before and len(self.held) <= self.max_patients:
                return
            del self.held[patient]
            self.dropped += 1

    def _compact(self, held: _Held) -> None:
        """Join each kind's chunks; drop the vitals older than the window before the newest."""
        vitals = held.table("vitals")
        if vitals.num_rows:
            since = pc.max(vitals["ts"]).value - self.window_us
            held.chunks["vitals"] = [vitals.filter(pc.greater_equal(vitals["ts"].cast(pa.int64()), since))]
        for kind in ("labs", "doses"):
            held.table(kind)

    def record(self, patient: str) -> PatientRecord | None:
        """The patient's whole record as it has arrived, or None if it is not whole (never backfilled)."""
        held = self.held.get(patient)
        if held is None or held.patient is None:
            return None
        self._compact(held)
        vitals, labs, doses = (held.table(k) for k in _KINDS)
        newest = data_watermark(vitals, labs, doses)
        if newest is None:
            return None
        since = pa.scalar(newest - timedelta(hours=WINDOW_H), VITALS.field("ts").type)
        return PatientRecord(held.patient, vitals.filter(pc.greater_equal(vitals["ts"], since)).sort_by("seq"),
                             labs.sort_by("sample_ts"), doses.sort_by("ts"), newest)

    def backfill(self, patient: str, lake_record: PatientRecord) -> PatientRecord:
        """Join the patient's lake record with what arrived on NATS; the whole record if the two meet (class
        docstring), else the lake record."""
        run = lake_record.patient["run_id"]
        held = self.held.get(patient)
        if held is None or held.run_id != run:
            if held is not None:  # the lake's run is not the one arriving: nothing to join
                return lake_record
            held = self.held[patient] = _Held(run, arrived_s=self.clock())
            self.sweep()
        lake_us = to_us(lake_record.as_of)
        if held.first_us >= 0 and lake_us < held.first_us:
            return lake_record  # a gap between the lake and the first NATS rows: try again later
        for kind, lake_rows in (("vitals", lake_record.vitals), ("labs", lake_record.labs),
                                ("doses", lake_record.doses)):
            joined = pa.concat_tables([lake_rows.select(_KINDS[kind][0].names).cast(_KINDS[kind][0]),
                                       held.table(kind)])
            held.chunks[kind] = [_first_of(joined, _KEYS[kind])]
        held.patient = lake_record.patient
        return self.record(patient) or lake_record

    async def read(self, patient_ids: Sequence[str], seen: Sequence[Seen], cold: Records,
                   ) -> dict[str, PatientRecord]:
        """`Records` from memory where whole and not behind what has arrived (`seen`), else from `cold` (the
        lake), joined into the store for the next time."""
        out, rest = {}, []
        for patient, arrived in zip(patient_ids, seen, strict=True):
            record = self.record(patient)
            if record is not None and to_us(record.as_of) >= arrived.watermark_us:
                out[patient] = record
            else:
                rest.append((patient, arrived))
        if rest:
            lake = await cold([p for p, _ in rest], [s for _, s in rest])
            out |= {patient: self.backfill(patient, record) for patient, record in lake.items()}
        return out


def _split_by(table: pa.Table, keys: Sequence[str]) -> dict[tuple, pa.Table]:
    """The table's rows per distinct `keys` (string columns)."""
    if table.num_rows == 0:
        return {}
    table = table.sort_by([(k, "ascending") for k in keys])
    cols = [table[k].to_numpy(zero_copy_only=False) for k in keys]
    change = np.zeros(table.num_rows - 1, bool)
    for col in cols:
        change |= col[1:] != col[:-1]
    starts = np.r_[0, np.flatnonzero(change) + 1]
    ends = np.r_[starts[1:], table.num_rows]
    return {tuple(col[a] for col in cols): table.slice(a, b - a) for a, b in zip(starts, ends, strict=True)}


# ---- the served model -------------------------------------------------------------------------------------
class ModelSource(Protocol):
    """Where a service gets its model: `get` may block (a load, a registry check); `ready` says it would not."""

    def get(self) -> Predictor: ...

    def ready(self) -> bool: ...


@dataclass
class Fixed:
    """One model, served as it is."""

    model: Predictor

    def get(self) -> Predictor:
        return self.model

    def ready(self) -> bool:
        return True


class Champion:
    """The served model: the registry's champion in `lake` (the shipped checkpoint while none is), loaded on the
    first `get` and swapped when another version is promoted (checked at most every `check_s`).

    The process's torch runs `torch_threads` threads per operation: a server predicts many requests at once
    (one thread each) and shares its cores with the stack: torch's default, a thread per core, contends with both."""

    def __init__(self, lake: str, check_s: float = CHAMPION_CHECK_S, torch_threads: int = 1) -> None:
        self.lake, self.check_s, self.torch_threads = lake, check_s, torch_threads
        self.model: Predictor | None = None
        self.checked = -np.inf
        self.lock = threading.Lock()

    def ready(self) -> bool:
        return self.model is not None and time.monotonic() - self.checked <= self.check_s

    def get(self) -> Predictor:
        with self.lock:
            if not self.ready():
                import torch

                from outcomes import registry

                torch.set_num_threads(self.torch_threads)
                entry = registry.champion(self.lake)
                if self.model is None or (entry is not None and entry.version != self.model.version):
                    self.model = registry.load_champion(self.lake)
                self.checked = time.monotonic()
            return self.model


# ---- the service ------------------------------------------------------------------------------------------
# patient ids and what has arrived of their data -> their records
Records = Callable[[Sequence[str], Sequence[Seen]], Awaitable[dict[str, PatientRecord]]]


@dataclass
class RiskService:
    """Risk answers through the cache: a hit in one Redis round trip; a miss reads the records (`records`),
    predicts them in one batch and stores what may be stored. Answers are `prediction_json` dicts with
    `cached`, `computed_at` and `data_behind_s` (how far the data used is behind the newest arrived: 0 when
    current)."""

    models: ModelSource
    cache: RiskCache
    records: Records

    async def model(self) -> Predictor:
        return self.models.get() if self.models.ready() else await asyncio.to_thread(self.models.get)

    async def risk(self, patient_id: str) -> dict | None:
        """The patient's answer, or None when there is no record of them."""
        return (await self.risk_many([patient_id])).get(patient_id)

    async def risk_many(self, patient_ids: Sequence[str], use_cache: bool = True) -> dict[str, dict]:
        """Answers of the patients with a record (the others are left out)."""
        if not use_cache:
            return await self.compute(patient_ids)
        if self.models.ready():
            found = await self.cache.lookup(patient_ids, (await self.model()).version)
        else:  # no model yet: loaded only for patients whose data has arrived (an unknown id needs none)
            found = [(seen, None) for seen in await self.cache.seen(patient_ids)]
            if any(seen.watermark_us >= 0 for seen, _ in found):
                found = await self.cache.lookup(patient_ids, (await self.model()).version)
        answers = {p: answer | {"cached": True} for p, (_, answer) in zip(patient_ids, found, strict=True) if answer}
        missing = [(p, seen) for p, (seen, answer) in zip(patient_ids, found, strict=True) if not answer]
        if missing:
            answers |= await self.compute([p for p, _ in missing], [seen for _, seen in missing])
        return answers

    async def compute(self, patient_ids: Sequence[str], seen_before: Sequence[Seen] | None = None,
                      ) -> dict[str, dict]:
        """Fresh answers (one batched prediction), stored in the cache where they may be. `seen_before`: what
        had arrived of each patient's data before their records are read (read now if not given)."""
        seen = dict(zip(patient_ids, seen_before or await self.cache.seen(patient_ids), strict=True))
        records = await self.records(patient_ids, [seen[p] for p in patient_ids])
        if not records:  # nobody known: no model needed (nor loaded) to say so
            return {}
        predictor = await self.model()
        order = list(records)
        predictions = await asyncio.to_thread(predictor.predict, [records[p] for p in order])
        now = datetime.now(UTC).isoformat()
        answers = {}
        for patient, prediction in zip(order, predictions, strict=True):
            # the watermark as the arrivals count it (whatever the model's own notion of it)
            record = records[patient]
            watermark = data_watermark(record.vitals, record.labs, record.doses)
            behind_us = max(0, seen[patient].watermark_us - to_us(watermark))
            answers[patient] = prediction_json(prediction) | {
                "patient_id": patient, "data_watermark": watermark.isoformat(), "computed_at": now,
                "data_behind_s": behind_us / US}
        # not kept when behind the arrived data (then data_behind_s > 0) or when data arrived meanwhile
        await self.cache.store(list(answers.values()), [seen[p] for p in answers])
        return {p: answer | {"cached": False} for p, answer in answers.items()}
