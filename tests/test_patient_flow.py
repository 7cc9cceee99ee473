"""The monitoring flow of the patient plant end to end: real nats-server, the real flow process (plant
`patient`), real Delta tables. Vitals, labs (at their report time) and doses go in over the patient subjects;
out come the tables, the alerts and the twin's forecasts, and a poison vitals message is dead-lettered."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import nats
import pyarrow as pa
import pyarrow.compute as pc

from sinks import delta
from sources.patient.cohort_sim import simulate_cohort
from sources.patient.scenarios import load_patient_scenario
from sources.publish import publish_assays, publish_retrying, publish_ticks, publish_watermark
from tests.stream_helpers import wait_rows


def _major_bleed_patient() -> tuple[str, pa.Table, pa.Table, pa.Table, pa.Table]:
    """One patient's 26 days with a major bleed from day 15-25: (patient id, vitals, labs, doses, labels)."""
    sc = load_patient_scenario("major_bleed").model_copy(update={"days": 26.0})
    cohort = simulate_cohort(sc, 1, seed=4)
    return cohort.sim.patient_ids[0], cohort.vitals, cohort.labs, cohort.doses, cohort.sim.labels_table()


async def _feed(url: str, pid: str, vitals: pa.Table, labs: pa.Table, doses: pa.Table) -> list[dict]:
    """Publish in event time as the live feed does (vitals a day at a time, each lab at its report time, each
    dose at its time), then a watermark past the last reading; returns the twin messages seen."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    twins: list[dict] = []

    async def on_twin(msg) -> None:
        twins.append(json.loads(msg.data))

    sub = await js.subscribe(f"biopilot.twin.{pid}", cb=on_twin, ordered_consumer=True)
    await publish_retrying(js, f"biopilot.telemetry.{pid}", b"\x00not arrow, not json")  # poison
    ts = vitals["ts"].cast(pa.int64()).to_numpy()
    events = sorted([(r, "doses", doses.slice(i, 1)) for i, r in enumerate(doses["ts"].cast(pa.int64()).to_pylist())]
                    + [(r, "labs", labs.slice(i, 1)) for i, r in enumerate(labs["reported_ts"].cast(pa.int64())
                                                                           .to_pylist())], key=lambda e: e[0])
    start = 0
    for at_us, kind, rows in events:
        stop = int((ts <= at_us).sum())
        if stop > start:
            await publish_ticks(js, pid, vitals.slice(start, stop - start))
            start = stop
        await publish_assays(js, pid, rows, kind="doses" if kind == "doses" else None)
    await publish_ticks(js, pid, vitals.slice(start))
    await publish_watermark(js, pid, int(ts.max()) + 1)
    for _ in range(300):  # the refits come while the flow works through the stream
        if len(twins) >= pc.sum(pc.is_valid(labs["inr"])).as_py():
            break
        await asyncio.sleep(0.2)
    await sub.unsubscribe()
    await nc.close()
    return twins


def test_vitals_labs_and_doses_flow_into_the_lake_with_alerts_twin_forecasts_and_dead_letters(
        nats_server, tmp_path, run_flow):
    pid, vitals, labs, doses, labels = _major_bleed_patient()
    lake = tmp_path / "lake"
    flow = run_flow(nats_server.url, lake, plant="patient")
    try:
        twins = asyncio.run(_feed(nats_server.url, pid, vitals, labs, doses))
        assert wait_rows(lake, "vitals", vitals.num_rows, flow, timeout_s=120) == vitals.num_rows
        assert wait_rows(lake, "scores", vitals.num_rows, flow) == vitals.num_rows
        assert wait_rows(lake, "labs", labs.num_rows, flow) == labs.num_rows
        assert wait_rows(lake, "doses", doses.num_rows, flow) == doses.num_rows
        inrs = pc.sum(pc.is_valid(labs["inr"])).as_py()
        assert wait_rows(lake, "twin_forecasts", inrs * 2 * 14, flow, timeout_s=120) == inrs * 2 * 14
        assert wait_rows(lake, "deadletter", 1, flow) == 1
    finally:
        flow.stop()
    dead = delta.read(lake, "deadletter")
    assert dead["subject"].to_pylist() == [f"biopilot.telemetry.{pid}"]
    alerts = delta.read(lake, "alerts").to_pylist()
    bleed = next(lb for lb in labels.to_pylist() if lb["fault"] == "major_bleed")
    assert any(bleed["start_ts"] <= a["ts"] <= bleed["end_ts"] and a["reactor_id"] == pid for a in alerts)
    assert len(twins) == inrs
    last = twins[-1]
    assert last["patient_id"] == pid and last["labs_used"] == inrs and len(last["forecasts"]) == 2 * 14
    assert datetime.fromisoformat(last["fitted_ts"]) <= datetime.now(UTC)
