"""The live patient plant: the cohort's live controls (dose, hold, co-medication, injected events) and the feed on
a real broker (vitals, late labs and doses on the patient subjects; commands obeyed or rejected)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import nats
import numpy as np
import pyarrow as pa
import pytest

from biopilot.plant_process import Progress, SupervisedPatients
from core.events import DOSES, LABELS, LABS, PATIENTS, RUNS, VITALS, Label
from sinks import delta
from sources.patient.cohort_sim import PatientCohortSim
from sources.patient.live import PatientFeed
from sources.patient.scenarios import load_patient_scenario
from sources.publish import publish_watermark
from sources.telemetry import KIND_HEADER
from tests.dashboard_helpers import wait_for

DAY_TICKS = 288  # 5-min vitals


def _sim(name: str = "warfarin_standard", n: int = 3, days: float = 21.0, seed: int = 4) -> PatientCohortSim:
    return PatientCohortSim(load_patient_scenario(name).with_overrides(days=days), n, seed=seed)


def _run(sim: PatientCohortSim, days: float) -> tuple[pa.Table, pa.Table, np.ndarray]:
    """(doses, labs, true INR (n, ticks)) of the next `days` days."""
    doses, labs, inr = [], [], []
    for _ in range(int(round(days))):
        chunk = sim.step(DAY_TICKS)
        doses.append(chunk.doses)
        labs.append(chunk.labs)
        inr.append(sim.last_true["inr"])
    return pa.concat_tables(doses), pa.concat_tables(labs), np.concatenate(inr, axis=1)


def _of(doses: pa.Table, patient: str, drug: str) -> list[float]:
    return [r["dose_mg"] for r in doses.to_pylist() if r["patient_id"] == patient and r["drug"] == drug]


# ---- the cohort's live controls ----------------------------------------------------------------------------
def test_a_prescribed_dose_replaces_the_protocol_from_the_next_dose_time():
    sim = _sim()
    _run(sim, 4)
    sim.set_daily_dose(1, "warfarin", 7.5)
    doses, _, _ = _run(sim, 5)
    pid = sim.patient_ids[1]
    assert _of(doses, pid, "warfarin") == [7.5] * 5
    assert _of(doses, sim.patient_ids[0], "warfarin") != [7.5] * 5  # the others stay on the nomogram


def test_a_hold_gives_no_dose_for_its_days_then_the_dose_goes_on():
    sim = _sim()
    _run(sim, 4)
    sim.set_daily_dose(0, "warfarin", 4.0)
    sim.hold(0, "warfarin", 2)
    doses, _, _ = _run(sim, 4)
    assert _of(doses, sim.patient_ids[0], "warfarin") == [0.0, 0.0, 4.0, 4.0]


def test_amiodarone_started_live_is_a_drug_interaction_with_its_label_dose_rows_and_a_rising_inr():
    control, sim = _sim(days=28), _sim(days=28)
    for s in (control, sim):
        _run(s, 7)
        s.set_daily_dose(2, "warfarin", 5.0)  # a fixed dose: the INR shows the interaction, not the nomogram
    labels = sim.comedication(2, "amiodarone", "start")
    assert [(lab.fault, lab.reactor_id) for lab in labels] == [("drug_interaction", sim.patient_ids[2])]
    assert labels[0] in sim.labels
    doses, _, inr = _run(sim, 14)
    _, _, inr0 = _run(control, 14)
    assert _of(doses, sim.patient_ids[2], "amiodarone") == [200.0] * 14
    assert not _of(doses, sim.patient_ids[1], "amiodarone")
    assert inr[2, -1] > 1.1 * inr0[2, -1]  # CYP2C9 inhibited: clearance on its way down to 0.55
    np.testing.assert_allclose(inr[:2], inr0[:2], rtol=1e-9)  # nobody else changes
    for again in (lambda: sim.comedication(2, "amiodarone", "start"),
                  lambda: sim.inject_event(2, "drug_interaction", 1.0, 24.0)):
        with pytest.raises(ValueError, match="already takes amiodarone"):
            again()


def test_an_enzyme_inducer_lowers_the_inr_and_its_effect_wears_off_once_stopped():
    control, sim = _sim(days=42), _sim(days=42)
    for s in (control, sim):
        _run(s, 7)
        s.set_daily_dose(0, "warfarin", 5.0)
    assert sim.comedication(0, "enzyme_inducer", "start") == []
    doses, _, on = _run(sim, 14)
    _, _, on0 = _run(control, 14)
    assert _of(doses, sim.patient_ids[0], "enzyme_inducer") == [600.0] * 14
    assert on[0, -1] < 0.85 * on0[0, -1]
    sim.comedication(0, "enzyme_inducer", "stop")
    doses, _, off = _run(sim, 14)
    _, _, off0 = _run(control, 14)
    assert not _of(doses, sim.patient_ids[0], "enzyme_inducer")
    assert on[0, -1] < off[0, -1] and abs(off[0, -1] - off0[0, -1]) < abs(on[0, -1] - on0[0, -1])
    with pytest.raises(ValueError, match="takes no enzyme_inducer"):
        sim.comedication(0, "enzyme_inducer", "stop")


def test_an_injected_event_starts_now_with_its_label_and_bad_ones_are_refused():
    sim = _sim()
    _run(sim, 3)
    (label,) = sim.inject_event(1, "major_bleed", 1.0, 72.0)  # the day-5 draw falls inside it
    assert label.fault == "major_bleed" and label.start_ts == sim.started + np.timedelta64(3, "D").item()
    _, labs, _ = _run(sim, 5)
    hb = [r["hb_g_dl"] for r in labs.to_pylist() if r["patient_id"] == sim.patient_ids[1]]  # days 3, 5, 7
    assert hb[1] < sim.cohort.hb_g_dl[1] - 1.5 < hb[2]  # the day-5 draw inside it, the day-7 one after
    assert sim.inject_event(0, "sensor_dropout", 1.0, 6.0, "spo2_pct")[0].signals == ["spo2_pct"]
    with pytest.raises(ValueError, match="needs the faulty vital"):
        sim.inject_event(0, "sensor_stuck", 1.0, 6.0)
    with pytest.raises(ValueError, match="acts through warfarin"):
        _sim("metoprolol_100mg").inject_event(0, "over_anticoagulation", 1.0, 24.0)
    with pytest.raises(ValueError, match="gives no warfarin"):
        _sim("metoprolol_100mg").set_daily_dose(0, "warfarin", 5.0)


# ---- the feed on a real broker -----------------------------------------------------------------------------
@dataclass
class Heard:
    """What a subscriber to the patient subjects saw, in arrival order."""

    vitals: list[pa.Table] = field(default_factory=list)
    labs: list[tuple[pa.Table, int]] = field(default_factory=list)  # with the latest vitals ts (us) heard before
    doses: list[tuple[pa.Table, int]] = field(default_factory=list)
    watermarks: list[str] = field(default_factory=list)
    latest_us: int = 0

    async def on(self, msg: nats.aio.msg.Msg) -> None:
        kind = (msg.headers or {}).get(KIND_HEADER)
        if kind == "watermark":
            self.watermarks.append(msg.subject)
            return
        rows = pa.ipc.open_stream(msg.data).read_all()
        if msg.subject.startswith("biopilot.telemetry."):
            self.vitals.append(rows)
            self.latest_us = max(self.latest_us, int(rows["ts"].cast(pa.int64()).to_numpy().max()))
        elif kind == "doses":
            self.doses.append((rows, self.latest_us))
        else:
            self.labs.append((rows, self.latest_us))

    def all_doses(self) -> list[dict]:
        return [r for rows, _ in self.doses for r in rows.to_pylist()]


@contextmanager
def running_feed(url: str, **kwargs: object) -> Iterator[tuple[PatientFeed, Heard, dict[str, list[pa.Table]]]]:
    """A patient feed and a subscriber in their own thread and event loop; what the feed recorded by table."""
    recorded: dict[str, list[pa.Table]] = {}
    heard = Heard()
    scenario = load_patient_scenario(kwargs.pop("scenario", "warfarin_standard")).with_overrides(
        days=kwargs.pop("days", 6.0))
    feed = PatientFeed(url, scenario, record=lambda name, rows: recorded.setdefault(name, []).append(rows),
                       **kwargs)
    result: dict = {}

    async def main() -> None:
        nc = await nats.connect(url)
        for subject in ("biopilot.telemetry.*", "biopilot.assays.*"):
            await nc.subscribe(subject, cb=heard.on)
        try:
            result["stats"] = await feed.run()
            await nc.flush()
            await asyncio.sleep(0.2)
        finally:
            await nc.close()

    loop = asyncio.new_event_loop()

    def run() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as err:  # noqa: BLE001 - the test reports it
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    feed.thread, feed.result = thread, result  # type: ignore[attr-defined]
    try:
        yield feed, heard, recorded
    finally:
        if thread.is_alive():
            loop.call_soon_threadsafe(feed.interrupt)
            thread.join(30)


def test_the_feed_streams_vitals_late_labs_and_doses_on_the_patient_subjects(nats_server):
    with running_feed(nats_server.url, patients=2, speed=None, max_batches=1) as (feed, heard, recorded):
        feed.thread.join(60)
    assert "error" not in feed.result, feed.result
    vitals = pa.concat_tables(heard.vitals)
    assert vitals.schema.equals(VITALS) and vitals.num_rows == 2 * 6 * DAY_TICKS
    assert sorted(set(vitals["patient_id"].to_pylist())) == feed.unit_ids == ["p000000", "p000001"]
    assert sorted(heard.watermarks) == ["biopilot.telemetry.p000000", "biopilot.telemetry.p000001"]
    # labs on day 3 and 5 (sampled 08:00, reported 6 h later), each published once its report time had come
    assert len(heard.labs) == 2 * 2
    for rows, latest_us in heard.labs:
        assert rows.schema.equals(LABS) and rows.num_rows == 1
        assert latest_us >= rows["reported_ts"].cast(pa.int64())[0].as_py() > rows["sample_ts"].cast(
            pa.int64())[0].as_py()
    # a warfarin dose a day, each published at its dose time: loading 10 (or 5 over 75), 5, 5 mg
    doses = heard.all_doses()
    assert all(rows.schema.equals(DOSES) for rows, _ in heard.doses)
    assert all(latest_us >= rows["ts"].cast(pa.int64())[0].as_py() for rows, latest_us in heard.doses)
    assert len(doses) == 2 * 6 and {d["drug"] for d in doses} == {"warfarin"}
    assert sorted({d["dose_mg"] for d in doses if (d["ts"] - feed.start).days == 2}) == [5.0]  # the third day
    assert feed.stats.ticks == vitals.num_rows and feed.stats.assays == 4 and feed.stats.doses == 12
    # the plant writes patients at the cohort's start and runs at its end; the INR episodes found go to labels
    assert recorded["patients"][0].schema.equals(PATIENTS) and recorded["patients"][0].num_rows == 2
    assert recorded["runs"][0].schema.equals(RUNS) and recorded["runs"][0]["plant"].to_pylist() == ["patient"] * 2
    assert all(t.schema.equals(LABELS) for t in recorded.get("labels", []))


def test_the_feed_obeys_commands_for_its_patients_and_rejects_the_rest(nats_server):
    async def send(messages: list[tuple[str, dict | bytes]]) -> None:
        nc = await nats.connect(nats_server.url)
        for subject, body in messages:
            await nc.publish(subject, body if isinstance(body, bytes) else json.dumps(body).encode())
        await nc.flush()
        await nc.close()

    # a day every 2 s: each 0.5 s step is 6 h, commands apply between steps
    with running_feed(nats_server.url, patients=2, speed=43200.0, days=8.0) as (feed, heard, recorded):
        assert wait_for(lambda: feed.stats.ticks > 0, 30)
        asyncio.run(send([
            ("biopilot.control.p000001", {"type": "dose", "drug": "warfarin", "daily_mg": 7.5}),
            ("biopilot.control.p000000", {"type": "comedication", "drug": "amiodarone", "action": "start"}),
            ("biopilot.control.p000000", {"type": "event", "event": "sepsis", "magnitude": 1, "duration_h": 24}),
            ("biopilot.control.p000000", {"type": "comedication", "drug": "amiodarone", "action": "start"}),
            ("biopilot.control.p000000", {"type": "dose", "drug": "warfarin", "daily_mg": 90}),
            ("biopilot.control.p000000", b"not json"),
            ("biopilot.control.p000000", {"type": "event", "event": "sensor_dropout"}),  # which vital?
            ("biopilot.control.ghost", {"type": "stop"}),
            ("biopilot.control.r1", {"type": "setpoint", "name": "do_setpoint_pct", "value": 40}),
        ]))
        assert wait_for(lambda: feed.stats.commands == 4 and feed.stats.rejected_commands == 6, 20), \
            list(feed.stats.rejections)
        assert wait_for(lambda: any(d["patient_id"] == "p000001" and d["dose_mg"] == 7.5
                                    for d in heard.all_doses()), 20)
        assert wait_for(lambda: any(d["patient_id"] == "p000000" and d["drug"] == "amiodarone"
                                    for d in heard.all_doses()), 20)
        asyncio.run(send([("biopilot.control.p000001", {"type": "stop"})]))
        feed.thread.join(30)
        assert not feed.thread.is_alive() and "error" not in feed.result, feed.result
    reasons = list(feed.stats.rejections)
    assert any("already takes amiodarone" in r for r in reasons)  # valid, but not now
    assert any("warfarin is given up to 20 mg" in r for r in reasons) and any("not a JSON" in r for r in reasons)
    assert any(r.startswith("ghost: unknown patient") for r in reasons)
    assert any("sensor_dropout needs the faulty vital's signal" in r for r in reasons)
    labels = [Label(**row) for t in recorded["labels"] for row in t.to_pylist()]
    assert {(lab.fault, lab.reactor_id) for lab in labels} >= {("drug_interaction", "p000000"),
                                                                ("sepsis", "p000000")}
    assert any("does not match any of the expected tags" in r for r in reasons)  # a reactor's command


def test_a_supervised_patient_plant_closes_a_dead_cohort_and_goes_on_with_new_patients_after_it(nats_server,
                                                                                               tmp_path):
    lake, path = str(tmp_path / "lake"), tmp_path / "plant.json"
    began = datetime(2026, 3, 1, tzinfo=UTC)
    # a plant process died inside cohort 0 (seed 0), one more cohort to go
    Progress(seed=0, start=began.isoformat(), begun=True, batches_left=2).save(path)
    scenario = load_patient_scenario("warfarin_standard").with_overrides(days=1.0)
    feed = SupervisedPatients(Progress.load(path), path, lake, nats_server.url, scenario, 2, speed=None)

    async def the_dead_cohort_published_for_its_first_patient_only() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await publish_watermark(nc.jetstream(), "p000000", int(began.timestamp() * 1e6) + 3_600_000_000)
        finally:
            await nc.close()

    asyncio.run(the_dead_cohort_published_for_its_first_patient_only())
    asyncio.run(feed.close_interrupted())
    dead = delta.read(lake, "runs").to_pylist()  # the patient who published nothing has no run
    assert [r["reactor_id"] for r in dead] == ["p000000"] and all(r["ended_ts"] is None for r in dead)
    stats = asyncio.run(feed.run())
    assert stats.batches == 1 and feed.unit_ids == ["p000002", "p000003"]  # new people, new ids
    runs = delta.read(lake, "runs").to_pylist()
    assert len({r["run_id"] for r in runs}) == 3
    later = [r for r in runs if r["reactor_id"] in feed.unit_ids]
    assert all(r["started_ts"] >= began + timedelta(days=1) for r in later)  # past all the dead cohort's time
    assert delta.read(lake, "patients", columns=["patient_id"])["patient_id"].to_pylist() == feed.unit_ids
    done = Progress.load(path)
    assert (done.seed, done.begun, done.batches_left, done.ticks) == (2, False, 0, 2 * DAY_TICKS)
