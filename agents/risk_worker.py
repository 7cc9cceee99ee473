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

Input drift: each patient's inputs at their first scoring since the worker started (an admission: a patient's
hourly rescoring repeats their genotype and would count one person many times) go to the drift monitor
(`outcomes.drift.FeatureDrift`, its reference the first `drift_reference` admissions). A drift opens an incident
for the model version (unit `outcome-model`) on `biopilot.incidents.outcome-model` and in the `incidents` table, and
the agents' words for it (`agents.phrasing.explain_drift`) go out as its chunks (agent `drift`) on
`biopilot.agent.<incident_id>` and into `agent_messages`: the dashboard shows it as any incident. While the
drift lasts the incident is updated when what drifted changes (explained again), and resolved when the monitor
has found no drift on `outcomes.drift.CLEAR_VERDICTS` checks in a row (`outcomes.drift.DriftLifecycle`). A new
champion learns its reference again.

Outcome drift, per head whose outcome the live data shows (`outcomes.live_learning.LIVE_HEADS`), each scored
prediction resolved (`resolve`) once its outcome is known (`outcomes.live_learning.live_outcome`) and fed to its
head's `outcomes.performance_drift.PerformanceDrift`, whose drift opens, updates and resolves the head's outcome
drift incident the same way:
- bradycardia within 24 h: once the patient's vitals cover its 24 h; 1 if an hour's mean measured heart rate
  fell below `outcomes.dataset.BRADY_HR_BPM`;
- INR >= 4 within 7 days: the INR labels arrive late, as lab results: once the vitals reach
  `outcomes.live_learning.INR_WAIT_H` past the 7 days (a draw late in the week reported); 1 if an INR sampled
  within the 7 days reached `inr_events.OVER_INR`, unresolved (dropped) if none was drawn. Drawn on some days
  only, the measured INR misses excursions the true INR the model learnt from makes, so its observed rate sits
  below the predicted: this head is judged on its ranking only (AUROC against its first full window,
  `calibration=False`).

Retraining from live traffic (`outcomes.live_learning.LiveLearning`): the scored patients are sampled (one a day
each) until their outcomes are known; while a drift incident of the served model is open, or once the schedule
says so, a challenger is fitted on them and registered, judged in shadow on the patients sampled after it, and
promoted when it beats the champion by the rule's margin (the served model then swaps within
`outcomes.serving.CHAMPION_CHECK_S`). Each step is logged and, through the registry, audited.

One risk worker per stack (`biopilot agents` starts it for the patient plant): its open alerts, the last
published risks and the drift monitor are its own.
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

import pyarrow.compute as pc
from nats.aio.msg import Msg

