"""A patient's risk from the outcome model (docs/OUTCOMES.md, "Serving"): the classification heads' calibrated
probabilities with their spread and conformal sets, the regression heads with their conformal intervals, the
explanation, the model version and the data watermark, served from the cache in Redis while the patient's
data has not changed (`outcomes.serving`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from dashboard.deps import Runtime, runtime, viewer
from dashboard.routers.control import live_units
from dashboard.routers.patients import PatientId
from outcomes.contract import PatientRecord
from outcomes.serving import Champion, RiskCache, RiskService, Seen, read_lake_records

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
    model_version: str
    data_watermark: datetime = Field(description="the latest event time in the data the answer was computed on")
    computed_at: datetime
    cached: bool = Field(description="served from the cache (the patient's data unchanged since)")
    data_behind_s: float = Field(description="how far the data used is behind the newest that has arrived (the "
                                             "lake catching up): 0 when current")


def service(request: Request, rt: Runtime = Depends(runtime)) -> RiskService:
    """One per app: the champion model (loaded on first use) and the cache on the dashboard's Redis."""
    state = request.app.state
    if getattr(state, "risk", None) is None:
        lake = rt.settings.lake

        async def records(patient_ids: Sequence[str], seen: Sequence[Seen]) -> dict[str, PatientRecord]:
            live = {p: where["run_id"] for p, where in (await live_units(rt)).items()}
            return await read_lake_records(lake, patient_ids, seen, live)

        state.risk = RiskService(Champion(lake), RiskCache(rt.redis), records)
    return state.risk


@router.get("/{patient_id}/risk", dependencies=[viewer], response_model=Risk,
            responses={404: {"description": "no data of this patient in the lake"},
                       503: {"description": "no outcome model to serve (none trained or shipped)"}})
async def get_risk(patient_id: PatientId, risk: RiskService = Depends(service)) -> dict:
    """The patient's risks now: from the cache when their data has not changed since the last answer, else
    computed from the lake (their live run, else their latest) and kept."""
    try:
        answer = await risk.risk(patient_id)
    except FileNotFoundError as err:
        raise HTTPException(503, f"no outcome model to serve: {err}") from None
    if answer is None:
        raise HTTPException(404, f"no data of patient {patient_id!r}")
    extra = answer.get("extra") or {}
    return answer | {"explained_head": extra.get("explained_head"), "not_applicable": extra.get("not_applicable", [])}
