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

import pyarrow as pa

from agents.evidence import Evidence, gather
from agents.incidents import IncidentTracker
from agents.troubleshooting import Diagnosis, rank
from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from sinks import delta

HORIZON = timedelta(hours=2)


class RunNotFound(LookupError):
    pass


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


def incidents_of(ticks: pa.Table, detector: str = "fusion") -> list[tuple[dict, list[dict]]]:
    """(last lifecycle event, its alerts) per incident, from one run's ticks scored as the flow would."""
    monitor = ReactorMonitor(ticks["reactor_id"][0].as_py(), MonitorConfig.for_detector(detector))
    out = monitor.on_ticks(ticks.sort_by("seq"))
    end = monitor.on_watermark(2**62)
    return track([*out.alerts, *end.alerts, *out.clears, *end.clears])


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
                   ) -> list[IncidentFinding]:
    findings = []
    for inc, alerts in incidents_of(ticks):
        end = inc["start_ts"] + horizon
        if inc["end_ts"] is not None:
            end = min(end, inc["end_ts"])
        ev = gather(ticks, inc["start_ts"], end, assays, contributions(alerts))
        findings.append(IncidentFinding(inc, ev, rank(ev)))
    return sorted(findings, key=lambda f: f.incident["start_ts"])


def load_run(lake: str | Path, run_id: str) -> tuple[pa.Table, pa.Table | None]:
    ticks = delta.read(lake, "ticks", run_ids=[run_id])
    if ticks is None or ticks.num_rows == 0:
        known = delta.run_ids(lake)
        hint = f"; runs in {lake}: {', '.join(sorted(known)[:5])}{' ...' if len(known) > 5 else ''}" if known else ""
        raise RunNotFound(f"no ticks for run {run_id!r} in {lake}{hint}")
    return ticks, delta.read(lake, "assays", run_ids=[run_id])


def diagnose_stored(lake: str | Path, run_id: str, horizon: timedelta = HORIZON) -> list[IncidentFinding]:
    ticks, assays = load_run(lake, run_id)
    return diagnose_ticks(ticks, assays, horizon)


def format_findings(findings: list[IncidentFinding]) -> str:
    if not findings:
        return "no incidents: the run stayed within its calibrated alarm limits"
    lines = []
    for f in findings:
        d = f.as_dict()
        lines.append(f"incident {d['incident_id']} on {d['reactor_id']} ({d['severity']}, {d['alert_count']} "
                     f"alert(s)) {d['start_ts']} -> {d['end_ts'] or 'open'}")
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
