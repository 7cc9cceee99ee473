"""The patient plant's API: the cohort overview (one row per patient), one patient's stored vitals with their
NEWS2, labs, doses, the twin's INR forecast, adverse-event labels and the agent's diagnosis, and the controls
(dose change, hold, co-medication, an injected event, stop) to a live patient, audited like a reactor's.

Stored rows are read per run (`run_id`: one run per patient); a control goes to the live patient's id
(`patient_id`), the token of its NATS subject `biopilot.control.<patient>`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from pydantic import Field

from core.events import SEVERITY_RANK, VITAL_SIGNALS
from dashboard.auth import Principal
from dashboard.deps import Runtime, is_operator, runtime, viewer
from dashboard.models import Accepted, IdPath
from dashboard.relay import news2, thin, tick_event
from dashboard.routers.control import UNIT_ID_PATTERN, control_unit, live_units, stop_needs_admin
from sinks import delta
from sources.patient.commands import (
    COMEDICATIONS,
    INJECTABLE_EVENTS,
    MAX_DAILY_MG,
    ComedicationCommand,
    DoseCommand,
    EventCommand,
    HoldCommand,
    StopCommand,
)
from sources.patient.inr_events import OVER_INR, SUB_INR, initiation_end_h
from sources.patient.news2 import EMERGENCY, URGENT

router = APIRouter(prefix="/api/patients", tags=["patients"])
PatientId = Annotated[str, Path(pattern=UNIT_ID_PATTERN, description="a live patient's id, e.g. p000003")]
# the commands a clinician sends from the page (the feed also takes the replay's pause/resume: not from here)
PatientControl = Annotated[DoseCommand | HoldCommand | ComedicationCommand | EventCommand | StopCommand,
                           Field(discriminator="type")]
# the therapeutic INR range of warfarin (VTE, atrial fibrillation), and where over-anticoagulation begins
INR_RANGE = (SUB_INR, 3.0)
INR_HIGH = OVER_INR
STATUS_RANK = {"unknown": -1, "stable": 0, "warning": 1, "critical": 2}


def _t(ts: object) -> float | None:
    return None if ts is None else round(ts.timestamp(), 3)  # type: ignore[attr-defined]


def _num(x: object) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 3)  # type: ignore[arg-type]


def latest_complete_vitals(vitals: pa.Table) -> pa.Table:
    """Each run's last row with all six vitals present (a dropped-out probe leaves gaps: NEWS2 needs all)."""
    complete = pc.fill_null(pc.and_(*[pc.is_finite(vitals[s]) for s in VITAL_SIGNALS[:2]]), False)
    for s in VITAL_SIGNALS[2:]:
        complete = pc.and_(complete, pc.fill_null(pc.is_finite(vitals[s]), False))
    rows = vitals.filter(complete).sort_by([("run_id", "ascending"), ("seq", "ascending")])
    if rows.num_rows == 0:
        return rows
    runs = rows["run_id"].to_numpy(zero_copy_only=False)
    return rows.take(pa.array(np.flatnonzero(np.append(runs[1:] != runs[:-1], True))))


def patient_status(news2_now: float | None, inr: float | None, incident_severity: str | None,
                   news2_single: float | None = None, initiating: bool = False) -> tuple[str, list[str]]:
    """The worst of the NEWS2 response band (aggregate 7+: critical; 5-6 or 3 points in one parameter:
    warning), the last INR against the therapeutic range (a low one not while `initiating`: the INR is still
    climbing to range, as `sources.patient.inr_events` counts it) and the open incidents, with the reasons (no
    reading at all: unknown).

    >>> patient_status(7, 2.5, None)
    ('critical', ['NEWS2 7'])
    >>> patient_status(3, 3.4, None, news2_single=3)
    ('warning', ['NEWS2 3 (3 in one parameter)', 'INR 3.4 out of 2-3'])
    >>> patient_status(2, 1.4, None, initiating=True)
    ('stable', [])
    """
    if news2_now is None and inr is None and incident_severity is None:
        return "unknown", []
    rank, why = 0, []
    if news2_now is not None and news2_now >= URGENT:
        rank = max(rank, 2 if news2_now >= EMERGENCY else 1)
        why.append(f"NEWS2 {news2_now:g}")
    elif news2_now is not None and news2_single is not None and news2_single >= 3:
        rank = max(rank, 1)
        why.append(f"NEWS2 {news2_now:g} (3 in one parameter)")
    if inr is not None and inr >= INR_HIGH:
        rank = 2
        why.append(f"INR {inr:g} >= {INR_HIGH:g}")
    elif inr is not None and (inr > INR_RANGE[1] or inr < INR_RANGE[0] and not initiating):
        rank = max(rank, 1)
        why.append(f"INR {inr:g} out of {INR_RANGE[0]:g}-{INR_RANGE[1]:g}")
    if incident_severity in ("warning", "critical"):
        rank = max(rank, SEVERITY_RANK[incident_severity])
        why.append(f"open {incident_severity} incident")
    return ["stable", "warning", "critical"][rank], why


