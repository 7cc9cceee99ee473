"""The live risk scoring's decisions (`agents.risk_worker`) on a real nats-server: a patient is due when their
vitals close an hour, a risk crossing its head's threshold raises one alert (JetStream `ALERTS`) and a risk event
for the page, an unchanged risk publishes nothing, and falling back below the threshold clears the alert; a
stream of admissions from a shifted population opens one drift incident, said in words, updated while the drift
lasts and resolved when the population is back, and a stationary one none; bradycardia predictions resolve from
the measured heart rate and INR >= 4 predictions from the INRs drawn in their 7 days (late labs), and outcomes
that stop following the probabilities open one outcome drift incident per head (calibrated ones none)."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta

import nats
import pyarrow as pa

from agents.risk_worker import DETECTOR, HOUR_US, RiskWorker
from core.events import DOSES, LABS, VITALS
from outcomes.contract import PatientRecord
from outcomes.drift import MODEL_UNIT, open_drift_words
from sinks import delta
from sinks.table_writer import TableWriter

T0_US = 1_767_225_600 * 1_000_000  # 2026-01-01 00:00 UTC


def test_a_patient_is_due_when_their_vitals_close_an_hour():
    worker = RiskWorker("nats://unused", "redis://unused", "unused")
    for minutes in (5, 30, 55):
        worker.note_vitals("p1", T0_US + minutes * 60_000_000)
    assert worker.due == {}
    worker.note_vitals("p1", T0_US + 65 * 60_000_000)
    assert worker.due["p1"][0] == T0_US + HOUR_US  # the hour from T0 closed
    worker.note_vitals("p2", T0_US + 65 * 60_000_000)  # a first reading closes nothing
    assert "p2" not in worker.due
    worker.pending = {"inr_ge4_7d": {"p1": [(T0_US, 0.2)], "p2": [(T0_US, 0.3)]}}
    worker.forget("p1")  # p1's stream ended: their state goes, the hour due is still scored
    assert "p1" not in worker.hour_of and worker.pending["inr_ge4_7d"] == {"p2": [(T0_US, 0.3)]}
    assert "p1" in worker.due


def _answer(p: float, alert: bool) -> dict:
    head = {"name": "inr_ge4_7d", "kind": "probability", "estimate": p, "lo": p - 0.05, "hi": p + 0.05,
            "prediction_set": [1] if alert else [0], "threshold": 0.3, "alert": alert}
    ttr = {"name": "ttr_12w", "kind": "value", "estimate": 60.0, "lo": 40.0, "hi": 80.0, "prediction_set": None,
           "threshold": None, "alert": False}
    return {"patient_id": "p1", "run_id": "run-p1", "heads": {"inr_ge4_7d": head, "ttr_12w": ttr},
            "confidence": 0.8, "attributions": [{"feature": "inr", "share": 0.7, "hours_ago": [0, 120]}],
            "explanation": "INR trend drives 70 % of this risk", "model_version": "m1",
            "data_watermark": f"2026-01-0{2 if alert else 3}T00:00:00+00:00"}


def test_a_risk_over_its_threshold_alerts_once_and_clears_when_it_falls_back(nats_server):
    async def go() -> tuple[list[dict], list[dict]]:
        worker = RiskWorker(nats_server.url, "redis://unused", "unused")
        worker.nc = await nats.connect(nats_server.url)
        worker.js = worker.nc.jetstream()
        events, alerts = [], []

        async def on_risk(msg: nats.aio.msg.Msg) -> None:
            events.append(json.loads(msg.data))

        await worker.nc.subscribe("biopilot.risk.p1", cb=on_risk)
        sub = await worker.js.subscribe("biopilot.alerts.p1", stream="ALERTS")
        for answer in (_answer(0.45, True), _answer(0.455, True), _answer(0.1, False)):
            await worker.publish(answer)
        await worker.nc.flush()
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            alerts.append(json.loads(msg.data))
        await worker.nc.close()
        return events, alerts

    events, alerts = asyncio.run(go())
    assert [e["heads"]["inr_ge4_7d"]["estimate"] for e in events] == [0.45, 0.1]  # 0.455: not a change
    assert events[0]["kind"] == "risk" and events[0]["reactor_id"] == "p1"
    opened, cleared = alerts
    assert (opened["detector"], opened["member"], opened["score"], opened["threshold"]) == \
        (DETECTOR, "inr_ge4_7d", 0.45, 0.3)
    assert opened["signals"] == [{"name": "inr", "contribution": 0.7}]
    assert cleared["type"] == "clear" and cleared["alert_id"] == opened["alert_id"]


def _admissions(n: int, aa_share: float, seed: int) -> list[dict]:
    """`n` admissions' monitored inputs: VKORC1 A/A at `aa_share`, the rest as the reference population."""
    rng = random.Random(seed)
    return [{"vkorc1_1639": "A/A" if rng.random() < aa_share else rng.choice(("G/G", "G/A")),
             "age_years": rng.gauss(0.0, 1.0), "amiodarone": rng.random() < 0.1} for _ in range(n)]


