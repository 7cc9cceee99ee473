"""`biopilot diagnose`: monitoring + troubleshooting over a stored run, without the broker.

The run's ticks go through the same per-reactor monitor as the flow (calibrated fusion + hysteresis), its
alerts and alarm clears through the monitoring agent's incident tracker, and each incident's evidence (the
first `horizon` of it, what an operator would have had in hand) through the troubleshooting ranking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from agents.evidence import Evidence, gather
from agents.incidents import IncidentTracker
from agents.troubleshooting import Diagnosis, rank
from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from detectors.recipe import Recipe
from sinks import delta

HORIZON = timedelta(hours=2)


class RunNotFound(LookupError):
    """`str()` is for the one who runs the command (it may name the lake and its runs); `for_api` is what an HTTP
    caller is told: a server's paths and bucket are not theirs to see."""

    def __init__(self, message: str, for_api: str | None = None) -> None:
        super().__init__(message)
        self.for_api = for_api or message


@dataclass
class IncidentFinding:
    incident: dict  # the incident's last lifecycle event
    evidence: Evidence
    diagnosis: Diagnosis

    def as_dict(self) -> dict:
        inc = self.incident
        return {"incident_id": inc["incident_id"], "run_id": inc["run_id"], "reactor_id": inc["reactor_id"],
                "start_ts": _iso(inc["start_ts"]), "end_ts": _iso(inc["end_ts"]), "status": inc["status"],
                "severity": inc["severity"], "alert_count": inc["alert_count"], "signals": inc["signals"],
                "abstained": self.diagnosis.abstained, "facts": self.diagnosis.facts,
                "operator_changes": self.evidence.operator_changes,
                "hypotheses": [h.as_dict() for h in self.diagnosis.ranked(3)], "scorer": _scorer_view(self.evidence),
                "soft_sensors": _soft_view(self.evidence)}


def _soft_view(ev: Evidence) -> dict | None:
    if ev.soft is None:
        return None
    return {**ev.soft, "ts": ev.soft["ts"].isoformat()} | (
        {"last_assay_sample_ts": ev.assay["sample_ts"].isoformat(), "last_assay_vcd_e6_per_ml":
         ev.assay["vcd_e6_per_ml"], "last_assay_glucose_g_l": ev.assay["glucose_g_l"]} if ev.assay else {})


def _scorer_view(ev: Evidence) -> dict | None:
    """The windowed scorer's two likeliest classes (with MC-dropout spread) and titer estimate."""
    if ev.scorer is None:
        return None
    probs, spread = ev.scorer["class_probabilities"], ev.scorer["class_spread"]
    top = sorted(probs, key=lambda c: -probs[c])[:2]
    return {"classes": {c: [round(probs[c], 3), round(spread[c], 3)] for c in top},
            "titer_g_l": round(ev.scorer["titer_g_l"], 2), "titer_g_l_spread": round(ev.scorer["titer_g_l_spread"], 2)}


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def incidents_of(ticks: pa.Table, detector: str = "fusion", recipes: list[dict] | None = None,
                 ) -> list[tuple[dict, list[dict]]]:
    """(last lifecycle event, its alerts) per incident, from one run's ticks scored as the flow would. `recipes`:
    the run's rows of the `recipes` table (its recipe at its start, then each operator's change), handed to the
    monitor at their times as the flow does; without them the run is judged against the default recipe."""
    ticks = ticks.sort_by("seq")
    monitor = ReactorMonitor(ticks["reactor_id"][0].as_py(), MonitorConfig.for_detector(detector))
    run_id = ticks["run_id"][0].as_py()
    ts_us = ticks["ts"].cast(pa.int64()).to_numpy()
    outs, done = [], 0
    for row in sorted(recipes or [], key=lambda r: r["ts"]):
        at_us = int(row["ts"].timestamp() * 1e6)
        upto = int(np.searchsorted(ts_us, at_us))  # the ticks before the change are scored before it
        if upto > done:
            outs += [monitor.on_ticks(ticks.slice(done, upto - done)), monitor.on_watermark(at_us)]
            done = upto
        outs.append(monitor.set_recipe(Recipe.from_json(row["recipe_json"]), row["ts"], run_id=run_id,
                                       run_start_ts=row.get("run_start_ts"), changed_by=row.get("changed_by")))
    outs += [monitor.on_ticks(ticks.slice(done)), monitor.on_watermark(2**62)]
    return track([m for out in outs for m in (*out.alerts, *out.clears)])


def recipe_rows(recipe: Recipe, ts: datetime, run_start_ts: datetime | None = None) -> list[dict]:
    """A run's `recipes` rows when all it had was `recipe` from `ts` (a simulated run: from its start)."""
    return [{"ts": ts, "recipe_json": recipe.to_json(), "run_start_ts": run_start_ts or ts, "changed_by": None}]


def track(messages: list[dict]) -> list[tuple[dict, list[dict]]]:
    """(last lifecycle event, its alerts) per incident, from one unit's alerts and clears (any order: sorted by
    event time here, an alert before a clear at the same time) through the monitoring agent's tracker."""
    messages = sorted(messages, key=lambda m: (m["ts"], "type" in m))
    tracker = IncidentTracker()
    latest: dict[str, dict] = {}
    alerts: dict[str, list[dict]] = {}
    for m in messages:
        events = tracker.on_clear(m) if m.get("type") == "clear" else tracker.on_alert(m)
        for e in events:
            latest[e["incident_id"]] = e
            if e["event"] != "resolve" and m.get("type") != "clear":
                alerts.setdefault(e["incident_id"], []).append(m)
    return [(e, alerts.get(i, [])) for i, e in latest.items()]


