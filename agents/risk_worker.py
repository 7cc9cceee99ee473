"""Live risk scoring (the patient plant): every patient scored by the outcome model when their hourly aggregate
closes, risk changes streamed to the dashboard and alerts raised when a risk crosses its head's threshold
(docs/OUTCOMES.md, "Serving").

Fed by the live feed on NATS: when a patient's vitals (`biopilot.telemetry.<patient>`) pass into a new hour, the
hour before has closed and the patient is due. Every `every_s` (5 s) the due patients are scored in one batch
(`outcomes.serving.RiskService`, fresh from the lake and kept in the cache the API reads). The lake lags NATS by
the flow's flush: a patient whose record does not reach the closed hour yet stays due, for at most `settle_s`.

- A patient whose probabilities moved by `MIN_CHANGE` or more since the last published ones (or whose alert
  flags changed) gets an event on `biopilot.risk.<patient>`: the relay puts it on the dashboard's `twin` SSE
  stream as event `risk`.
- A classification head whose `alert` turns on (its probability crossed the head's threshold) raises an alert
  on `biopilot.alerts.<patient>` (detector `outcome_model`, member the head, the attributions as signals); when
  it turns off, the alert is cleared. The incidents and explanations follow as for the monitor's alerts.

One risk worker per stack (`biopilot agents` starts it for the patient plant): its open alerts and the last
published risks are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import nats
import pyarrow.compute as pc
from nats.aio.msg import Msg

from core.codec import decode_rows
from core.events import VITALS
from core.services import redis_client
from detectors.unit_monitor import alarm_clear
from outcomes.contract import PatientRecord
from outcomes.serving import Champion, RiskCache, RiskService, Seen, read_lake_records, to_us
from sinks.nats_sink import alert_json
from sources.telemetry import KIND_HEADER

log = logging.getLogger(__name__)
DETECTOR = "outcome_model"
HOUR_US = 3_600_000_000
MIN_CHANGE = 0.01  # a probability change worth an event on the page
CRITICAL_SHARE = 2.0  # a probability at twice its head's threshold (or 0.9) makes the alert critical


def risk_event(answer: dict) -> dict:
    """The page's event of an answer: the heads, the explanation, the model and the watermark."""
    return {"kind": "risk", "reactor_id": answer["patient_id"], "patient_id": answer["patient_id"],
            "run_id": answer["run_id"], "heads": answer["heads"], "confidence": answer["confidence"],
            "explanation": answer["explanation"], "model_version": answer["model_version"],
            "data_watermark": answer["data_watermark"],
            "not_applicable": (answer.get("extra") or {}).get("not_applicable", [])}


def risk_alert(answer: dict, head: dict) -> dict:
    """The alert of a head whose probability crossed its threshold (the monitor's alert keys)."""
    run, at = answer["run_id"], answer["data_watermark"]
    alert_id = hashlib.sha1(f"{run}|{at}|{DETECTOR}|{head['name']}".encode()).hexdigest()[:16]
    threshold = head["threshold"] or 0.5
    return {"alert_id": alert_id, "run_id": run, "reactor_id": answer["patient_id"], "seq": None,
            "ts": at, "detector": DETECTOR, "member": head["name"], "score": head["estimate"],
            "threshold": threshold,
            "severity": "critical" if head["estimate"] >= min(0.9, CRITICAL_SHARE * threshold) else "warning",
            "signals": [{"name": a["feature"], "contribution": a["share"]} for a in answer["attributions"][:5]],
            "explanation": answer["explanation"], "emitted_at": datetime.now(UTC)}


def changed(before: dict | None, after: dict) -> bool:
    """Whether an answer differs from the last published one by a probability step or an alert flag."""
    if before is None:
        return True
    for name, head in after["heads"].items():
        old = before["heads"].get(name)
        if old is None or old["alert"] != head["alert"] or \
                (head["kind"] == "probability" and abs(old["estimate"] - head["estimate"]) >= MIN_CHANGE):
            return True
    return False