def open_incidents(incidents: pa.Table | None) -> dict[str, list[dict]]:
    """run -> its incidents (latest version of each) that are not resolved."""
    latest: dict[str, dict] = {}
    for row in [] if incidents is None else incidents.to_pylist():
        if row["incident_id"] not in latest or row["version"] > latest[row["incident_id"]]["version"]:
            latest[row["incident_id"]] = row
    out: dict[str, list[dict]] = {}
    for row in latest.values():
        if row["status"] != "resolved":
            out.setdefault(row["run_id"], []).append(row)
    return out


def cohort(lake: str, live: dict[str, dict], limit: int = 200) -> list[dict]:
    """One row per patient run: who (covariates), whether live, status, last INR and when, NEWS2 now, the last
    warfarin dose, open incidents and their alerts. `live`: unit id -> {run_id, t} (the relay's record). At most
    `limit` runs: the live ones, then the latest started (a lake may also hold large simulated cohorts)."""
    runs = delta.read(lake, "runs", columns=["run_id", "reactor_id", "plant", "scenario", "started_ts", "ended_ts"])
    rows = {} if runs is None else {r["run_id"]: r for r in runs.to_pylist() if r["plant"] == "patient"}
    for patient_id, where in live.items():  # live before the plant's `runs` row landed
        rows.setdefault(where["run_id"], {"run_id": where["run_id"], "reactor_id": patient_id, "plant": "patient",
                                          "scenario": None, "started_ts": None, "ended_ts": None})
    live_runs = {where["run_id"] for where in live.values()}
    latest_first = sorted(rows.values(), key=lambda r: r["started_ts"].timestamp() if r["started_ts"] else 0.0,
                          reverse=True)
    ids = sorted(r["run_id"] for r in sorted(latest_first, key=lambda r: r["run_id"] not in live_runs)[:limit])
    if not ids:
        return []
    who = delta.read(lake, "patients", columns=["run_id", "age_years", "sex", "cyp2c9", "vkorc1_1639", "cyp2d6",
                                                "amiodarone", "enzyme_inducer"], run_ids=ids)
    covariates = {} if who is None else {r.pop("run_id"): r | {"age_years": _num(r["age_years"])}
                                          for r in who.to_pylist()}
    labs = delta.read(lake, "labs", columns=["run_id", "sample_ts", "inr", "hb_g_dl"], run_ids=ids)
    last_inr: dict[str, dict] = {}
    in_range_h: dict[str, float] = {}  # when each run's INR was first measured in range (ends the initiation)
    for lab in [] if labs is None else labs.filter(pc.is_valid(labs["inr"])).sort_by("sample_ts").to_pylist():
        last_inr[lab["run_id"]] = lab
        if lab["inr"] >= INR_RANGE[0]:
            in_range_h.setdefault(lab["run_id"], lab["sample_ts"].timestamp() / 3600.0)
    doses = delta.read(lake, "doses", columns=["run_id", "ts", "drug", "dose_mg", "taken"], run_ids=ids)
    last_dose: dict[str, dict] = {}
    first_dose_h: dict[str, float] = {}
    for dose in [] if doses is None else doses.sort_by("ts").to_pylist():
        if dose["drug"] == "warfarin":
            last_dose[dose["run_id"]] = dose
            first_dose_h.setdefault(dose["run_id"], dose["ts"].timestamp() / 3600.0)
    vitals = delta.read(lake, "vitals", columns=["run_id", "seq", "ts", *VITAL_SIGNALS], run_ids=ids)
    now: dict[str, tuple[float, float, object]] = {}
    if vitals is not None and vitals.num_rows:
        latest = latest_complete_vitals(vitals)
        if latest.num_rows:
            total, single = news2(latest)
            now = {r: (s, one, ts) for r, s, one, ts in zip(latest["run_id"].to_pylist(), total.tolist(),
                                                            single.tolist(), latest["ts"].to_pylist(), strict=True)}
    opened = open_incidents(delta.read(lake, "incidents", run_ids=ids))
    out = []
    for run_id in ids:
        run, lab, dose = rows[run_id], last_inr.get(run_id), last_dose.get(run_id)
        score, single, score_ts = now.get(run_id, (None, None, None))
        score = None if score is None or not np.isfinite(score) else int(score)
        incidents = opened.get(run_id, [])
        severity = max((i["severity"] or "info" for i in incidents), key=SEVERITY_RANK.get, default=None)
        inr = None if lab is None else _num(lab["inr"])
        initiating = lab is not None and run_id in first_dose_h and lab["sample_ts"].timestamp() / 3600.0 < \
            initiation_end_h(first_dose_h[run_id], np.array([in_range_h.get(run_id, np.nan)]))[0]
        state, why = patient_status(score, inr, severity, single, bool(initiating))
        out.append({"run_id": run_id, "patient_id": run["reactor_id"], "scenario": run["scenario"],
                    "live": run_id in live_runs, "started_t": _t(run["started_ts"]), "ended_t": _t(run["ended_ts"]),
                    "status": state, "why": why, "news2": score, "news2_t": _t(score_ts),
                    "last_inr": inr, "last_inr_t": None if lab is None else _t(lab["sample_ts"]),
                    "last_hb_g_dl": None if lab is None else _num(lab["hb_g_dl"]),
                    "warfarin_daily_mg": None if dose is None else _num(dose["dose_mg"]),
                    "open_incidents": len(incidents), "open_alerts": sum(i["alert_count"] or 0 for i in incidents),
                    **covariates.get(run_id, {})})
    # the sickest first, then by patient
    return sorted(out, key=lambda r: (-STATUS_RANK[r["status"]], r["patient_id"], r["run_id"]))


