"""Monitoring: group a reactor's alerts into incidents with an open -> updated -> resolved lifecycle.

An alert joins the reactor's current incident when it is in the same run, related to it (soon after its last
activity, `near`, or led by a signal that led one of its alerts) and the incident is live: its last activity within
`merge_gap`, or an alarm of it still on and the alert led by one of its signals. Otherwise it opens a new one.
An incident resolves when every alert in it has cleared (the flow's hysteresis said the alarm stayed quiet); a
related alert within `merge_gap` of that reopens it rather than opening a second one. So one excursion is one
incident. Severity is the worst alert's, raised to critical for a long or repeated one.
Plain Python with a JSON-able state (the workers keep it in Redis, so any worker of the queue group can go on).

>>> from datetime import UTC, datetime, timedelta
>>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
>>> tracker = IncidentTracker()
>>> alert = {"alert_id": "a1", "run_id": "run", "reactor_id": "r1", "ts": t0, "severity": "warning",
...          "signals": [{"name": "do_pct", "contribution": 0.8}]}
>>> [e["event"] for e in tracker.on_alert(alert)]
['open']
>>> [e["event"] for e in tracker.on_alert({**alert, "alert_id": "a2", "ts": t0 + timedelta(minutes=20)})]
['update']
>>> tracker.on_clear({"alert_id": "a1", "reactor_id": "r1", "ts": t0 + timedelta(hours=1)})
[]
>>> [e["status"] for e in tracker.on_clear({"alert_id": "a2", "reactor_id": "r1", "ts": t0 + timedelta(hours=2)})]
['resolved']
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from core.events import SEVERITY_RANK


@dataclass
class Incident:
    incident_id: str
    run_id: str
    reactor_id: str
    start_ts: datetime
    last_ts: datetime
    severity: str
    status: str = "open"  # open | updated | resolved
    end_ts: datetime | None = None
    version: int = 0
    alert_ids: list[str] = field(default_factory=list)
    open_alerts: list[str] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)  # lead signal -> its largest contribution
    leads: list[str] = field(default_factory=list)  # each alert's leading signal, first seen first
    news: list[str] = field(default_factory=list)  # the news alarms (`news_key`) among its alerts

    def event(self, kind: str) -> dict:
        self.version += 1
        return {"event": kind, "incident_id": self.incident_id, "version": self.version, "run_id": self.run_id,
                "reactor_id": self.reactor_id, "status": self.status, "start_ts": self.start_ts,
                "last_ts": self.last_ts,  # its latest alert (or clear): where an update's news begins
                "end_ts": self.end_ts, "severity": self.severity, "alert_count": len(self.alert_ids),
                "signals": sorted(self.signals, key=lambda s: -self.signals[s]),
                "emitted_at": datetime.now(UTC)}

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("start_ts", "last_ts", "end_ts"):
            d[k] = d[k].isoformat() if d[k] else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> Incident:
        d = dict(d)
        for k in ("start_ts", "last_ts", "end_ts"):
            d[k] = datetime.fromisoformat(d[k]) if d[k] else None
        return cls(**d)


def incident_id_for(run_id: str, first_alert_id: str) -> str:
    """Deterministic, so a re-delivered alert on another worker names the same incident."""
    return hashlib.sha1(f"{run_id}|{first_alert_id}".encode()).hexdigest()[:12]


def news_key(alert: dict) -> str | None:
    """The alert's member where it is a news alarm, `member:signal` (the monitor's: a signal that moved a whole
    alarm level from where an alarm a day old left it); None for any other alert."""
    member = alert.get("member") or ""
    return member if ":" in member else None


def _ts(value: datetime | str) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


@dataclass
class IncidentTracker:
    merge_gap: timedelta = timedelta(hours=3)
    near: timedelta = timedelta(minutes=45)
    long: timedelta = timedelta(hours=6)
    current: dict[str, Incident] = field(default_factory=dict)  # reactor -> its latest incident
    # Workers in a queue group can take a clear before the alert it clears; keep it until that alert comes.
    early_clears: dict[str, dict[str, str]] = field(default_factory=dict)  # reactor -> alert id -> clear ts
    max_early_clears: int = 64

    def on_alert(self, alert: dict) -> list[dict]:
        reactor, ts = alert["reactor_id"], _ts(alert["ts"])
        lead = {s["name"]: float(s["contribution"]) for s in alert.get("signals") or [] if s["contribution"] >= 0.1}
        inc = self.current.get(reactor)
        if inc is not None and alert["alert_id"] in inc.alert_ids:
            return []  # a re-delivered alert
        events = self._on_new_alert(alert, inc, ts, lead)
        cleared_at = self.early_clears.get(reactor, {}).pop(alert["alert_id"], None)
        if cleared_at is not None:
            events += self.on_clear({"alert_id": alert["alert_id"], "reactor_id": reactor, "ts": cleared_at})
        return events

    def _on_new_alert(self, alert: dict, inc: Incident | None, ts: datetime, lead: dict[str, float]) -> list[dict]:
        if inc is None or inc.run_id != alert["run_id"]:
            joins = False
        else:
            gap = ts - inc.last_ts
            # Related: soon after, or led by a signal that led one of its alerts. A signal that merely took part
            # in them is not enough: a fault that follows another one (a DO limitation after an overfeed, a
            # drifting pH probe after a temperature spike) moves some of the same signals, and is news.
            # A news alarm is news by construction: its signal leading an alert of the excursion it moved away
            # from (the spike's pH aftermath, then a drifting pH probe) does not relate it; the same news does.
            top = max(lead, key=lead.__getitem__) if lead else None
            news = news_key(alert)
            led_before = news in inc.news if news else (top is None or top in inc.leads)
            related = gap <= self.near or led_before
            # An alarm still on keeps the incident live past the gap for alerts led by one of its leads:
            # the gap alone split a day-long excursion in two (and only when its clears came late).
            still_on = bool(inc.open_alerts) and led_before
            joins = related and (gap <= self.merge_gap or still_on)
        if not joins:
            events = []
            if inc is not None and inc.status != "resolved":  # a new run or an unrelated excursion
                inc.status, inc.end_ts = "resolved", inc.last_ts
                events.append(inc.event("resolve"))
            inc = Incident(incident_id_for(alert["run_id"], alert["alert_id"]), alert["run_id"],
                           alert["reactor_id"], ts, ts, alert.get("severity") or "warning")
            self.current[alert["reactor_id"]] = inc
            self._add(inc, alert, ts, lead)
            return [*events, inc.event("open")]
        assert inc is not None
        self._add(inc, alert, ts, lead)
        inc.status, inc.end_ts = "updated", None
        return [inc.event("update")]

    def on_clear(self, clear: dict) -> list[dict]:
        reactor = clear["reactor_id"]
        inc = self.current.get(reactor)
        if inc is None or clear["alert_id"] not in inc.alert_ids:
            early = self.early_clears.setdefault(reactor, {})
            early[clear["alert_id"]] = _ts(clear["ts"]).isoformat()
            while len(early) > self.max_early_clears:  # clears of alerts that went to an older incident
                early.pop(next(iter(early)))
            return []
        if clear["alert_id"] not in inc.open_alerts:
            return []  # a re-delivered clear
        inc.open_alerts.remove(clear["alert_id"])
        ts = _ts(clear["ts"])
        inc.last_ts = max(inc.last_ts, ts)
        if inc.open_alerts:
            return []
        inc.status, inc.end_ts = "resolved", ts
        self._escalate(inc)
        return [inc.event("resolve")]

    def _add(self, inc: Incident, alert: dict, ts: datetime, lead: dict[str, float]) -> None:
        inc.alert_ids.append(alert["alert_id"])
        inc.open_alerts.append(alert["alert_id"])
        inc.last_ts = max(inc.last_ts, ts)
        for name, c in lead.items():
            inc.signals[name] = max(inc.signals.get(name, 0.0), c)
        if lead and (top := max(lead, key=lead.__getitem__)) not in inc.leads:
            inc.leads.append(top)
        if (news := news_key(alert)) and news not in inc.news:
            inc.news.append(news)
        if SEVERITY_RANK.get(alert.get("severity") or "warning", 1) > SEVERITY_RANK[inc.severity]:
            inc.severity = alert["severity"]
        self._escalate(inc)

    def _escalate(self, inc: Incident) -> None:
        if len(inc.alert_ids) >= 3 or inc.last_ts - inc.start_ts >= self.long:
            inc.severity = "critical"

    def to_json(self) -> dict:
        return {"current": {r: inc.to_json() for r, inc in self.current.items()}, "early_clears": self.early_clears}

    @classmethod
    def from_json(cls, data: dict) -> IncidentTracker:
        return cls(current={r: Incident.from_json(d) for r, d in data.get("current", {}).items()},
                   early_clears=data.get("early_clears", {}))
