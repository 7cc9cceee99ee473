"""`GET /api/patients/{patient_id}/risk` on a real dashboard (nats-server, redis-server, the relay) with the
shipped outcome model over a lake of simulated patients: typed answers, a hit the second time, the served
model's drift incident in words, a lab arriving on NATS (before the lake has it) makes the next answer fresh with
the lab's watermark, the refusals (unknown patient, bad id, no token), and a champion this code cannot read
answered as a 503 that says why."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nats
import pyarrow as pa
import pytest
import torch

from agents.risk_worker import drift_messages
from core.events import AGENT_MESSAGES, INCIDENTS
from outcomes import registry
from outcomes.contract import CLASS_HEADS, REGRESSION_HEADS
from outcomes.drift import Shift, drift_incident
from outcomes.features import STATIC
from outcomes.model import load_model
from sinks import delta
from sources.publish import publish_assays
from tests.dashboard_helpers import Dashboard, wait_for
from tests.test_risk_serving import new_lab, write_patients

PATIENT = "p000000"


@pytest.fixture(scope="module")
def dash(start_module_dashboard) -> Dashboard:
    dash = start_module_dashboard(plant="patient")
    write_patients(Path(dash.lake))
    # the served model's inputs drifted (as the risk worker records it): the answers carry it in words
    row, findings = drift_incident(load_model().version, datetime.now(UTC),
                                   shifts=[Shift("vkorc1_1639", "A/A", 0.22, 0.57, 1e-9)])
    delta.append(dash.lake, "incidents", pa.Table.from_pylist([row], schema=INCIDENTS), INCIDENTS)
    delta.append(dash.lake, "agent_messages", pa.Table.from_pylist(drift_messages(row, findings),
                                                                   schema=AGENT_MESSAGES), AGENT_MESSAGES)
    return dash


def test_risk_is_typed_and_the_second_answer_is_the_cached_one(dash):
    with dash.client("viewer") as c:
        first = c.get(f"/api/patients/{PATIENT}/risk")
        again = c.get(f"/api/patients/{PATIENT}/risk").json()
    assert first.status_code == 200, first.text
    first = first.json()
    assert set(first["heads"]) == {*CLASS_HEADS, *REGRESSION_HEADS}
    for name in CLASS_HEADS:
        head = first["heads"][name]
        assert head["kind"] == "probability" and 0 <= head["lo"] <= head["estimate"] <= head["hi"] <= 1
        assert head["threshold"] is not None
    assert first["heads"]["inr_3d"]["lo"] <= first["heads"]["inr_3d"]["estimate"] <= first["heads"]["inr_3d"]["hi"]
    assert first["explanation"] and first["model_version"] and 0 <= first["confidence"] <= 1
    assert first["served_by"] == load_model().served_by  # per risk, the network or logistic regression
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["data_watermark"] == first["data_watermark"] and again["heads"] == first["heads"]


def test_the_served_models_open_drift_incident_comes_with_the_answer_in_words(dash):
    with dash.client("viewer") as c:  # read from the lake in the background: a later answer carries it
        answer = wait_for(lambda: c.get(f"/api/patients/{PATIENT}/risk").json().get("model_drift"), timeout_s=10)
    assert answer and "VKORC1 A/A share 22 % → 57 %" in answer


def test_a_lab_arriving_on_nats_makes_the_next_answer_fresh_with_its_watermark(dash):
    with dash.client("viewer") as c:
        before = c.get(f"/api/patients/{PATIENT}/risk").json()
        assert c.get(f"/api/patients/{PATIENT}/risk").json()["cached"]
        lab = new_lab(Path(dash.lake), PATIENT, inr=5.5)  # the flow has not written it to the lake yet:

        async def publish() -> None:  # the relay sees it arrive and keeps it in the patient's record
            nc = await nats.connect(dash.nats_url)
            await publish_assays(nc.jetstream(), PATIENT, lab)
            await nc.close()

        asyncio.run(publish())
        reported = lab["reported_ts"][0].as_py()

        def answer_with_the_lab() -> dict | None:
            answer = c.get(f"/api/patients/{PATIENT}/risk").json()
            return answer if datetime.fromisoformat(answer["data_watermark"]) == reported else None

        fresh = wait_for(answer_with_the_lab, timeout_s=10)
    assert fresh, "the answer never moved to the new lab's watermark"
    assert datetime.fromisoformat(before["data_watermark"]) < reported
    assert not fresh["cached"] and fresh["data_behind_s"] == 0


def test_unknown_patient_404_bad_id_422_and_no_token_401(dash):
    with dash.client("viewer") as c:
        assert c.get("/api/patients/p999999/risk").status_code == 404
        assert c.get("/api/patients/p0.1/risk").status_code == 422
    with dash.client(None) as c:
        assert c.get(f"/api/patients/{PATIENT}/risk").status_code == 401


@dataclass(frozen=True)
class NewerCheckpoint:
    """The shipped model as a newer biopilot would write it: reading one static input more than this code encodes."""

    version: str = "outcome-29990101T000000Z-00000000"

    def save(self, directory: Path) -> Path:
        blob = load_model().to_blob() | {"version": self.version}
        blob["config"] = blob["config"] | {"static_inputs": len(STATIC) + 1}
        buf = io.BytesIO()
        torch.save(blob, buf)
        path = Path(directory) / f"{self.version}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
        return path


def test_a_champion_this_code_cannot_read_is_a_503_that_says_why(start_module_dashboard):
    """Promoted by a newer version sharing the lake: refused at load (not a shape error at the first prediction),
    and the API says so instead of failing with a 500."""
    dash = start_module_dashboard(plant="patient")
    write_patients(Path(dash.lake), patients=1)
    newer = NewerCheckpoint()
    registry.register(dash.lake, newer, data_snapshot="a newer biopilot's training", metrics={}, actor="test")
    registry.promote(dash.lake, newer.version, actor="test")
    with dash.client("viewer") as c:
        answer = c.get(f"/api/patients/{PATIENT}/risk")
    assert answer.status_code == 503, answer.text
    assert f"reads {len(STATIC) + 1} static inputs" in answer.json()["detail"]
    assert "newer version" in answer.json()["detail"]
