"""The patient agents on a real lake written by the patient simulator: the knowledge base ranks the injected cause
first with evidence from the labs, doses, genotype and vitals; `biopilot diagnose`/`chat` take patient runs; the
troubleshooting workers explain a patient's incident over a real broker and cache; `bench agents --plant patient`
reports its keys."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import numpy as np
import pytest

from agents.chat import ask
from agents.diagnose import track
from agents.findings import stored_findings
from agents.llm import OfflineBackend
from agents.patient_benchmark import expected_cause, judged_diagnosis, label_incident
from agents.patient_benchmark import run as bench_run
from agents.patient_diagnose import (
    NORMAL_SPREAD,
    PatientEvidence,
    PatientRun,
    VitalMove,
    diagnose_patient_stored,
    gather_patient,
    load_patient_run,
    monitor_messages,
    rank_patient,
)
from agents.patient_knowledge import SIGNATURES, comedication_courses, warfarin_history
from agents.troubleshooting import Diagnosis
from agents.workers import Workers
from biopilot.simulate import PATIENT, simulate_to_lake
from core.events import VITAL_SIGNALS
from sinks import delta
from sinks.nats_sink import alert_json
from sources.patient.adverse_events import ADVERSE_EVENTS, event_effects
from sources.patient.scenarios import load_patient_scenario

T0 = datetime(2026, 1, 20, 12, tzinfo=UTC)


INTERACTION_SEED = 514  # its patient's INR is under 2 past initiation when amiodarone starts (an inr_low open)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One patient each of the composite (amiodarone, then a bleed) and of a pulse oximeter falling off, and a
    composite patient whose INR is low when amiodarone starts (`INTERACTION_SEED`)."""
    path = tmp_path_factory.mktemp("patient-agents") / "lake"
    for name, seed in (("amiodarone_then_bleed", 500), ("sensor_dropout", 500),
                       ("amiodarone_then_bleed", INTERACTION_SEED)):
        simulate_to_lake(load_patient_scenario(name), 1, seed, path, kind=PATIENT)
    return path


def _run_of(lake: Path, prefix: str) -> str:
    return next(r for r in sorted(delta.run_ids(lake)) if r.startswith(prefix))


def _labels(lake: Path, run_id: str) -> list[dict]:
    return delta.read(lake, "labels", run_ids=[run_id]).to_pylist()


def _answer(lake: Path, run_id: str, findings: list, fault: str) -> Diagnosis:
    """The diagnosis a label is judged by in `bench agents --plant patient`."""
    run = load_patient_run(lake, run_id)
    label = next(lab for lab in _labels(lake, run_id) if lab["fault"] == fault)
    found = label_incident(label, findings, run.vitals["ts"][-1].as_py())
    assert found is not None, f"no incident for {fault}"
    return judged_diagnosis(run, found, label)


def test_the_composite_patient_gets_the_interaction_then_the_bleed_with_evidence(lake):
    run_id = _run_of(lake, "amiodarone_then_bleed")
    findings = stored_findings(lake, run_id)  # the generic entry point dispatches on the run's tables

    top = _answer(lake, run_id, findings, "drug_interaction").top
    assert top is not None and top.fault == "drug_interaction"
    assert "amiodarone started on day" in top.evidence[0] and "warfarin" in top.evidence[0]
    assert top.action == ADVERSE_EVENTS["drug_interaction"].action

    bleed = _answer(lake, run_id, findings, "major_bleed").top
    assert bleed.fault == "major_bleed"
    assert any("hr_bpm" in e and "above this patient's" in e for e in bleed.evidence)
    as_dict = next(f for f in findings if f.diagnosis.top and f.diagnosis.top.fault == "major_bleed").as_dict()
    assert as_dict["plant"] == "patient" and as_dict["hypotheses"][0]["fault"] == "major_bleed"
    assert json.loads(json.dumps(as_dict, default=str))["reactor_id"] == as_dict["patient_id"]