from agents.phrasing import explain_drift
from core.codec import decode_rows
from core.events import VITALS
from core.services import connect_nats, redis_client
from detectors.unit_monitor import alarm_clear
from outcomes.contract import PatientRecord
from outcomes.drift import MODEL_UNIT, MONITORED, DriftLifecycle, FeatureDrift, Shift, input_features
from outcomes.features import encode_records
from outcomes.live_learning import LIVE_HEADS, LiveLearning, live_outcome
from outcomes.performance_drift import PerformanceDrift
from outcomes.serving import Champion, RiskCache, RiskService, Seen, read_lake_records, to_us
from sinks.nats_sink import alert_json
from sinks.table_writer import TableWriter
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
    drift_reference: int = 400  # admissions the input drift monitor learns the population from
    drift: FeatureDrift | None = None  # made at the first admission (or given)
    drift_model: str | None = None  # the model version the monitor watches
    admitted: set[str] = field(default_factory=set)  # patients whose inputs the monitor has read
    # (model version, "inputs" or a head) -> its drift incident's lifecycle
    drift_lifecycles: dict[tuple[str, str], DriftLifecycle] = field(default_factory=dict)
    message_seq: dict[str, int] = field(default_factory=dict)  # incident -> its next agent message's seq
    writer: TableWriter | None = None  # incidents and agent messages to Delta
    # outcome drift: per head, per patient the predictions (watermark us, probability) waiting for their outcome
    pending: dict[str, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)
    outcome_drift: dict[str, PerformanceDrift] = field(default_factory=dict)  # head -> its monitor
    outcome_model: str | None = None
    live_retrain_patients: int = 200  # `LiveLearning.min_patients`; 0: no retraining from live traffic
    learning: LiveLearning | None = None  # made at start (or given)

    async def start(self) -> None:
        """Load the model (FileNotFoundError when there is none), then connect and listen."""
        champion = Champion(self.lake)
        await asyncio.to_thread(champion.get)  # now, not at the first closed hour
        self.nc = await connect_nats(self.nats_url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        self.js = self.nc.jetstream()
        self.redis = redis_client(self.redis_url)

        self.writer = TableWriter(self.lake)
        self.writer.task = asyncio.create_task(self.writer.run())
        if self.live_retrain_patients > 0 and self.learning is None:
            self.learning = LiveLearning(self.lake, min_patients=self.live_retrain_patients)

        async def records(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
            found = await read_lake_records(self.lake, patient_ids, seen)
            try:
                version = (await self.service.model()).version
                await self.admit(found, version)
                resolved: dict[str, list[tuple[float, int]]] = {}
                for patient, record in found.items():
                    for head, pairs in self.resolve(patient, record).items():
                        resolved.setdefault(head, []).extend(pairs)
                await self.watch_outcomes(resolved, version)
            except Exception:  # noqa: BLE001 - monitoring must not stop the scoring
                log.exception("drift monitoring failed")
            if self.learning is not None:
                try:
                    await asyncio.to_thread(self.learning.observe, found)
                except Exception:  # noqa: BLE001 - nor learning
                    log.exception("live retraining's sampling failed")
            return found

        self.service = RiskService(champion, RiskCache(self.redis), records)
        self.sub = await self.nc.subscribe("biopilot.telemetry.*", cb=self._on_vitals)
        self.task = asyncio.create_task(self._score_loop())

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.sub.unsubscribe()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.writer is not None and self.writer.task is not None:
            self.writer.task.cancel()
            await self.writer.flush()
        await self.nc.drain()
        await self.redis.aclose()

    async def _on_vitals(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(KIND_HEADER) == "watermark":  # the stream's closing watermark
            self.forget(msg.subject.rsplit(".", 1)[-1])
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

    def forget(self, patient: str) -> None:
        """The patient's run ended: their hour, last published answer and the predictions waiting for outcomes
        (no more data will resolve them) go; a last closed hour still due is scored."""
        self.hour_of.pop(patient, None)
        self.published.pop(patient, None)
        for by_patient in self.pending.values():
            by_patient.pop(patient, None)
        if self.learning is not None:
            self.learning.forget(patient)

    async def _score_loop(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.score_due()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a lake or Redis hiccup: the patients stay due, tried again
                log.exception("risk scoring failed")
            try:
                await self.learn()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - learning must not stop the scoring
                log.exception("live retraining failed")

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
                self.note_prediction(answer)
                self.scored += 1
        return len(answers)

    async def learn(self) -> str | None:
        """After a scoring batch: a waiting challenger judged, or one trained when due (`LiveLearning.step`, in
        a thread: it may train); the data's time is the newest vitals seen, the drift any open incident of the
        served model's."""
        if self.learning is None or not self.hour_of:
            return None
        champion = await self.service.model()
        drift = any(life.row is not None for (version, _), life in self.drift_lifecycles.items()
                    if version == champion.version)
        news = await asyncio.to_thread(self.learning.step, champion, max(self.hour_of.values()), drift)
        if news:
            log.warning("live retraining: %s", news)
        return news

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

    # ---- input drift ------------------------------------------------------------------------------------
    async def admit(self, records: dict[str, PatientRecord], model_version: str) -> None:
        """The inputs of the patients scored for the first time go to the drift monitor."""
        new = [p for p in records if p not in self.admitted]
        if not new:
            return
        self.admitted.update(new)
        inputs = await asyncio.to_thread(lambda: input_features(encode_records([records[p] for p in new])))
        await self.watch_inputs(inputs, model_version)

    async def watch_inputs(self, admissions: Sequence[dict], model_version: str) -> None:
        """Admissions' monitored inputs (`outcomes.drift.input_features`), in order; a drift opens the model
        version's incident (once)."""
        if self.drift is None or self.drift_model != model_version:  # a new champion: its population anew
            self.drift = FeatureDrift(MONITORED, reference_size=self.drift_reference)
            self.drift_model = model_version
        for x in admissions:
            self.drift.update(x)
            if self.drift.judged:
                await self.drift_verdict(model_version, "inputs", self.drift.drift_detected, shifts=self.drift.shifts)

    # ---- outcome drift ----------------------------------------------------------------------------------
    def note_prediction(self, answer: dict) -> None:
        """Keep the answer's probabilities of `LIVE_HEADS` until their outcomes show in the data."""
        at_us = to_us(datetime.fromisoformat(answer["data_watermark"]))
        not_applicable = (answer.get("extra") or {}).get("not_applicable", [])
        for name in LIVE_HEADS:
            head = answer["heads"].get(name)
            if head is not None and name not in not_applicable:
                self.pending.setdefault(name, {}).setdefault(answer["patient_id"], []).append(
                    (at_us, float(head["estimate"])))

    def resolve(self, patient: str, record: PatientRecord) -> dict[str, list[tuple[float, int]]]:
        """Per head, the patient's pending predictions whose outcome the record shows: (probability, outcome)."""
        out = {}
        for head in LIVE_HEADS:
            pending = self.pending.get(head, {}).get(patient)
            if not pending:
                continue
            left, done = [], []
            for at_us, probability in pending:
                outcome = live_outcome(head, record, at_us)
                if outcome is None:
                    left.append((at_us, probability))
                elif outcome >= 0:  # -1: the outcome cannot be known (no INR drawn): dropped
                    done.append((probability, outcome))
            self.pending[head][patient] = left
            if done:
                out[head] = done
        return out

    async def watch_outcomes(self, resolved: dict[str, Sequence[tuple[float, int]]], model_version: str) -> None:
        """Resolved (probability, outcome) pairs per head to the head's outcome monitor; its verdicts open,
        update and resolve the head's outcome drift incident."""
        if self.outcome_model != model_version:
            self.outcome_drift, self.outcome_model = {}, model_version
        for head, pairs in resolved.items():
            m = self.outcome_drift.setdefault(head, PerformanceDrift(calibration=head != "inr_ge4_7d"))
            for probability, outcome in pairs:
                m.update(probability, outcome)
                if m.judged:
                    await self.drift_verdict(model_version, head, m.drift_detected, performance={
                        "head": head, "reference_auroc": m.reference_auroc, "auroc": m.auroc, "ece": m.ece,
                        "window": m.window, "mean_probability": m.mean_probability,
                        "observed_rate": m.observed_rate})

    async def drift_verdict(self, model_version: str, monitor: str, detected: bool, shifts: Sequence[Shift] = (),
                            performance: dict | None = None) -> dict | None:
        """A monitor's check (`monitor`: "inputs" or a head): the incident event it makes, if any, published."""
        life = self.drift_lifecycles.setdefault((model_version, monitor), DriftLifecycle(model_version))
        event = life.verdict(detected, datetime.now(UTC), shifts=shifts, performance=performance)
        if event is None:
            return None
        row, findings = event
        await self.publish_drift(row, findings)
        return row

    async def publish_drift(self, row: dict, findings: dict) -> None:
        """A drift incident's event and its explanation, on NATS and in Delta."""
        await self.js.publish(f"biopilot.incidents.{MODEL_UNIT}", alert_json(row),
                              headers={"Nats-Msg-Id": f"{row['incident_id']}-{row['version']}"})
        chunks = drift_messages(row, findings, self.message_seq.get(row["incident_id"], 0))
        self.message_seq[row["incident_id"]] = chunks[-1]["seq"] + 1
        if row["status"] == "resolved":
            self.message_seq.pop(row["incident_id"])
        for chunk in chunks:
            payload = chunk | ({"findings": findings} if chunk["done"] else {})
            await self.nc.publish(f"biopilot.agent.{row['incident_id']}", json.dumps(payload, default=str).encode())
            if self.writer is not None:
                self.writer.put("agent_messages", chunk)
        if self.writer is not None:
            self.writer.put("incidents", row)
        log.warning("drift of %s %s: %s", row["run_id"], row["event"], ", ".join(row["signals"]))


def drift_messages(row: dict, findings: dict, first_seq: int = 0) -> list[dict]:
    """A drift incident's explanation (`agents.phrasing.explain_drift`) as `agent_messages` rows, the findings
    with the last."""
    chunks = explain_drift(findings)
    return [{"incident_id": row["incident_id"], "seq": first_seq + k, "agent": "drift", "text": text,
             "done": k == len(chunks) - 1, "findings_json": json.dumps(findings) if k == len(chunks) - 1 else None,
             "emitted_at": row["emitted_at"]} for k, text in enumerate(chunks)]