@router.get("", dependencies=[viewer])
async def list_patients(rt: Runtime = Depends(runtime),
                        limit: int = Query(200, ge=1, le=2000, description="at most this many runs: the live "
                                                                             "ones, then the latest started")
                        ) -> list[dict]:
    """The cohort overview: one row per patient run, the sickest first (`status`: critical | warning | stable
    | unknown, with `why`)."""
    return await asyncio.to_thread(cohort, rt.settings.lake, await live_units(rt), limit)


def _read(lake: str, table: str, run_id: str) -> pa.Table:
    rows = delta.read(lake, table, run_ids=[run_id])
    return rows if rows is not None else pa.table({})


@router.get("/commands", dependencies=[viewer])
def commands() -> dict:
    """What the controls offer: the drugs and their largest daily dose, the co-medications, the injectable
    events (POST /api/patients/{patient_id}/control validates the same)."""
    return {"max_daily_mg": MAX_DAILY_MG, "comedications": list(COMEDICATIONS), "events": list(INJECTABLE_EVENTS),
            "signals": list(VITAL_SIGNALS), "inr_range": list(INR_RANGE)}


@router.get("/{run_id}/vitals", dependencies=[viewer])
def get_vitals(run_id: IdPath, rt: Runtime = Depends(runtime),
               max_points: int = Query(2000, ge=10, le=100_000)) -> dict:
    """The run's vitals, thinned to `max_points`, with the NEWS2 score of each point."""
    vitals = _read(rt.settings.lake, "vitals", run_id)
    if vitals.num_rows == 0:
        raise HTTPException(404, f"no vitals for run {run_id!r}")
    kept = thin(vitals.sort_by("seq"), max_points)
    event = tick_event(kept["patient_id"][0].as_py(), kept, VITAL_SIGNALS)
    event["news2"] = [_num(s) for s in news2(kept)[0]]
    return event


