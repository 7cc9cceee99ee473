"""Per-reactor online monitoring: event-time reordering, features, detectors, alarm hysteresis -> outputs.

Plain Python (the Bytewax flow only keys the stream by reactor and calls these methods), so it is tested
without the engine. The whole object pickles: held in a `MonitorState`, it is the flow's recovery state for one
reactor.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import detectors  # noqa: F401 - registers every detector
from core.codec import PLAUSIBLE, validate_ticks
from core.events import ALERTS, SCORES, TICK_SIGNALS, TICKS, distinct
from core.eventtime import ReorderBuffer
from detectors.alarm import MemberAlarms
from detectors.base import DETECTOR_SIGNALS, make_detector
from detectors.features import CAPACITANCE, FEED, features
from detectors.soft_sensors import SoftSensors
from detectors.unit_monitor import (
    DEFAULT_CONFIG,
    EventTimeInputs,
    MonitorConfig,
    Outputs,
    alarm_clear,
    held,
)

log = logging.getLogger(__name__)


class ReactorMonitor(EventTimeInputs):
    late_table = "late_ticks"

    def __init__(self, reactor_id: str, config: MonitorConfig = DEFAULT_CONFIG) -> None:
        self.reactor_id = reactor_id
        self.config = config
        self.reorder = ReorderBuffer(int(config.lateness_s * 1e6))
        self.detector = make_detector(config.detector, **dict(config.detector_params))
        self.run_id: str | None = None
        self.late_count = 0
        self.duplicate_count = 0
        self.latest_assay: dict | None = None
        self.open_alerts: dict[str, dict] = {}  # member -> its open alert
        self.last_ts: datetime | None = None
        self._reset()

    def _reset(self) -> None:
        self.det_state = self.detector.init_state(DETECTOR_SIGNALS)
        # alarms on score / alarm level, one per fusion member (a plain detector is one member)
        self.alarms = MemberAlarms(1.0, self.config.alarm_off / self.config.alarm_on, self.config.alarm_persist_ticks,
                                   self.config.alarm_clear_ticks)
        self.last_totals = np.array([np.nan, np.nan])
        self.soft = SoftSensors()

    # ---- inputs -----------------------------------------------------------------------------------------
    def on_assays(self, assays: pa.Table) -> Outputs:
        """Assays join by event time: kept as the reactor's latest lab result (by sample time), and they
        correct the current run's soft sensors."""
        for row in assays.sort_by("sample_ts").to_pylist():
            if row["run_id"] == self.run_id:
                self.soft.on_assay(int(row["sample_ts"].timestamp() * 1e6), row["vcd_e6_per_ml"], row["glucose_g_l"])
        latest = assays.sort_by("sample_ts").slice(assays.num_rows - 1).to_pylist()[0] if assays.num_rows else None
        if latest and (self.latest_assay is None or latest["sample_ts"] >= self.latest_assay["sample_ts"]):
            self.latest_assay = latest
        out = Outputs()
        out.add("assays", assays)
        return out

    # ---- scoring ----------------------------------------------------------------------------------------
    def _score(self, ordered: pa.Table | None, out: Outputs) -> None:
        if ordered is None or ordered.num_rows == 0:
            return
        out.add("ticks", ordered)
        runs = ordered["run_id"]
        run_ids = distinct(runs)  # in order of first appearance: runs follow each other in time
        for run in run_ids:
            part = ordered if len(run_ids) == 1 else ordered.filter(pc.equal(runs, run))
            if run != self.run_id:
                for alert in self.open_alerts.values():  # the run ended in alarm: its alerts close with it
                    out.clears.append(alarm_clear(alert, self.last_ts))
                self.open_alerts = {}
                self.run_id = run
                self._reset()
            self._score_run(part, out)
        if out.alerts:
            out.tables["alerts"] = pa.Table.from_pylist(out.alerts, schema=ALERTS)

    def _member_scores(self, ts: np.ndarray, X: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, score ratios [members, n], contributions [members, n, signals]); a plain detector is one
        member scored against the configured alarm level."""
        if hasattr(self.detector, "score_learn_members"):
            self.det_state, R, C = self.detector.score_learn_members(self.det_state, ts, X)
            return list(self.detector.thresholds), R, C
        if hasattr(self.detector, "score_learn_detail"):
            self.det_state, scores, contrib = self.detector.score_learn_detail(self.det_state, ts, X)
        else:
            self.det_state, scores = self.detector.score_learn(self.det_state, ts, X)
            contrib = np.zeros_like(X)
        return [self.detector.name], scores[None] / self.config.alarm_on, contrib[None]

    def _score_run(self, ticks: pa.Table, out: Outputs) -> None:
        X = features(ticks, self.last_totals)
        ts = ticks["ts"].cast(pa.int64()).to_numpy()
        names, R, C = self._member_scores(ts, X)
        scores = R.max(axis=0) * self.config.alarm_on
        self.last_ts = ticks["ts"][-1].as_py()
        is_alarm, fired, cleared = self.alarms.apply(R)
        n = ticks.num_rows
        vcd, glucose = self.soft.update(ts, X[:, CAPACITANCE], np.nan_to_num(X[:, FEED]),
                                        ticks["volume_l"].to_numpy(zero_copy_only=False))
        out.add("scores", pa.Table.from_arrays(
            [ticks["run_id"], ticks["reactor_id"], ticks["seq"], ticks["ts"],
             pa.repeat(pa.scalar(self.detector.name), n), held(scores),
             pa.repeat(pa.scalar(self.config.alarm_on), n),
             pa.array(is_alarm), held(vcd), held(glucose)], schema=SCORES))
        for i in np.flatnonzero((fired | cleared).any(axis=0)):
            for j in np.flatnonzero(cleared[:, i]):
                if names[j] in self.open_alerts:
                    out.clears.append(alarm_clear(self.open_alerts.pop(names[j]), ticks["ts"][int(i)].as_py()))
            for j in np.flatnonzero(fired[:, i]):
                alert = self._alert(ticks, int(i), float(scores[i]), C[j, i], names[j])
                self.open_alerts[names[j]] = alert
                out.alerts.append(alert)

    def _alert(self, ticks: pa.Table, i: int, score: float, contrib: np.ndarray, member: str) -> dict:
        run_id, seq = ticks["run_id"][i].as_py(), ticks["seq"][i].as_py()
        signals = []
        weights = np.abs(np.nan_to_num(contrib))
        total = weights.sum() or 1.0
        for j in np.argsort(-weights)[:5]:
            if weights[j] > 0:
                signals.append({"name": DETECTOR_SIGNALS[j], "contribution": float(weights[j] / total)})
        alert_id = hashlib.sha1(f"{run_id}|{seq}|{self.detector.name}|{member}".encode()).hexdigest()[:16]
        return {"alert_id": alert_id, "run_id": run_id, "reactor_id": self.reactor_id, "seq": seq,
                "ts": ticks["ts"][i].as_py(),
                "detector": self.detector.name, "member": member, "score": score, "threshold": self.config.alarm_on,
                "severity": "critical" if score >= 2 * self.config.alarm_on else "warning", "signals": signals,
                "emitted_at": datetime.now(UTC)}


def warm_up(config: MonitorConfig) -> Outputs:
    """Validate and score a few synthetic ticks, so that the models, the compiled kernels and their imports
    load now, not on the first real tick."""
    n = 10
    start_us = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1e6)
    ts = pa.array(start_us + 60_000_000 * np.arange(n), pa.int64()).cast(TICKS.field("ts").type)
    readings = {name: [min(max(PLAUSIBLE[name][0], 1.0), PLAUSIBLE[name][1])] * n for name in TICK_SIGNALS}
    ticks = pa.table({"run_id": ["warm-up"] * n, "reactor_id": ["warm-up"] * n, "seq": np.arange(n), "ts": ts,
                      **readings}, schema=TICKS)
    return ReactorMonitor("warm-up", config).on_ticks(validate_ticks(ticks).good)


