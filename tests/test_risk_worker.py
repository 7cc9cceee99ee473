"""The live risk scoring's decisions (`agents.risk_worker`) on a real nats-server: a patient is due when their
vitals close an hour, a risk crossing its head's threshold raises one alert (JetStream `ALERTS`) and a risk event
for the page, an unchanged risk publishes nothing, and falling back below the threshold clears the alert."""

from __future__ import annotations

import asyncio
import json

import nats

from agents.risk_worker import DETECTOR, HOUR_US, RiskWorker

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