def test_a_drift_incident_opens_in_words_updates_while_it_lasts_and_resolves_when_it_clears(nats_server,
                                                                                               tmp_path):
    async def go(admissions: list[dict], lake: str) -> tuple[list[dict], list[dict]]:
        worker = RiskWorker(nats_server.url, "redis://unused", lake, drift_reference=200)
        worker.nc = await nats.connect(nats_server.url)
        worker.js = worker.nc.jetstream()
        worker.writer = TableWriter(lake)
        chunks: list[dict] = []

        async def on_chunk(msg: nats.aio.msg.Msg) -> None:
            chunks.append(json.loads(msg.data))

        await worker.nc.subscribe("biopilot.agent.>", cb=on_chunk)
        sub = await worker.js.subscribe(f"biopilot.incidents.{MODEL_UNIT}", stream="ALERTS")
        for k in range(0, len(admissions), 25):  # as batches of first scorings come
            await worker.watch_inputs(admissions[k:k + 25], "m1")
        await worker.nc.flush()
        await worker.writer.flush()
        incidents = []
        while True:
            try:
                incidents.append(json.loads((await sub.next_msg(timeout=0.5)).data))
            except nats.errors.TimeoutError:
                break
        await sub.unsubscribe()
        await worker.nc.close()
        return incidents, chunks

    stationary, _ = asyncio.run(go(_admissions(500, 0.2, 1), str(tmp_path / "quiet")))
    assert stationary == []
    lake = str(tmp_path / "shifted")
    # the reference, 300 from a shifted population, then the reference population again
    events, chunks = asyncio.run(go(_admissions(200, 0.2, 2) + _admissions(300, 0.7, 3)
                                    + _admissions(300, 0.2, 4), lake))
    incident = events[0]
    assert (incident["reactor_id"], incident["run_id"], incident["event"]) == (MODEL_UNIT, "m1", "open")
    assert "vkorc1_1639=A/A" in incident["signals"]
    assert {e["incident_id"] for e in events} == {incident["incident_id"]}  # one incident, not one per check
    assert [e["version"] for e in events] == list(range(1, len(events) + 1))
    assert {e["event"] for e in events[1:-1]} <= {"update"} and events[-1]["event"] == "resolve"
    assert events[-1]["status"] == "resolved" and events[-1]["end_ts"] is not None
    words = [c["text"] for c in chunks if c["incident_id"] == incident["incident_id"]]
    assert "VKORC1 A/A share" in words[0] and "cleared" in words[-1] and chunks[-1]["done"]
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    rows = delta.read(lake, "incidents").sort_by("version")
    assert rows["event"].to_pylist() == [e["event"] for e in events]
    assert delta.read(lake, "agent_messages").sort_by("seq")["text"].to_pylist() == words
    assert open_drift_words(lake) == {}  # resolved: the answers no longer carry it