def test_a_pulse_oximeter_off_the_finger_is_a_sensor_not_hypoxia(lake):
    run_id = _run_of(lake, "sensor_dropout")
    top = _answer(lake, run_id, diagnose_patient_stored(lake, run_id), "sensor_dropout").top
    assert top.fault == "sensor_dropout" and "spo2_pct was missing" in top.evidence[0]


def test_chat_answers_about_a_patient_from_the_same_findings(lake):
    text = " ".join(ask(lake, _run_of(lake, "amiodarone_then_bleed"), "why did the pulse go up?", OfflineBackend()))
    assert "Most likely cause: major_bleed" in text and "confirm with: Hb now" in text
    assert "drug_interaction" not in text  # only the incidents about the vital asked of


def test_each_vitals_pattern_ranks_its_own_event_first():
    # the catalogue's own time course, 6 h after onset, is recognised as its event
    for event in ("major_bleed", "sepsis", "hypotension", "bradycardia"):
        delta_at = event_effects(event, np.array([6.0]), 1.0)
        ev = PatientEvidence("run", "p1", T0, T0, origin=T0 - timedelta(days=10))
        ev.moves = {s: VitalMove(s, float(delta_at[s][0]), 80.0, 80.0 - float(delta_at[s][0]), T0)
                    for s in VITAL_SIGNALS}
        assert rank_patient(ev).top.fault == event, event


def test_a_lone_slow_reading_is_a_drifting_sensor_and_a_quiet_patient_abstains():
    ev = PatientEvidence("run", "p1", T0, T0, origin=T0 - timedelta(days=10))
    ev.moves = {s: VitalMove(s, 0.0, 80.0, 80.0, T0) for s in VITAL_SIGNALS}
    assert rank_patient(ev).abstained
    ev.moves["sbp_mmhg"] = VitalMove("sbp_mmhg", 5 * NORMAL_SPREAD["sbp_mmhg"], 180.0, 125.0, T0)
    ev.lead_onset_h = 6.0
    assert rank_patient(ev).top.fault == "sensor_drift"


def test_dose_history_and_courses_read_the_doses_table(lake):
    run = load_patient_run(lake, _run_of(lake, "amiodarone_then_bleed"))
    end = run.doses["ts"][-1].as_py()
    courses = comedication_courses(run.doses, end)
    assert [c.drug for c in courses] == ["amiodarone"] and courses[0].daily_mg == 200.0
    history = warfarin_history(run.doses, end - timedelta(days=7), end)
    assert history.due == 8 and history.current_mg is not None


def test_a_patient_just_admitted_has_evidence_without_history(lake):
    # live, an incident can open in the first hour: no previous day, no labs, no doses yet
    full = load_patient_run(lake, _run_of(lake, "sensor_dropout"))
    run = PatientRun(full.run_id, full.vitals.sort_by("seq").slice(0, 12))
    at = run.vitals["ts"][6].as_py()
    ev = gather_patient(run, at, at + timedelta(hours=12))
    assert ev.ticks_seen > 0 and not ev.labs and not ev.courses
    assert rank_patient(ev).abstained  # nothing moved: no cause named


def test_an_inr_episode_is_scored_against_its_injected_cause():
    label = {"fault": "over_anticoagulation", "root_cause": ADVERSE_EVENTS["drug_interaction"].root_cause}
    assert expected_cause(label) == "drug_interaction"
    assert expected_cause({"fault": "subtherapeutic", "root_cause": "dose too low"}) == "subtherapeutic"
    assert set(SIGNATURES) == set(ADVERSE_EVENTS)


