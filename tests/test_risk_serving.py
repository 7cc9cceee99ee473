"""The risk cache (`outcomes.serving`) on a real redis-server and a real lake of simulated patients: a hit is
the stored answer, new data (a lab) invalidates it the moment it arrives and the next answer is fresh with
the new watermark, an answer is not kept while the lake is behind the data that arrived or when data arrived
during its computation. The model is a stand-in (a function of the last INR): the cache is under test here,
the real model in tests/test_risk_api.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from core.events import DOSES, LABS, VITALS
from core.services import redis_client
from outcomes.contract import CLASS_HEADS, HeadPrediction, PatientRecord, RiskPrediction
from outcomes.serving import (
    Fixed,
    RecordStore,
    RiskCache,
    RiskService,
    Seen,
    data_watermark,
    lake_records,
    patient_runs,
    read_lake_records,
    to_us,
)
from sinks import delta
from sources.patient.cohort_sim import PatientCohortSim
from sources.patient.scenarios import load_patient_scenario

DAYS = 6


class LastInr:
    """Stand-in model: each head's probability is the last INR reported / 10."""

    version = "last-inr-1"

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, records: Sequence[PatientRecord]) -> list[RiskPrediction]:
        self.calls += 1
        out = []
        for r in records:
            inr = r.labs.filter(pc.is_valid(r.labs["inr"]))["inr"]
            p = float(inr[-1].as_py()) / 10 if len(inr) else 0.0
            heads = {h: HeadPrediction(h, "probability", p, p, p) for h in CLASS_HEADS}
            out.append(RiskPrediction(r.patient["patient_id"], r.patient["run_id"], heads, 1.0, (), "last INR",
                                      self.version, data_watermark(r.vitals, r.labs, r.doses)))
        return out


def write_patients(lake: Path, patients: int = 2, days: int = DAYS) -> None:
    """`patients` simulated patients (p000000...) of `days` days in the lake, as a live plant leaves them: the
    labs reported by the last vital only."""
    sim = PatientCohortSim(load_patient_scenario("amiodarone_then_bleed"), patients, seed=4)
    chunk = sim.step(days * 288)
    delta.append(lake, "patients", sim.patients_table(), sim.patients_table().schema)
    delta.append(lake, "vitals", pa.Table.from_batches([chunk.vitals]), VITALS)
    last = pc.max(chunk.vitals["ts"])
    delta.append(lake, "labs", chunk.labs.filter(pc.less_equal(chunk.labs["reported_ts"], last)), LABS)
    delta.append(lake, "doses", chunk.doses, DOSES)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = tmp_path_factory.mktemp("risk") / "lake"
    write_patients(lake)
    return lake


