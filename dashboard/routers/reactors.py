"""The reactor page's batch-evolution view and the fleet overview.

- `GET /api/reactors/{id}/reference`: each signal's reference band for a run's recipe — the golden trajectory
  (median of normal twin runs at the same culture age) and the limits the detectors alarm at — the chart a
  SIMCA-online user reads a batch against. The recipe is the run's latest row of the lake table `recipes` (the
  default recipe while it has none); it carries the operator's mid-run changes, which its reference replays at
  their culture age (`detectors.recipe`), so after a change the band bends as a normal run's would.
- `GET /api/reactors/{id}/annotations`: the operator's changes (lake table `annotations`), for the time axis.
- `GET /api/fleet`: one row per live reactor (recipe, culture age, status, open incident), the worst first.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Literal

import numpy as np
import pyarrow.compute as pc
from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from agents.reference_band import BAND_ROWS, NOT_COMPARED, reference_band
from core.events import SEVERITY_RANK
from dashboard.deps import Runtime, runtime, viewer
from dashboard.routers.control import ReactorId, live_units
from dashboard.routers.patients import open_incidents
from sinks import delta
from sources.recipe import Recipe

router = APIRouter(prefix="/api", tags=["reactors"], dependencies=[viewer])
RunQuery = Query(None, pattern=r"^[A-Za-z0-9._-]{1,128}$", description="a run of this reactor (default: its "
                                                                       "live run, else its latest stored run)")


class SignalBand(BaseModel):
    median: list[float] = Field(description="the golden trajectory: the normal runs' median at each age")
    lower: list[float] = Field(description="median - golden alarm z x robust scale: a reading held beyond it "
                                           "for a few ticks alarms the golden detector")
    upper: list[float]
    sustained_lower: list[float] = Field(description="median - the twin-residual limit: a deviation held "
                                                     "beyond it for about a day alarms the twin residual")
    sustained_upper: list[float]


class RecipeRow(BaseModel):
    t: float = Field(description="unix s: when the run took this recipe")
    recipe_hash: str
    description: str = Field(description="what changed from the recipe before (the first: from the default)")
    changed_by: str | None = None


class Reference(BaseModel):
    reactor_id: str
    run_id: str
    run_start_t: float = Field(description="unix s of inoculation (the recipe's `run_start_ts`, else the run's "
                                           "first stored tick): culture age 0")
    age_min: list[float] = Field(description="culture age of each point, minutes since the run's start")
    golden_z: float = Field(description="the golden detector's alarm level, in robust z (0: not a member of the "
                                        "live fusion, so no limit)")
    signals: dict[str, SignalBand]
    without_band: dict[str, str] = Field(description="signals drawn without a band, and why")
    recipe_hash: str = Field(description="the recipe the band is made for: the run's latest")
    recipe: str = Field(description="how it differs from the default recipe")
    source: Literal["default", "twin", "learned"] = Field(
        description="where the reference comes from: the shipped golden batch, normal twin runs of the recipe, or "
                    "the plant's own normal batches (`biopilot reference build`)")
    recipes: list[RecipeRow] = Field(description="the run's recipe rows, oldest first (none: the default)")


class Annotation(BaseModel):
    run_id: str
    reactor_id: str
    t: float = Field(description="unix s of the change")
    kind: str
    text: str
    changed_by: str | None = None
    recipe_hash: str | None = None


class OpenIncident(BaseModel):
    incident_id: str
    severity: str
    start_t: float
    signals: list[str]
    alert_count: int


class FleetRow(BaseModel):
    reactor_id: str
    run_id: str
    t: float = Field(description="unix s of its latest tick")
    run_start_t: float | None
    culture_age_h: float | None
    recipe_hash: str | None = Field(description="null: no recipe row yet (the default recipe's reference)")
    recipe: str = Field(description="how its recipe differs from the default")
    status: Literal["critical", "warning", "normal"]
    open_incident: OpenIncident | None = Field(description="the worst open incident, the latest of equals")
    open_incidents: int


def _t(ts: datetime) -> float:
    return round(ts.timestamp(), 3)


def recipe_of(row: dict | None) -> Recipe:
    """A `recipes` row's recipe; the default one for no row. A stored recipe that no longer parses is a 409: the
    page cannot draw a reference it does not have."""
    if row is None or not row["recipe_json"]:
        return Recipe.default()
    try:
        return Recipe.from_json(row["recipe_json"])
    except ValueError as err:
        raise HTTPException(409, f"the recipe {row['recipe_hash']} of run {row['run_id']!r} cannot be read: "
                                 f"{err}") from None


def describe(recipe: Recipe, before: Recipe | None = None) -> str:
    """How `recipe` differs from `before` (default: the default recipe), in words."""
    return (before or Recipe.default()).describe_change(recipe) or "default recipe"


def _rounded(a: np.ndarray) -> list[float]:
    return [float(f"{v:.5g}") for v in a]


_starts: dict[tuple[str, str], float] = {}  # (lake, run) -> its first tick's unix s


def run_start_t(lake: str, run_id: str, recipes: list[dict]) -> float | None:
    """Unix s of the run's inoculation, culture age 0, as the monitor counts it: its recipe's `run_start_ts`,
    else its first stored tick. Once known it never changes, so it is remembered."""
    if (lake, run_id) in _starts:
        return _starts[lake, run_id]
    start = next((r["run_start_ts"] for r in recipes if r.get("run_start_ts") is not None), None)
    if start is None:
        ticks = delta.read(lake, "ticks", columns=["ts"], run_ids=[run_id])
        if ticks is None or ticks.num_rows == 0:
            return None
        start = pc.min(ticks["ts"]).as_py()
    _starts[lake, run_id] = _t(start)
    return _starts[lake, run_id]


def _latest_stored_run(lake: str, reactor_id: str) -> str:
    runs = delta.read(lake, "runs", columns=["run_id", "reactor_id", "started_ts"])
    mine = [] if runs is None else [r for r in runs.to_pylist() if r["reactor_id"] == reactor_id]
    if not mine:
        raise HTTPException(404, f"no live or stored run of reactor {reactor_id!r}")
    return max(mine, key=lambda r: r["started_ts"])["run_id"]


async def _run_of(rt: Runtime, reactor_id: str, run_id: str | None) -> str:
    """The run asked for, else the reactor's live run, else its latest stored one (404 if none)."""
    if run_id:
        return run_id
    live = (await live_units(rt)).get(reactor_id)
    if live:
        return live["run_id"]
    return await asyncio.to_thread(_latest_stored_run, rt.settings.lake, reactor_id)


