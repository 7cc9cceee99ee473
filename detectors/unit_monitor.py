"""What every plant kind's online monitor shares: its configuration, what a step outputs, the flow's per-unit
state (`MonitorState`), and the keyed step that routes an item to the unit's monitor (`monitor_step`,
`judged_step`: the event-time horizon and the poison-message guard).

A monitor is a class built as `Monitor(unit_id, config)` with `on_ticks`, `on_assays`, `on_watermark` (and
`on_doses` where its plant has doses) returning `Outputs`, and a `reorder` buffer: `detectors.reactor_monitor.
ReactorMonitor` (the bioreactor) and `detectors.patient_monitor.PatientMonitor` (a patient). The flow picks one by
`Settings.plant` and hands its class to the steps here.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from core.events import LATE_TICKS
from core.eventtime import ReorderBuffer, beyond_horizon
from sources.jetstream import Message
from sources.telemetry import Item, dead_letter, rows_payload

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorConfig:
    """A detector and its alarm. The flow runs `for_detector("fusion")`, the calibrated fusion (its scores are
    ratios to the members' thresholds, so it alarms at 1.0); the bare default is the streaming z-score at 12 sd.
    `snapshots_kept`: whether the flow keeps its snapshots (a recovery store); without one, the copy Bytewax
    takes of every reactor's state at each epoch is skipped (`MonitorState`). `reference_in_background`: a recipe
    whose reference is not cached yet is built in a background thread while the members that compare with it
    hold their alarms (the live flow), not in the step (offline replays and benches, which must not skip a tick).
    """

    lateness_s: float = 300.0
    detector: str = "zscore"
    detector_params: tuple[tuple[str, float], ...] = ()
    alarm_on: float = 12.0
    alarm_off: float = 5.0
    alarm_persist_ticks: int = 5
    alarm_clear_ticks: int = 60
    snapshots_kept: bool = True
    reference_in_background: bool = False

    @classmethod
    def for_detector(cls, name: str, lateness_s: float = 300.0, snapshots_kept: bool = True,
                     reference_in_background: bool = False) -> MonitorConfig:
        if name == "zscore":
            return cls(lateness_s=lateness_s, snapshots_kept=snapshots_kept,
                       reference_in_background=reference_in_background)
        if name == "fusion":
            return cls(lateness_s=lateness_s, detector="fusion", alarm_on=1.0, alarm_off=0.6,
                       snapshots_kept=snapshots_kept, reference_in_background=reference_in_background)
        raise ValueError(f"the flow runs 'fusion' or 'zscore', not {name!r}")


DEFAULT_CONFIG = MonitorConfig()


@dataclass
class Outputs:
    """What one step produces, per Delta table, plus the alerts to publish."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    alerts: list[dict] = field(default_factory=list)
    clears: list[dict] = field(default_factory=list)  # an open alert's alarm went quiet (incident lifecycle)
    twins: list[dict] = field(default_factory=list)  # a patient's twin refitted (the patient monitor's messages)
    duplicates: int = 0

    def add(self, name: str, table: pa.Table | None) -> None:
        if table is not None and table.num_rows:
            self.tables[name] = pa.concat_tables([self.tables[name], table]) if name in self.tables else table


class UnitMonitor(Protocol):
    """What the flow's steps need of a plant kind's monitor."""

    config: MonitorConfig
    reorder: ReorderBuffer

    def on_ticks(self, ticks: pa.Table) -> Outputs: ...

    def on_assays(self, assays: pa.Table) -> Outputs: ...

    def on_watermark(self, ts_us: int) -> Outputs: ...


MonitorFactory = Callable[[str, MonitorConfig], Any]  # (unit id, config) -> a monitor


class EventTimeInputs:
    """The readings' way into a monitor, the same for every plant kind: reordered by event time, what comes
    after its window closed kept apart in `late_table`, the rest scored in order by the monitor's `_score`."""

    late_table: str  # "late_ticks" | "late_vitals"
    reorder: ReorderBuffer
    late_count: int
    duplicate_count: int

    def _score(self, ordered: pa.Table | None, out: Outputs) -> None:
        raise NotImplementedError

    def on_ticks(self, ticks: pa.Table) -> Outputs:
        released = self.reorder.push(ticks)
        out = Outputs(duplicates=released.duplicates)
        self.duplicate_count += released.duplicates
        if released.late is not None:
            self.late_count += released.late.num_rows
            out.add(self.late_table, late_rows(released.late, released.watermark_us))
        self._score(released.ordered, out)
        return out

    def on_watermark(self, ts_us: int) -> Outputs:
        out = Outputs()
        self._score(self.reorder.advance_to(ts_us).ordered, out)
        return out


def held(values: np.ndarray) -> pa.Array:
    """`values` copied into Arrow's memory pool: `pa.array` would wrap numpy's buffer, glibc memory, for as long as
    the Delta sink holds the rows (why that matters: `core.codec._pooled`)."""
    return pa.concat_arrays([pa.array(values)])


def alarm_clear(alert: dict, ts: datetime) -> dict:
    """The message that closes an alert: its alarm stayed below the off level for the clear period."""
    return {"type": "clear", "alert_id": alert["alert_id"], "run_id": alert["run_id"],
            "reactor_id": alert["reactor_id"], "ts": ts, "opened_ts": alert["ts"]}


def late_rows(late: pa.Table, watermark_us: int) -> pa.Table:
    """Late readings (ticks or vitals) with the watermark they came after and when they arrived."""
    n = late.num_rows
    now = datetime.now(UTC)
    wm = pa.array(np.full(n, watermark_us), pa.int64()).cast(LATE_TICKS.field("watermark_ts").type)
    return late.append_column(LATE_TICKS.field("watermark_ts"), wm).append_column(
        LATE_TICKS.field("arrived_at"), pa.array([now] * n, LATE_TICKS.field("arrived_at").type))


class MonitorState:
    """A unit's state in the flow: its monitor, or, in a snapshot, the monitor pickled.

    Bytewax deep-copies every key's state at each epoch's end and, with a recovery store, pickles the copy
    into the store. Here the copy is the pickle: one pass over the monitor instead of two (a deep copy costs as
    much as the pickle, and every reactor's copy is taken in one go, holding up the alerts then in flight).
    Without a store nothing keeps the copy, so there is none: those copies were the worst of the alert tail."""

    def __init__(self, monitor: UnitMonitor | None = None, pickled: bytes | None = None) -> None:
        self._monitor, self._pickled = monitor, pickled

    @property
    def monitor(self) -> UnitMonitor:
        if self._monitor is None:  # restored from a snapshot
            self._monitor, self._pickled = pickle.loads(self._pickled), None  # type: ignore[arg-type]
        return self._monitor

    def __deepcopy__(self, memo: dict) -> MonitorState:
        if not self.monitor.config.snapshots_kept:
            return self
        return MonitorState(pickled=pickle.dumps(self.monitor, protocol=pickle.HIGHEST_PROTOCOL))


def monitor_step(state: MonitorState | None, item: Item, config: MonitorConfig,
                 make: MonitorFactory) -> tuple[MonitorState, list[Outputs]]:
    """One keyed step of the flow: route an item (ticks, assays, doses, recipe, watermark) to the unit's monitor, made
    by `make(unit_id, config)` on the unit's first item."""
    state = state or MonitorState(make(item.unit_id, config))
    monitor = state.monitor
    kind = item.kind
    if kind == "ticks":
        out = monitor.on_ticks(item.table)
    elif kind == "assays":
        out = monitor.on_assays(item.table)
    elif kind == "doses":
        out = monitor.on_doses(item.table)  # type: ignore[attr-defined] - a plant with doses has on_doses
    elif kind == "recipe":
        out = monitor.on_recipe(item.table)  # type: ignore[attr-defined] - routed for reactors only
    else:
        out = monitor.on_watermark(item.ts_us)
    return state, [out]


def _when(ts_us: int) -> str:
    return f"{np.datetime64(ts_us, 'us')}Z"  # any int64 (a datetime stops at the year 9999)


def _source(item: Item) -> Message:
    return item.source or Message(f"biopilot.telemetry.{item.unit_id}", b"", {}, 0)


def _within_horizon(item: Item, reorder: ReorderBuffer, horizon_us: int, refused: Outputs) -> Item | None:
    """The item with what lies beyond the horizon taken out (into `refused`'s dead letters); None if nothing is
    left. The reference is the unit's latest event time; before it has one, the wall clock: a replay of an
    old run is in the past and passes (only the future is bounded), and a plant that runs ahead of the clock
    (a sped-up simulation) is judged against its own event time from its first message on."""
    if item.kind in ("assays", "doses", "recipe"):
        return item
    latest = reorder.latest_us
    reference_us = latest if latest is not None else time.time_ns() // 1000

    def horizon() -> str:  # formatted only for what is refused: this runs for every message
        return f"the horizon is {horizon_us / 3.6e9:g} h ahead of the unit's latest event time " \
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


def judged_step(state: MonitorState | None, item: Item, config: MonitorConfig, horizon_us: int,
                make: MonitorFactory) -> tuple[MonitorState, list[Outputs]]:
    """`monitor_step`, refusing instead of obeying what lies beyond the event-time horizon, and dead-lettering
    a message whose handling raises: one poison message costs itself, not the flow (which would otherwise exit
    before acking it, and meet it again after every restart)."""
    state = state or MonitorState(make(item.unit_id, config))
    refused = Outputs()
    try:
        kept = _within_horizon(item, state.monitor.reorder, horizon_us, refused)
        outputs = monitor_step(state, kept, config, make)[1] if kept is not None else []
    except Exception as err:  # noqa: BLE001 - dead-lettered with its reason, and logged with its traceback
        log.exception("dead-lettering a %s message for %s", item.kind, item.unit_id)
        refused.add("deadletter", dead_letter(_source(item), f"{err.__class__.__name__}: {err}"))
        outputs = []
    return state, ([*outputs, refused] if refused.tables else outputs)
