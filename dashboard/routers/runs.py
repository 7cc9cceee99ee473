"""Stored runs: list, one run with its key figures, its ticks (decimated), its alerts and incidents."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, HTTPException, Query

from agents.overview import summarize
from core.events import TICK_SIGNALS
from dashboard.deps import Runtime, runtime, viewer
from dashboard.models import IdPath
from dashboard.relay import thin, tick_event
from sinks import delta

router = APIRouter(prefix="/api/runs", tags=["runs"], dependencies=[viewer])


def _rows(table: pa.Table | None) -> list[dict]:
    return [] if table is None else table.to_pylist()


@router.get("")
def list_runs(rt: Runtime = Depends(runtime)) -> list[dict]:
    runs = delta.read(rt.settings.lake, "runs", columns=["run_id", "reactor_id", "plant", "scenario", "seed",
                                                         "started_ts", "ended_ts"])
    return sorted(_rows(runs), key=lambda r: r["started_ts"], reverse=True)


@router.get("/{run_id}")
def get_run(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    runs = delta.read(rt.settings.lake, "runs", run_ids=[run_id])
    if runs is None or runs.num_rows == 0:
        raise HTTPException(404, f"no run {run_id!r}")
    run = runs.to_pylist()[0]
    summary = next(iter(summarize(rt.settings.lake, [run_id])), None)
    labels = delta.read(rt.settings.lake, "labels", run_ids=[run_id])
    return {**run, "summary": vars(summary) if summary else None, "labels": _rows(labels)}


@router.get("/{run_id}/ticks")
def get_ticks(run_id: IdPath, rt: Runtime = Depends(runtime), start: datetime | None = None,
              end: datetime | None = None,
              signals: str | None = Query(None, description="comma-separated; default all"),
              max_points: int = Query(2000, ge=10, le=100_000)) -> dict:
    wanted = signals.split(",") if signals else list(TICK_SIGNALS)
    unknown = [s for s in wanted if s not in TICK_SIGNALS]
    if unknown:
        raise HTTPException(422, f"unknown signal(s) {', '.join(unknown)}; allowed: {', '.join(TICK_SIGNALS)}")
    ticks = delta.read(rt.settings.lake, "ticks", run_ids=[run_id])
    if ticks is None or ticks.num_rows == 0:
        raise HTTPException(404, f"no ticks for run {run_id!r}")
    if start is not None:
        ticks = ticks.filter(pc.greater_equal(ticks["ts"], pa.scalar(start, ticks["ts"].type)))
    if end is not None:
        ticks = ticks.filter(pc.less_equal(ticks["ts"], pa.scalar(end, ticks["ts"].type)))
    if ticks.num_rows == 0:
        return {"run_id": run_id, "t": [], "signals": {s: [] for s in wanted}}
    event = tick_event(ticks["reactor_id"][0].as_py(), thin(ticks.sort_by("seq"), max_points))
    event["signals"] = {s: event["signals"][s] for s in wanted}
    assays = delta.read(rt.settings.lake, "assays", run_ids=[run_id])
    event["assays"] = [{**r, "t": r["sample_ts"].timestamp()} for r in _rows(assays)]
    return event


@router.get("/{run_id}/alerts")
def get_alerts(run_id: IdPath, rt: Runtime = Depends(runtime)) -> dict:
    lake = rt.settings.lake
    return {"alerts": _rows(delta.read(lake, "alerts", run_ids=[run_id])),
            "incidents": _rows(delta.read(lake, "incidents", run_ids=[run_id])),
            "labels": _rows(delta.read(lake, "labels", run_ids=[run_id]))}


@router.get("/{run_id}/soft_sensors")
def get_soft_sensors(run_id: IdPath, rt: Runtime = Depends(runtime),
                     max_points: int = Query(600, ge=10, le=100_000)) -> dict:
    """The flow's VCD and glucose estimates between assays (columns of `scores`), thinned to `max_points`."""
    soft = delta.read(rt.settings.lake, "scores", columns=["seq", "ts", "vcd_e6_per_ml_est", "glucose_g_l_est"],
                      run_ids=[run_id])
    if soft is None or soft.num_rows == 0:
        return {"run_id": run_id, "t": [], "vcd_e6_per_ml_est": [], "glucose_g_l_est": []}
    soft = thin(soft.sort_by("seq"), max_points)
    return {"run_id": run_id, "t": [v / 1e6 for v in soft["ts"].cast(pa.int64()).to_pylist()],
            "vcd_e6_per_ml_est": [round(v, 3) for v in soft["vcd_e6_per_ml_est"].to_pylist()],
            "glucose_g_l_est": [round(v, 3) for v in soft["glucose_g_l_est"].to_pylist()]}