def _recipe_rows(lake: str, run_id: str) -> list[dict]:
    rows = delta.read(lake, "recipes", run_ids=[run_id])
    return [] if rows is None else sorted(rows.to_pylist(), key=lambda r: r["ts"])


@router.get("/reactors/{reactor_id}/reference", response_model=Reference,
            responses={404: {"description": "no run of this reactor, or no tick of it stored yet"}})
async def reference(reactor_id: ReactorId, run_id: str | None = RunQuery,
                    max_points: int = Query(800, ge=10, le=5000, description="at most this many ages"),
                    rt: Runtime = Depends(runtime)) -> Reference:
    """Each signal's band for the run's recipe at each culture age (`age_min`; `run_start_t` + 60 x age is the
    time axis), the golden trajectory and two limits: the golden detector's (a reading held beyond it alarms
    within minutes) and the twin residual's (a drift held beyond it alarms within about a day). The run's latest
    recipe carries the operator's changes; its reference replays them at their culture age (`recipes` lists
    them). A recipe not seen before is simulated now: seconds."""
    run = await _run_of(rt, reactor_id, run_id)
    # off the event loop: lake reads, and a new recipe's twin runs
    return await asyncio.to_thread(reference_view, rt.settings.lake, reactor_id, run, max_points)


def reference_view(lake: str, reactor_id: str, run: str, max_points: int) -> Reference:
    rows = _recipe_rows(lake, run)
    start = run_start_t(lake, run, rows)
    if start is None:
        raise HTTPException(404, f"no recipe or tick of run {run!r} stored yet: its culture age is unknown")
    recipes, listed, before = [recipe_of(r) for r in rows], [], None
    for row, recipe in zip(rows, recipes, strict=True):
        listed.append(RecipeRow(t=_t(row["ts"]), recipe_hash=recipe.hash, description=describe(recipe, before),
                                changed_by=row["changed_by"]))
        before = recipe
    recipe = recipes[-1] if recipes else Recipe.default()
    band = reference_band(recipe)
    n_bins = next(iter(band.bands.values())).shape[1]
    bins = np.arange(0, n_bins, max(1, -(-n_bins // max_points)))
    signals = {name: SignalBand(**dict(zip(BAND_ROWS, map(_rounded, rows[:, bins]), strict=True)))
               for name, rows in band.bands.items()}
    return Reference(reactor_id=reactor_id, run_id=run, run_start_t=start, age_min=_rounded(bins * band.bin_min),
                     golden_z=band.golden_z, signals=signals, without_band=NOT_COMPARED, recipe_hash=recipe.hash,
                     recipe=describe(recipe), source=band.source, recipes=listed)


def _annotations(lake: str, run_ids: list[str]) -> list[Annotation]:
    rows = delta.read(lake, "annotations", run_ids=run_ids)
    return [] if rows is None else [
        Annotation(run_id=r["run_id"], reactor_id=r["reactor_id"], t=_t(r["ts"]), kind=r["kind"], text=r["text"],
                   changed_by=r["changed_by"], recipe_hash=r["recipe_hash"])
        for r in sorted(rows.to_pylist(), key=lambda r: r["ts"])]


@router.get("/reactors/{reactor_id}/annotations", response_model=list[Annotation],
            responses={404: {"description": "no run of this reactor"}})
async def annotations(reactor_id: ReactorId, run_id: str | None = RunQuery,
                      rt: Runtime = Depends(runtime)) -> list[Annotation]:
    """The operator's changes to the run (setpoints, feeds: what changed its recipe), oldest first."""
    run = await _run_of(rt, reactor_id, run_id)
    return [a for a in await asyncio.to_thread(_annotations, rt.settings.lake, [run]) if a.reactor_id == reactor_id]


@router.get("/fleet", response_model=list[FleetRow])
async def fleet(rt: Runtime = Depends(runtime)) -> list[FleetRow]:
    """One row per live reactor: its run, recipe, culture age, status (its worst open incident's severity) and
    that incident; the worst first, then by reactor."""
    live = {r: w for r, w in (await live_units(rt)).items() if isinstance(w, dict) and "run_id" in w}
    return await asyncio.to_thread(fleet_rows, rt.settings.lake, live)


def fleet_rows(lake: str, live: dict[str, dict]) -> list[FleetRow]:
    """The fleet's rows for the live reactors `live` (id -> {run_id, t}, the relay's record)."""
    run_ids = [w["run_id"] for w in live.values()]
    opened = open_incidents(delta.read(lake, "incidents", run_ids=run_ids)) if run_ids else {}
    out = []
    for reactor_id, where in live.items():
        run = where["run_id"]
        recipes = _recipe_rows(lake, run)
        try:
            recipe = recipe_of(recipes[-1] if recipes else None)
            text = describe(recipe)
        except HTTPException as err:
            recipe, text = None, str(err.detail)
        start = run_start_t(lake, run, recipes)
        incidents = sorted(opened.get(run, []), key=lambda i: (SEVERITY_RANK.get(i["severity"] or "info", 0),
                                                               i["start_ts"]))
        worst = incidents[-1] if incidents else None
        severity = worst["severity"] if worst else None
        out.append(FleetRow(
            reactor_id=reactor_id, run_id=run, t=where["t"], run_start_t=start,
            culture_age_h=None if start is None else round((where["t"] - start) / 3600.0, 2),
            recipe_hash=recipe.hash if recipes and recipe else None, recipe=text,
            status=severity if severity in ("warning", "critical") else "normal",
            open_incident=None if worst is None else OpenIncident(
                incident_id=worst["incident_id"], severity=worst["severity"] or "info", start_t=_t(worst["start_ts"]),
                signals=worst["signals"] or [], alert_count=worst["alert_count"] or 0),
            open_incidents=len(incidents)))
    rank = {"critical": 2, "warning": 1, "normal": 0}
    return sorted(out, key=lambda r: (-rank[r.status], r.reactor_id))

