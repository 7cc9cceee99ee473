"""Per-reactor online monitoring: event-time reordering, features, detectors, alarm hysteresis -> outputs.

Plain Python (the Bytewax flow only keys the stream by reactor and calls these methods), so it is tested
without the engine. The whole object pickles: held in a `MonitorState`, it is the flow's recovery state for one
reactor.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import detectors  # noqa: F401 - registers every detector
from core.codec import PLAUSIBLE, validate_ticks
from core.events import ALERTS, LATE_TICKS, SCORES, TICK_SIGNALS, TICKS, distinct
from core.eventtime import ReorderBuffer, beyond_horizon
from detectors.alarm import MemberAlarms
from detectors.base import DETECTOR_SIGNALS, make_detector
from detectors.features import CAPACITANCE, FEED, features
from detectors.soft_sensors import SoftSensors
from sources.jetstream import Message
from sources.telemetry import Item, dead_letter, rows_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorConfig:
    """A detector and its alarm. The flow runs `for_detector("fusion")`, the calibrated fusion (its scores are
    ratios to the members' thresholds, so it alarms at 1.0); the bare default is the streaming z-score at 12 sd.
    `snapshots_kept`: whether the flow keeps its snapshots (a recovery store); without one, the copy Bytewax
    takes of every reactor's state at each epoch is skipped (`MonitorState`)."""

    lateness_s: float = 300.0
    detector: str = "zscore"
    detector_params: tuple[tuple[str, float], ...] = ()
    alarm_on: float = 12.0
    alarm_off: float = 5.0
    alarm_persist_ticks: int = 5
    alarm_clear_ticks: int = 60
    snapshots_kept: bool = True

    @classmethod
    def for_detector(cls, name: str, lateness_s: float = 300.0, snapshots_kept: bool = True) -> MonitorConfig:
        if name == "zscore":
            return cls(lateness_s=lateness_s, snapshots_kept=snapshots_kept)
        if name == "fusion":
            return cls(lateness_s=lateness_s, detector="fusion", alarm_on=1.0, alarm_off=0.6,
                       snapshots_kept=snapshots_kept)
        raise ValueError(f"the flow runs 'fusion' or 'zscore', not {name!r}")


@dataclass
class Outputs:
    """What one step produces, per Delta table, plus the alerts to publish."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    alerts: list[dict] = field(default_factory=list)
    clears: list[dict] = field(default_factory=list)  # an open alert's alarm went quiet (incident lifecycle)
    duplicates: int = 0

    def add(self, name: str, table: pa.Table | None) -> None:
        if table is not None and table.num_rows:
            self.tables[name] = pa.concat_tables([self.tables[name], table]) if name in self.tables else table


class ReactorMonitor:
    def __init__(self, reactor_id: str, config: MonitorConfig = MonitorConfig()) -> None:
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
    def on_ticks(self, ticks: pa.Table) -> Outputs:
        released = self.reorder.push(ticks)
        out = Outputs(duplicates=released.duplicates)
        self.duplicate_count += released.duplicates
        if released.late is not None:
            self.late_count += released.late.num_rows
            out.add("late_ticks", _late_rows(released.late, released.watermark_us))
        self._score(released.ordered, out)
        return out

    def on_watermark(self, ts_us: int) -> Outputs:
        out = Outputs()
        self._score(self.reorder.advance_to(ts_us).ordered, out)
        return out

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
             pa.repeat(pa.scalar(self.detector.name), n), _held(scores),
             pa.repeat(pa.scalar(self.config.alarm_on), n),
             pa.array(is_alarm), _held(vcd), _held(glucose)], schema=SCORES))
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


def _held(values: np.ndarray) -> pa.Array:
    """`values` copied into Arrow's memory pool: `pa.array` would wrap numpy's buffer, glibc memory, for as long as
    the Delta sink holds the rows (why that matters: `core.codec._pooled`)."""
    return pa.concat_arrays([pa.array(values)])


def alarm_clear(alert: dict, ts: datetime) -> dict:
    """The message that closes an alert: its alarm stayed below the off level for the clear period."""
    return {"type": "clear", "alert_id": alert["alert_id"], "run_id": alert["run_id"],
            "reactor_id": alert["reactor_id"], "ts": ts, "opened_ts": alert["ts"]}


def _late_rows(late: pa.Table, watermark_us: int) -> pa.Table:
    n = late.num_rows
    now = datetime.now(UTC)
    wm = pa.array(np.full(n, watermark_us), pa.int64()).cast(LATE_TICKS.field("watermark_ts").type)
    return late.append_column(LATE_TICKS.field("watermark_ts"), wm).append_column(
        LATE_TICKS.field("arrived_at"), pa.array([now] * n, LATE_TICKS.field("arrived_at").type))


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


class MonitorState:
    """A reactor's state in the flow: its monitor, or, in a snapshot, the monitor pickled.

    Bytewax deep-copies every key's state at each epoch's end and, with a recovery store, pickles the copy
    into the store. Here the copy is the pickle: one pass over the monitor instead of two (a deep copy costs as
    much as the pickle, and every reactor's copy is taken in one go, holding up the alerts then in flight).
    Without a store nothing keeps the copy, so there is none: those copies were the worst of the alert tail."""

    def __init__(self, monitor: ReactorMonitor | None = None, pickled: bytes | None = None) -> None:
        self._monitor, self._pickled = monitor, pickled

    @property
    def monitor(self) -> ReactorMonitor:
        if self._monitor is None:  # restored from a snapshot
            self._monitor, self._pickled = pickle.loads(self._pickled), None  # type: ignore[arg-type]
        return self._monitor

    def __deepcopy__(self, memo: dict) -> MonitorState:
        if not self.monitor.config.snapshots_kept:
            return self
        return MonitorState(pickled=pickle.dumps(self.monitor, protocol=pickle.HIGHEST_PROTOCOL))


def monitor_step(state: MonitorState | None, item: object, config: MonitorConfig) -> tuple[MonitorState,
                                                                                          list[Outputs]]:
    """One keyed step of the flow: route an item (ticks, assays, watermark) to the reactor's monitor."""
    state = state or MonitorState(ReactorMonitor(item.reactor_id, config))  # type: ignore[attr-defined]
    monitor = state.monitor
    kind = item.kind  # type: ignore[attr-defined]
    if kind == "ticks":
        out = monitor.on_ticks(item.table)  # type: ignore[attr-defined]
    elif kind == "assays":
        out = monitor.on_assays(item.table)  # type: ignore[attr-defined]
    else:
        out = monitor.on_watermark(item.ts_us)  # type: ignore[attr-defined]
    return state, [out]


def _when(ts_us: int) -> str:
    return f"{np.datetime64(ts_us, 'us')}Z"  # any int64 (a datetime stops at the year 9999)


def _source(item: Item) -> Message:
    return item.source or Message(f"biopilot.telemetry.{item.reactor_id}", b"", {}, 0)


def _within_horizon(item: Item, reorder: ReorderBuffer, horizon_us: int, refused: Outputs) -> Item | None:
    """The item with what lies beyond the horizon taken out (into `refused`'s dead letters); None if nothing is
    left. The reference is the reactor's latest event time; before it has one, the wall clock: a replay of an
    old run is in the past and passes (only the future is bounded), and a plant that runs ahead of the clock
    (a sped-up simulation) is judged against its own event time from its first message on."""
    if item.kind == "assays":
        return item
    latest = reorder.latest_us
    reference_us = latest if latest is not None else time.time_ns() // 1000

    def horizon() -> str:  # formatted only for what is refused: this runs for every message
        return f"the horizon is {horizon_us / 3.6e9:g} h ahead of the reactor's latest event time " \
               f"{_when(reference_us)}{'' if latest is not None else ' (none yet: the clock)'}"

    if item.kind == "watermark":
        if item.ts_us - reference_us <= horizon_us:
            return item
        refused.add("deadletter", dead_letter(_source(item), f"watermark {_when(item.ts_us)} beyond the horizon: {horizon()}"))
        return None
    far = beyond_horizon(item.table["ts"].cast(pa.int64()).to_numpy(), reference_us, horizon_us)
    if far is None:
        return item
    rows = item.table.filter(far)
    reason = f"{rows.num_rows} tick(s) from {_when(rows['ts'].cast(pa.int64())[0].as_py())} beyond the horizon: " \
             f"{horizon()}"
    refused.add("deadletter", dead_letter(_source(item), reason, rows_payload(rows, [reason] * rows.num_rows)))
    return None if far.all() else replace(item, table=item.table.filter(~far))


def judged_step(state: MonitorState | None, item: Item, config: MonitorConfig,
                horizon_us: int) -> tuple[MonitorState, list[Outputs]]:
    """`monitor_step`, refusing instead of obeying what lies beyond the event-time horizon, and dead-lettering
    a message whose handling raises: one poison message costs itself, not the flow (which would otherwise exit
    before acking it, and meet it again after every restart)."""
    state = state or MonitorState(ReactorMonitor(item.reactor_id, config))
    refused = Outputs()
    try:
        kept = _within_horizon(item, state.monitor.reorder, horizon_us, refused)
        outputs = monitor_step(state, kept, config)[1] if kept is not None else []
    except Exception as err:  # noqa: BLE001 - dead-lettered with its reason, and logged with its traceback
        log.exception("dead-lettering a %s message for %s", item.kind, item.reactor_id)
        refused.add("deadletter", dead_letter(_source(item), f"{err.__class__.__name__}: {err}"))
        outputs = []
    return state, ([*outputs, refused] if refused.tables else outputs)