@dataclass
class RiskWorker:
    nats_url: str
    redis_url: str
    lake: str
    # the pause between batches of due patients: bounds the worker's share of the cores when a replay closes
    # an hour a second (at live speed an hour closes once an hour), each batch one forward pass
    every_s: float = 5.0
    settle_s: float = 10.0  # how long a due patient waits for the lake to reach their closed hour
    hour_of: dict[str, int] = field(default_factory=dict)  # patient -> the hour (us) of their newest vitals
    due: dict[str, tuple[int, float]] = field(default_factory=dict)  # patient -> (closed hour end us, since)
    published: dict[str, dict] = field(default_factory=dict)  # patient -> the last answer published
    open_alerts: dict[tuple[str, str], dict] = field(default_factory=dict)  # (patient, head) -> its alert
    scored: int = 0

    async def start(self) -> None:
        """Load the model (FileNotFoundError when there is none), then connect and listen."""
        champion = Champion(self.lake)
        await asyncio.to_thread(champion.get)  # now, not at the first closed hour
        self.nc = await nats.connect(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.js = self.nc.jetstream()
        self.redis = redis_client(self.redis_url)

        async def records(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
            return await read_lake_records(self.lake, patient_ids, seen)

        self.service = RiskService(champion, RiskCache(self.redis), records)
        self.sub = await self.nc.subscribe("biopilot.telemetry.*", cb=self._on_vitals)
        self.task = asyncio.create_task(self._score_loop())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.nc.drain()
        await self.redis.aclose()

    async def _on_vitals(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(KIND_HEADER) == "watermark":
            return
        try:
            vitals = decode_rows(msg.data, VITALS)
        except Exception:  # noqa: BLE001 - the flow dead-letters bad payloads; nothing to score here
            return
        if vitals.num_rows:
            self.note_vitals(msg.subject.rsplit(".", 1)[-1], pc.max(vitals["ts"]).value)

    def note_vitals(self, patient: str, newest_us: int) -> None:
        """The patient's vitals reached `newest_us`: an hour that closed makes them due."""
        hour = newest_us // HOUR_US * HOUR_US
        before = self.hour_of.get(patient)
        if before is not None and hour > before:
            self.due[patient] = (hour, self.due.get(patient, (0, time.monotonic()))[1])
        self.hour_of[patient] = max(hour, before or hour)

    async def _score_loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.score_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a lake or Redis hiccup: the patients stay due, tried again
                log.exception("risk scoring failed")

    async def score_due(self) -> int:
        """Score the due patients in one batch; publish what changed. How many were scored."""
        if not self.due:
            return 0
        due, self.due = self.due, {}
        answers = await self.service.risk_many(list(due), use_cache=False)
        now = time.monotonic()
        for patient, (closed_us, since) in due.items():
            answer = answers.get(patient)
            reached = answer is not None and to_us(datetime.fromisoformat(answer["data_watermark"])) >= closed_us
            if not reached and now - since < self.settle_s:
                self.due.setdefault(patient, (closed_us, since))  # the lake has not caught up yet
                continue
            if answer is not None:
                await self.publish(answer)
                self.scored += 1
        return len(answers)

    async def publish(self, answer: dict) -> None:
        patient = answer["patient_id"]
        if changed(self.published.get(patient), answer):
            await self.nc.publish(f"biopilot.risk.{patient}", json.dumps(risk_event(answer)).encode())
            self.published[patient] = answer
        for name, head in answer["heads"].items():
            key = (patient, name)
            if head["kind"] != "probability":
                continue
            if head["alert"] and key not in self.open_alerts:
                alert = risk_alert(answer, head)
                await self.js.publish(f"biopilot.alerts.{patient}", alert_json(alert),
                                      headers={"Nats-Msg-Id": alert["alert_id"]})
                self.open_alerts[key] = alert
            elif not head["alert"] and key in self.open_alerts:
                clear = alarm_clear(self.open_alerts.pop(key), answer["data_watermark"])
                await self.js.publish(f"biopilot.alerts.{patient}", alert_json(clear),
                                      headers={"Nats-Msg-Id": f"clear-{clear['alert_id']}"})