@router.get("/{run_id}/labs", dependencies=[viewer])
def get_labs(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    """INR and Hb at their sample times (`t`), with the time each was reported (`reported_t`)."""
    labs = _read(rt.settings.lake, "labs", run_id)
    rows = [] if labs.num_rows == 0 else labs.sort_by("sample_ts").to_pylist()
    return {"run_id": run_id, "inr_range": list(INR_RANGE),
            "labs": [{"t": _t(r["sample_ts"]), "reported_t": _t(r["reported_ts"]), "inr": _num(r["inr"]),
                      "hb_g_dl": _num(r["hb_g_dl"])} for r in rows]}


@router.get("/{run_id}/doses", dependencies=[viewer])
def get_doses(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    """Every dose row: warfarin, metoprolol and co-medications, taken or missed."""
    doses = _read(rt.settings.lake, "doses", run_id)
    rows = [] if doses.num_rows == 0 else doses.sort_by("ts").to_pylist()
    return {"run_id": run_id, "doses": [{"t": _t(r["ts"]), "drug": r["drug"], "dose_mg": _num(r["dose_mg"]),
                                         "taken": r["taken"]} for r in rows]}


def twin_view(forecasts: pa.Table) -> dict:
    """The latest refit's forecasts (by `fitted_ts`): one band per dosing ("current", "advised")."""
    if forecasts.num_rows == 0:
        return {"fitted_t": None, "advised_weekly_dose_mg": None, "labs_used": None, "bands": {}, "refits": 0}
    fitted = pc.max(forecasts["fitted_ts"])
    latest = forecasts.filter(pc.equal(forecasts["fitted_ts"], fitted)).sort_by("ts").to_pylist()
    bands: dict[str, dict] = {}
    for row in latest:
        band = bands.setdefault(row["dosing"], {"weekly_dose_mg": _num(row["weekly_dose_mg"]), "t": [],
                                                "inr_mid": [], "inr_lo": [], "inr_hi": []})
        band["t"].append(_t(row["ts"]))
        for key in ("inr_mid", "inr_lo", "inr_hi"):
            band[key].append(_num(row[key]))
    return {"fitted_t": _t(fitted.as_py()), "advised_weekly_dose_mg": _num(latest[0]["advised_weekly_dose_mg"]),
            "labs_used": latest[0]["labs_used"], "bands": bands,
            "refits": len(pc.unique(forecasts["fitted_ts"]))}


@router.get("/{run_id}/twin", dependencies=[viewer])
def get_twin(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    """The twin's INR forecast band from its latest refit (the flow refits at each lab), under the current
    dosing and under the advised dose; `fitted_t` null when it has not been fitted yet."""
    return {"run_id": run_id, **twin_view(_read(rt.settings.lake, "twin_forecasts", run_id))}


@router.get("/{run_id}/labels", dependencies=[viewer])
def get_labels(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    """The adverse events and monitor faults of the run (ground truth of the simulation), with their cause and
    recommended action."""
    labels = _read(rt.settings.lake, "labels", run_id)
    rows = [] if labels.num_rows == 0 else labels.sort_by("start_ts").to_pylist()
    return {"run_id": run_id, "labels": [{"event": r["fault"], "start_t": _t(r["start_ts"]), "end_t": _t(r["end_ts"]),
                                          "signals": r["signals"], "magnitude": _num(r["magnitude"]),
                                          "root_cause": r["root_cause"], "action": r["action"]} for r in rows]}


@router.get("/{run_id}/diagnosis", dependencies=[viewer])
def get_diagnosis(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    """The run's incidents (latest version of each, newest first), each with the agent's explanation and its
    ranked causes (`findings`, from the explanation's last chunk)."""
    lake = rt.settings.lake
    incidents = _read(lake, "incidents", run_id)
    latest: dict[str, dict] = {}
    for row in [] if incidents.num_rows == 0 else incidents.to_pylist():
        if row["incident_id"] not in latest or row["version"] > latest[row["incident_id"]]["version"]:
            latest[row["incident_id"]] = row
    messages = delta.read(lake, "agent_messages") if latest else None
    if messages is not None and messages.num_rows:
        messages = messages.filter(pc.is_in(messages["incident_id"], pa.array(list(latest), pa.string())))
    chunks: dict[str, list[dict]] = {}
    for m in [] if messages is None else messages.sort_by("seq").to_pylist():
        chunks.setdefault(m["incident_id"], []).append(m)
    out = []
    for inc in sorted(latest.values(), key=lambda i: i["start_ts"], reverse=True):
        mine = chunks.get(inc["incident_id"], [])
        findings = next((json.loads(m["findings_json"]) for m in reversed(mine) if m["findings_json"]), None)
        out.append({"incident_id": inc["incident_id"], "status": inc["status"], "severity": inc["severity"],
                    "start_t": _t(inc["start_ts"]), "end_t": _t(inc["end_ts"]), "signals": inc["signals"],
                    "alert_count": inc["alert_count"], "text": [m["text"] for m in mine if m["text"]],
                    "findings": findings})
    return {"run_id": run_id, "incidents": out}


@router.post("/{patient_id}/control", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted,
             responses={403: {"description": "stop without the admin role"},
                        404: {"description": "no live patient with this id (see GET /api/patients)"}},
             description="To a live patient (else 404): a daily `dose` of warfarin or metoprolol, a `hold` of the "
                         "next days' doses, a `comedication` started or stopped (amiodarone, enzyme_inducer), an "
                         "adverse `event` injected now, or `stop`. Operator role; **" + stop_needs_admin("patient") + "** "
                         "(403 otherwise).")
async def control(body: PatientControl, patient_id: PatientId, request: Request, rt: Runtime = Depends(runtime),
                  who: Principal = Depends(is_operator)) -> Accepted:
    return await control_unit(rt, request, who, patient_id, body.model_dump(exclude_none=True), unit="patient")
