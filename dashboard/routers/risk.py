"""A patient's risk from the outcome model (docs/OUTCOMES.md, "Serving"): the classification heads' calibrated
probabilities with their spread and conformal sets, the regression heads with their conformal intervals, the
explanation, the model version and the data watermark, served from the cache in Redis while the patient's
data has not changed (`outcomes.serving`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from dashboard.deps import Runtime, runtime, viewer
from dashboard.routers.control import live_units
from dashboard.routers.patients import PatientId
from outcomes.contract import CheckpointError, PatientRecord
from outcomes.drift import open_drift_words
from outcomes.serving import Champion, RecordStore, RiskCache, RiskService, Seen, read_lake_records

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/patients", tags=["patients"])


class HeadRisk(BaseModel):
    name: str
    kind: Literal["probability", "value"]
    estimate: float = Field(description="probability (calibrated) or value (INR, TTR %)")
    lo: float = Field(description="probability: the ensemble's spread; value: the conformal interval's low end")
    hi: float
    prediction_set: list[int] | None = Field(None, description="the conformal set at 90 %: [0], [1] or [0, 1]")
    threshold: float | None = Field(None, description="the probability from which the head alerts")
    alert: bool = False


class AttributionOut(BaseModel):
    feature: str
    share: float = Field(description="share of the prediction's attribution, 0-1")
    hours_ago: list[float] | None = Field(None, description="the time span (newest, oldest) of a time series")


class Risk(BaseModel):
    patient_id: str
    run_id: str
    heads: dict[str, HeadRisk]
    confidence: float = Field(description="0-1: how much the ensemble agrees and the data covers the window")
    attributions: list[AttributionOut]
    explanation: str
    explained_head: str | None = Field(None, description="the head the explanation is about")
    not_applicable: list[str] = Field(default_factory=list, description="heads that do not apply to this patient "
                                                                        "(bradycardia without metoprolol)")
    served_by: dict[str, str] = Field(default_factory=dict, description="per risk, the model version's predictor: "
                                      "`hybrid` (the network) or `logistic_regression` (where it ranked the "
                                      "validation patients better)")
    model_version: str
    data_watermark: datetime = Field(description="the latest event time in the data the answer was computed on")
    computed_at: datetime
    cached: bool = Field(description="served from the cache (the patient's data unchanged since)")
    data_behind_s: float = Field(description="how far the data used is behind the newest that has arrived (the "
                                             "lake catching up): 0 when current")
    model_drift: str | None = Field(None, description="the served model's open input drift incident, in the "
                                                      "agents' words (the lake's, at most `DRIFT_CHECK_S` old)")


DRIFT_CHECK_S = 30.0


class DriftWords:
    """The open drift incidents' words per model version (`outcomes.drift.open_drift_words`), re-read from the
    lake in the background at most every `DRIFT_CHECK_S`: a request never waits for the lake."""

    def __init__(self, lake: str) -> None:
        self.lake, self.words, self.checked = lake, {}, -DRIFT_CHECK_S
        self.task: asyncio.Task | None = None

    def get(self, model_version: str) -> str | None:
        if time.monotonic() - self.checked >= DRIFT_CHECK_S and (self.task is None or self.task.done()):
            self.checked = time.monotonic()
            self.task = asyncio.create_task(self._read())
        return self.words.get(model_version)

    async def _read(self) -> None:
        try:
            self.words = await asyncio.to_thread(open_drift_words, self.lake)
        except Exception:  # noqa: BLE001 - the answer goes on without the note; tried again later
            log.exception("reading the drift incidents failed")


def service(request: Request, rt: Runtime = Depends(runtime)) -> RiskService:
    """One per app: the champion model (loaded on first use) and the cache on the dashboard's Redis."""
    state = request.app.state
    if getattr(state, "risk", None) is None:
        lake = rt.settings.lake

        async def from_lake(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
            live = {p: where["run_id"] for p, where in (await live_units(rt)).items()}
            return await read_lake_records(lake, patient_ids, seen, live)

        # the relay's records as they arrive, the lake the cold fallback (a dashboard without a relay: the lake)
        store: RecordStore | None = getattr(state, "risk_records", None)

        async def records(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
            return await store.read(patient_ids, seen, from_lake)

        state.risk = RiskService(Champion(lake), RiskCache(rt.redis), records if store else from_lake)
        state.drift_words = DriftWords(lake)
    return state.risk


@router.get("/{patient_id}/risk", dependencies=[viewer], response_model=Risk,
            responses={404: {"description": "no data of this patient in the lake"},
                       503: {"description": "no outcome model to serve (none trained or shipped)"}})
async def get_risk(patient_id: PatientId, request: Request, risk: RiskService = Depends(service)) -> dict:
    """The patient's risks now: from the cache when their data has not changed since the last answer, else
    computed from their record as it arrived (the lake's at their first request: their live run, else their
    latest) and kept."""
    try:
        answer = await risk.risk(patient_id)
    except (FileNotFoundError, CheckpointError) as err:
        raise HTTPException(503, f"no outcome model to serve: {err}") from None
    if answer is None:
        raise HTTPException(404, f"no data of patient {patient_id!r}")
    extra = answer.get("extra") or {}
    return answer | {"explained_head": extra.get("explained_head"), "not_applicable": extra.get("not_applicable", []),
                     "served_by": extra.get("served_by", {}),
                     "model_drift": request.app.state.drift_words.get(answer["model_version"])}