def test_the_workers_explain_a_patient_incident_from_the_lake(nats_server, redis_server, lake):
    run_id = _run_of(lake, "amiodarone_then_bleed")
    label = next(lab for lab in _labels(lake, run_id) if lab["fault"] == "major_bleed")
    at = label["start_ts"] + timedelta(hours=4)
    alert = {"alert_id": "bleed-1", "run_id": run_id, "reactor_id": "p000000", "seq": 1, "ts": at,
             "detector": "patient_monitor", "member": "news2", "score": 7.0, "threshold": 5.0,
             "severity": "critical", "signals": [{"name": "hr_bpm", "contribution": 0.6},
                                                  {"name": "sbp_mmhg", "contribution": 0.4}],
             "emitted_at": datetime.now(UTC)}

    async def go() -> list[dict]:
        w = Workers(nats_server.url, redis_server.url, str(lake), OfflineBackend(), plant="patient")
        await w.start()
        nc = await nats.connect(nats_server.url)
        chunks: list[dict] = []

        async def on_chunk(msg) -> None:  # noqa: ANN001
            chunks.append(json.loads(msg.data))

        await nc.subscribe("biopilot.agent.>", cb=on_chunk)
        await nc.flush()
        await nc.jetstream().publish("biopilot.alerts.p000000", alert_json(alert))
        for _ in range(200):
            if any(c.get("findings") for c in chunks):
                break
            await asyncio.sleep(0.1)
        await nc.close()
        await w.stop()
        return chunks

    chunks = asyncio.run(go())
    final = next(c for c in chunks if c.get("findings"))
    assert final["findings"]["hypotheses"][0]["fault"] == "major_bleed"
    assert any("Most likely cause: major_bleed" in c["text"] for c in chunks)


def test_an_interaction_days_into_an_open_inr_incident_is_explained_again(nats_server, redis_server, lake):
    # the patient's monitor, replayed up to the bleed: a low INR opens an incident; amiodarone, started days later,
    # joins it (same lead signal, its alarm still on); the workers explain that update from its own alert on
    run = load_patient_run(lake, _run_of(lake, f"amiodarone_then_bleed-s{INTERACTION_SEED}-"))
    bleed = next(lab for lab in _labels(lake, run.run_id) if lab["fault"] == "major_bleed")
    messages = [m for m in monitor_messages(run) if m["ts"] < bleed["start_ts"]]
    assert any({"inr_low", "interaction"} <= {a["member"] for a in alerts} for _, alerts in track(messages))

    async def go() -> list[dict]:
        w = Workers(nats_server.url, redis_server.url, str(lake), OfflineBackend(), plant="patient")
        await w.start()
        nc = await nats.connect(nats_server.url)
        final: list[dict] = []

        async def on_chunk(msg) -> None:  # noqa: ANN001
            chunk = json.loads(msg.data)
            if chunk.get("findings"):
                final.append(chunk["findings"])

        await nc.subscribe("biopilot.agent.>", cb=on_chunk)
        await nc.flush()
        js = nc.jetstream()
        for m in sorted(messages, key=lambda m: (m["ts"], "type" in m)):
            await js.publish(f"biopilot.alerts.{m['reactor_id']}", alert_json(m))
        for _ in range(300):
            if any(f["hypotheses"] and f["hypotheses"][0]["fault"] == "drug_interaction" for f in final):
                break
            await asyncio.sleep(0.1)
        await nc.close()
        await w.stop()
        return final

    tops = [f["hypotheses"][0]["fault"] for f in asyncio.run(go()) if f["hypotheses"]]
    assert "drug_interaction" in tops, tops


def test_bench_agents_patient_reports_its_keys():
    res = bench_run(seeds=1, normal_runs=1, only=("sensor_stuck",)).as_json()
    assert {"top1", "top3", "incidents_on_normal_runs"} <= set(res)
    assert res["per_archetype"]["sensor_stuck"]["top1"] == 1.0
    json.dumps(res, allow_nan=False)  # standard JSON: no NaN


def test_bench_agents_patient_refuses_bad_input_in_one_line():
    out = subprocess.run([sys.executable, "-m", "biopilot.cli", "bench", "agents", "--plant", "patient", "--seeds",
                          "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