@pytest.fixture
def served(lake: Path, redis_server) -> Iterator[tuple[LastInr, str, Callable[[], RiskService]]]:
    """The stand-in model, a patient of the lake, and what makes a service over them (in the test's loop)."""
    model = LastInr()
    patient = delta.read(lake, "patients")["patient_id"][0].as_py()

    async def records(ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
        return await read_lake_records(str(lake), ids, seen)

    yield model, patient, lambda: RiskService(Fixed(model), RiskCache(redis_client(redis_server.url)), records)


def new_lab(lake: Path, patient: str, inr: float) -> pa.Table:
    """A lab of the patient's run reported an hour after their data's watermark (as the flow would write it)."""
    record = lake_records(str(lake), patient_runs(str(lake), [patient]))[patient]
    return pa.Table.from_pylist([{"run_id": record.patient["run_id"], "patient_id": patient,
                                  "sample_ts": record.as_of, "reported_ts": record.as_of + timedelta(hours=1),
                                  "inr": inr}], schema=LABS)


def test_a_new_lab_invalidates_the_cached_answer_and_the_next_is_fresh_with_its_watermark(served, lake):
    model, patient, make = served

    async def go() -> None:
        risk = make()
        first = await risk.risk(patient)
        again = await risk.risk(patient)
        assert (first["cached"], again["cached"]) == (False, True)
        assert {k: v for k, v in again.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
        assert model.calls == 1  # the hit computed nothing
        lab = new_lab(lake, patient, inr=6.2)
        reported = lab["reported_ts"][0].as_py()
        delta.append(lake, "labs", lab, LABS)  # the flow writes it...
        # ...and the relay saw it arrive: the cached answer is no longer served
        await risk.cache.note_data({patient: to_us(reported)})
        fresh = await risk.risk(patient)
        assert not fresh["cached"] and fresh["data_behind_s"] == 0
        assert fresh["data_watermark"] == reported.isoformat()
        assert fresh["heads"]["inr_ge4_7d"]["estimate"] == pytest.approx(0.62)
        assert (await risk.risk(patient))["cached"]  # and kept in its turn
        await risk.cache.redis.aclose()

    asyncio.run(go())


def test_an_answer_from_a_lake_behind_the_arrived_data_is_served_but_not_cached(served):
    model, patient, make = served

    async def go() -> None:
        risk = make()
        current = await risk.risk(patient)
        ahead = to_us(datetime.fromisoformat(current["data_watermark"])) + 3_600_000_000
        await risk.cache.note_data({patient: ahead})  # a lab arrived; the flow has not written it yet
        behind = [await risk.risk(patient) for _ in range(2)]
        assert [b["cached"] for b in behind] == [False, False]
        assert behind[0]["data_behind_s"] == pytest.approx(3600.0)
        assert behind[0]["data_watermark"] == current["data_watermark"]  # it says what data it used
        await risk.cache.redis.aclose()

    asyncio.run(go())


def test_data_arriving_during_a_computation_keeps_its_answer_out_of_the_cache(served):
    model, patient, make = served

    async def go() -> None:
        risk = make()
        answer = await risk.risk(patient)
        seen = (await risk.cache.seen([patient]))[0]
        await risk.cache.note_data({patient: 0})  # an out-of-order row: the watermark stays, the version moves
        assert await risk.cache.store([answer], [seen]) == [False]
        assert (await risk.cache.lookup([patient], model.version))[0][1] is None
        assert await risk.risk("p999999") is None  # nobody of that id
        await risk.cache.redis.aclose()

    asyncio.run(go())


def later_vital(record: PatientRecord, minutes: float) -> pa.Table:
    """The record's newest vital again, `minutes` later and one sequence number on (as the next would arrive)."""
    row = record.vitals.slice(record.vitals.num_rows - 1).to_pylist()[0]
    return pa.Table.from_pylist([row | {"ts": row["ts"] + timedelta(minutes=minutes), "seq": row["seq"] + 1}],
                                schema=VITALS)


def test_the_record_store_joins_the_lake_once_then_serves_what_arrives_without_reading_the_lake(lake):
    patient = sorted(delta.read(lake, "patients")["patient_id"].to_pylist())[1]
    from_lake = lake_records(str(lake), patient_runs(str(lake), [patient]))[patient]
    cold_reads: list[str] = []

    async def cold(ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
        cold_reads.extend(ids)
        return await read_lake_records(str(lake), ids, seen)

    async def go() -> None:
        store = RecordStore()
        # on NATS since before the lake's last hour (rows the lake also holds), then a lab the lake lacks
        store.add("vitals", from_lake.vitals.slice(from_lake.vitals.num_rows - 12))
        lab = pa.Table.from_pylist([{"run_id": from_lake.patient["run_id"], "patient_id": patient,
                                     "sample_ts": from_lake.as_of, "reported_ts": from_lake.as_of + timedelta(hours=1),
                                     "inr": 3.3}], schema=LABS)
        store.add("labs", lab)
        arrived = Seen(to_us(from_lake.as_of + timedelta(hours=1)), "2")
        first = (await store.read([patient], [arrived], cold))[patient]
        assert cold_reads == [patient]
        assert first.as_of == from_lake.as_of + timedelta(hours=1)
        window_start = first.as_of - timedelta(hours=120)
        expected = from_lake.vitals.filter(pc.greater_equal(from_lake.vitals["ts"], pa.scalar(window_start, VITALS.field("ts").type)))
        assert first.vitals["seq"].to_pylist() == expected["seq"].to_pylist()  # each once, in order
        assert first.labs.num_rows == from_lake.labs.num_rows + 1 and first.doses.equals(from_lake.doses)
        store.add("vitals", later_vital(first, 65))
        second = (await store.read([patient], [Seen(to_us(first.as_of + timedelta(minutes=5)), "3")], cold))[patient]
        assert cold_reads == [patient]  # from memory
        assert second.as_of == first.as_of + timedelta(minutes=5) and second.vitals.num_rows <= first.vitals.num_rows + 1

        gap = RecordStore()  # NATS rows begin two hours after the lake's newest: the hours between are unknown
        gap.add("vitals", later_vital(from_lake, 120))
        behind = (await gap.read([patient], [Seen(to_us(from_lake.as_of + timedelta(hours=2)), "1")], cold))[patient]
        assert behind.as_of == from_lake.as_of and gap.record(patient) is None  # the lake's, not whole
        await gap.read([patient], [Seen(to_us(from_lake.as_of + timedelta(hours=2)), "1")], cold)
        assert cold_reads == [patient] * 3  # the lake again, until it reaches the NATS rows

    asyncio.run(go())


def _vitals(patient: str, minute: int) -> pa.Table:
    """One vital of `patient` at `minute` past 2026-01-01 (run `run-<patient>`)."""
    return pa.Table.from_pylist([{"run_id": f"run-{patient}", "patient_id": patient, "seq": minute,
                                  "ts": datetime(2026, 1, 1) + timedelta(minutes=minute), "hr_bpm": 70.0}],
                                schema=VITALS)


def test_the_record_store_drops_ended_idle_and_surplus_patients_so_its_memory_is_bounded(lake):
    now = [0.0]
    store = RecordStore(idle_ttl_s=3600.0, max_patients=50, clock=lambda: now[0])
    for k in range(200):  # 200 patients fed, one a minute of the store's clock: never more than 50 held
        now[0] = 60.0 * k
        store.add("vitals", _vitals(f"q{k:03d}", k))
        assert len(store.held) <= 50
    assert sorted(store.held) == [f"q{k:03d}" for k in range(150, 200)]  # the least recently fed went first
    store.add("vitals", _vitals("q150", 300))  # fed again: now the most recent
    store.end("q151")  # their stream's closing watermark
    assert "q151" not in store.held and list(store.held)[-1] == "q150"
    now[0] += 3600.0 - 570.0  # an hour and 30 s after q189's last data, 59.5 min after q190's
    store.add("vitals", _vitals("q199", 400))
    assert sorted(store.held) == [f"q{k:03d}" for k in (150, *range(190, 200))]  # idle past the hour: dropped
    assert store.dropped == 200 - len(store.held)

    # a dropped patient of the lake is read from the lake again, then held again
    patient = sorted(delta.read(lake, "patients")["patient_id"].to_pylist())[0]
    cold_reads: list[str] = []

    async def cold(ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
        cold_reads.extend(ids)
        return await read_lake_records(str(lake), ids, seen)

    async def go() -> None:
        arrived = [Seen(0, "0")]
        await store.read([patient], arrived, cold)
        assert patient in store.held
        store.end(patient)
        await store.read([patient], arrived, cold)

    asyncio.run(go())
    assert cold_reads == [patient, patient]