def test_predictions_resolve_from_the_measured_heart_rate_and_the_late_inr_labs(nats_server):
    worker = RiskWorker(nats_server.url, "redis://unused", "unused")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    head = {"kind": "probability", "estimate": 0.3}
    ts = [t0 + timedelta(minutes=5 * i) for i in range(1, 12 * 24 * 9)]  # 9 days of vitals
    for k, (hr, inr) in enumerate(((60.0, 2.5), (35.0, 4.4), (60.0, None))):
        # patient k: a slow hour 5 h after the prediction or none; an INR drawn on day 3 (4.4: over 4) or none
        worker.note_prediction({"patient_id": f"p{k}", "heads": {"bradycardia_24h": head, "inr_ge4_7d": head},
                                "data_watermark": t0.isoformat(), "extra": {}})
        vitals = pa.Table.from_pylist([{"run_id": "r", "patient_id": f"p{k}", "seq": i, "ts": t,
                                        "hr_bpm": hr if 5 <= i // 12 < 6 else 70.0} for i, t in enumerate(ts)],
                                      schema=VITALS)
        labs = pa.Table.from_pylist([] if inr is None else [
            {"run_id": "r", "patient_id": f"p{k}", "sample_ts": t0 + timedelta(days=3),
             "reported_ts": t0 + timedelta(days=3, hours=6), "inr": inr}], schema=LABS)
        day = PatientRecord({}, vitals.slice(0, 12 * 30), labs, DOSES.empty_table(), ts[12 * 30 - 1])
        assert worker.resolve(f"p{k}", PatientRecord({}, vitals.slice(0, 100), labs, day.doses, ts[99])) == {}
        assert worker.resolve(f"p{k}", day) == {"bradycardia_24h": [(0.3, int(hr < 40))]}  # the INR's 7 d: not yet
        week = PatientRecord({}, vitals, labs, day.doses, ts[-1])  # 7 days and the labs' wait passed
        assert worker.resolve(f"p{k}", week) == ({} if inr is None else {"inr_ge4_7d": [(0.3, int(inr >= 4))]})
        assert worker.pending["inr_ge4_7d"][f"p{k}"] == [] == worker.pending["bradycardia_24h"][f"p{k}"]


async def _outcome_incidents(url: str, worker: RiskWorker, resolved: dict, version: str) -> list[dict]:
    worker.nc = await nats.connect(url)
    worker.js = worker.nc.jetstream()
    sub = await worker.js.subscribe(f"biopilot.incidents.{MODEL_UNIT}", stream="ALERTS")
    await worker.watch_outcomes(resolved, version)
    await worker.nc.flush()
    found = []
    while True:
        try:
            found.append(json.loads((await sub.next_msg(timeout=0.5)).data))
        except nats.errors.TimeoutError:
            break
    await sub.unsubscribe()
    await worker.nc.close()
    return [e for e in found if e["run_id"] == version]  # the stream holds the versions before too


def test_outcomes_that_stop_following_the_predictions_open_one_incident_per_head(nats_server):
    worker = RiskWorker(nats_server.url, "redis://unused", "unused")
    rng = random.Random(5)
    informative = [(p, int(rng.random() < p)) for p in (rng.random() for _ in range(1200))]
    useless = [(p, int(rng.random() < 0.5)) for p in (rng.random() for _ in range(600))]
    # ranked as well as before but observed at half the rate predicted: the measured INR's coarser outcome
    undercounted = [(p, int(rng.random() < p / 2)) for p in (rng.random() for _ in range(1200))]
    heads = ("bradycardia_24h", "inr_ge4_7d")
    calibrated = asyncio.run(_outcome_incidents(nats_server.url, worker, dict.fromkeys(heads, informative), "m0"))
    assert calibrated == []  # as calibrated as when the window filled: none
    found = asyncio.run(_outcome_incidents(nats_server.url, worker, {
        "bradycardia_24h": informative[:600] + useless, "inr_ge4_7d": informative[:600] + useless}, "m1"))
    assert {(e["signals"][0], e["event"]) for e in found} >= {("bradycardia_24h", "open"), ("inr_ge4_7d", "open")}
    assert len({e["incident_id"] for e in found}) == 2
    # the INR head is judged on its ranking only: a low observed rate is not a drift there, for bradycardia it is
    found = asyncio.run(_outcome_incidents(nats_server.url, worker, dict.fromkeys(heads, undercounted), "m2"))
    assert {e["signals"][0] for e in found if e["event"] == "open"} == {"bradycardia_24h"}