def contributions(alerts: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in alerts:
        for s in a.get("signals") or []:
            out[s["name"]] = max(out.get(s["name"], 0.0), float(s["contribution"]))
    return out


def diagnose_ticks(ticks: pa.Table, assays: pa.Table | None = None, horizon: timedelta = HORIZON,
                   recipes: list[dict] | None = None, annotations: list[dict] | None = None,
                   ) -> list[IncidentFinding]:
    """Incidents of one run with their ranked causes. `recipes`: the run's rows of the `recipes` table (the
    monitor's and the evidence's reference is the latest one's, which carries every change at its culture age);
    `annotations`: the run's rows of the `annotations` table, the operator's changes cited as evidence."""
    findings = []
    recipe = recipe_of(recipes)
    incidents = incidents_of(ticks, recipes=recipes)
    starts = [i["start_ts"] for i, _ in incidents]
    for inc, alerts in incidents:
        ev = gather(ticks, inc["start_ts"], evidence_end(inc, starts, horizon), assays, contributions(alerts),
                    recipe=recipe, annotations=annotations, after_ts=previous_end([i for i, _ in incidents], inc))
        findings.append(IncidentFinding(inc, ev, rank(ev)))
    return sorted(findings, key=lambda f: f.incident["start_ts"])


def evidence_end(incident: dict, starts: list[datetime], horizon: timedelta = HORIZON) -> datetime:
    """Where an incident's evidence ends: `horizon` after its start, or its end where sooner. One that the next
    incident superseded at its first alert (the tracker resolves it at its last activity: its start) is not
    without evidence: it lasts until the next of the run's incidents (`starts`) began, as it did live."""
    start, end = incident["start_ts"], incident["end_ts"]
    if end is not None and end <= start:
        end = min((t for t in starts if t > start), default=None)
    return start + horizon if end is None else min(start + horizon, end)


def previous_end(incidents: list[dict], incident: dict) -> datetime | None:
    """When the latest of a run's other `incidents` (lifecycle events) that had closed by `incident`'s start
    closed."""
    ends = [i["end_ts"] for i in incidents if i["end_ts"] is not None and i["end_ts"] <= incident["start_ts"]
            and i["incident_id"] != incident["incident_id"]]
    return max(ends, default=None)


def recipe_of(recipes: list[dict] | None) -> Recipe | None:
    """The latest of a run's `recipes` rows (it carries every change at its culture age); None: the default."""
    if not recipes:
        return None
    return Recipe.from_json(max(recipes, key=lambda r: r["ts"])["recipe_json"])


def load_run(lake: str | Path, run_id: str) -> tuple[pa.Table, pa.Table | None]:
    ticks = delta.read(lake, "ticks", run_ids=[run_id])
    if ticks is None or ticks.num_rows == 0:
        known = delta.run_ids(lake)
        hint = f"; runs in {lake}: {', '.join(sorted(known)[:5])}{' ...' if len(known) > 5 else ''}" if known else ""
        raise RunNotFound(f"no ticks for run {run_id!r} in {lake}{hint}",
                          for_api=f"no ticks for run {run_id!r}; see GET /api/runs")
    return ticks, delta.read(lake, "assays", run_ids=[run_id])


def load_recipe_context(lake: str | Path, run_id: str) -> tuple[list[dict], list[dict]]:
    """The run's rows of `recipes` and `annotations` (empty where the flow wrote none: the default recipe)."""
    rows = [delta.read(lake, name, run_ids=[run_id]) for name in ("recipes", "annotations")]
    recipes, annotations = (sorted(t.to_pylist(), key=lambda r: r["ts"]) if t is not None else [] for t in rows)
    return recipes, annotations


def previous_end_stored(lake: str | Path, incident: dict) -> datetime | None:
    """`previous_end` over the run's incidents the monitoring agent wrote to the lake (`incidents`)."""
    rows = delta.read(lake, "incidents", columns=["incident_id", "start_ts", "end_ts"], run_ids=[incident["run_id"]])
    return None if rows is None else previous_end(rows.to_pylist(), incident)


def diagnose_stored(lake: str | Path, run_id: str, horizon: timedelta = HORIZON) -> list[IncidentFinding]:
    ticks, assays = load_run(lake, run_id)
    recipes, annotations = load_recipe_context(lake, run_id)
    return diagnose_ticks(ticks, assays, horizon, recipes, annotations)


def format_findings(findings: list[IncidentFinding]) -> str:
    if not findings:
        return "no incidents: the run stayed within its calibrated alarm limits"
    lines = []
    for f in findings:
        d = f.as_dict()
        lines.append(f"incident {d['incident_id']} on {d['reactor_id']} ({d['severity']}, {d['alert_count']} "
                     f"alert(s)) {d['start_ts']} -> {d['end_ts'] or 'open'}")
        lines += [f"  operator change: {c}" for c in f.evidence.operator_changes]
        if f.diagnosis.abstained:
            lines.append("  insufficient evidence to name a cause; strongest observations:")
            lines += [f"    - {fact}" for fact in f.diagnosis.facts[:3]]
        for k, h in enumerate(f.diagnosis.ranked(3), 1):
            lines.append(f"  {k}. {h.fault} (confidence {h.confidence:.2f}): {h.root_cause}")
            lines += [f"     - {e}" for e in h.evidence[:3]]
        if f.diagnosis.top:
            lines.append(f"  action: {f.diagnosis.top.action}")
    return "\n".join(lines)


def findings_json(findings: list[IncidentFinding]) -> str:
    return json.dumps([f.as_dict() for f in findings], indent=2)
