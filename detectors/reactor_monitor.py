"""Per-reactor online monitoring: event-time reordering, features, detectors, alarm hysteresis -> outputs.

Plain Python (the Bytewax flow only keys the stream by reactor and calls these methods), so it is tested
without the engine. The whole object pickles: held in a `MonitorState`, it is the flow's recovery state for one
reactor.

Each run is judged against its own recipe's reference (`detectors.recipe`; `set_recipe`, or `on_recipe` for the
plant's recipe messages), with culture age counted from the run's inoculation, not from the first tick seen: a
monitor that joins a run mid-batch knows its age from the recipe's `run_start_ts`, or else from the ticks' `seq`
(ticks since inoculation). An operator's mid-run change re-bases the reference from that moment and restarts the
members that learn the run's own normal (the streaming z-score), so the change itself raises nothing; it is
written to `annotations`. With `MonitorConfig.reference_in_background` (the live flow), a recipe whose reference
is not cached is built beside the step while the members that compare with it hold. `twin_residual` also
alarms per signal once its own alarm is a day old (`NEWS_MEMBERS`): a fault after a fault is news.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import detectors  # noqa: F401 - registers every detector
from core.codec import PLAUSIBLE, validate_ticks
from core.events import ALERTS, ANNOTATIONS, RECIPES, SCORES, TICK_SIGNALS, TICKS, distinct
from core.eventtime import ReorderBuffer
from detectors.alarm import MemberAlarms
from detectors.base import DETECTOR_SIGNALS, make_detector
from detectors.features import CAPACITANCE, FEED, features
from detectors.golden import GoldenReference
from detectors.recipe import Recipe, reference_for, reference_ready, reference_source
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

# members that watch the sensors themselves (stuck, silent), whatever the recipe: kept across a change
SENSOR_HEALTH = ("flatline", "dropout")
PENDING_KEPT = 4  # recipes held for runs not begun yet
# Members whose contributions are per-signal scores on the member's own scale. Once such a member's alarm has
# been on for `REBASE_US`, the levels its signals then have are the run's new normal (a fault's aftermath: a
# temperature spike leaves the culture smaller for days); a signal that moves a whole alarm level away from its own
# level since is news (a pH probe drifting after the spike) and fires an alert of its own, `member:signal`. Only a
# move away from normal counts (a fading aftermath is not news); one that crossed normal counts from the level (a
# reading the spike left low drifting up past normal), up to `PAST_NORMAL` times its distance past normal (a
# recovery that overshoots a little is not news).
NEWS_MEMBERS = ("twin_residual",)
REBASE_US = 24 * 3_600_000_000
PAST_NORMAL = 1.5


@dataclass
class NewsState:
    """A `NEWS_MEMBERS` member's alarm: since when it is on, the signals' levels after `REBASE_US`, and one
    alarm per signal over each signal's rise above that level."""

    since_us: int | None = None
    level: np.ndarray | None = None
    alarms: MemberAlarms = field(default_factory=MemberAlarms)


def _us(ts: datetime) -> int:
    return int(ts.timestamp() * 1e6)


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
        self.recipe: Recipe | None = None  # the current run's, changes included; None: the default's reference
        self.run_start_us: int | None = None
        self.pending: dict[str, tuple[Recipe, int | None]] = {}  # run id -> recipe, start: runs not begun yet
        self._reset()

    def _reset(self) -> None:
        self.det_state = self.detector.init_state(DETECTOR_SIGNALS)
        # alarms on score / alarm level, one per fusion member (a plain detector is one member)
        self.alarms = MemberAlarms(1.0, self.config.alarm_off / self.config.alarm_on, self.config.alarm_persist_ticks,
                                   self.config.alarm_clear_ticks)
        self.last_totals = np.array([np.nan, np.nan])
        self.news: dict[str, NewsState] = {}
        self.soft = SoftSensors()
        self.recipe, self.run_start_us = None, None
        self.awaiting: Recipe | None = None  # a recipe whose reference is still being built (in the background)

    # ---- the recipe -------------------------------------------------------------------------------------
    def _members(self) -> Iterator[tuple[str, object, object]]:
        """(name, detector, its state) of each fusion member, or the plain detector."""
        if hasattr(self.detector, "detectors"):
            for name, det in self.detector.detectors.items():
                yield name, det, self.det_state.members[name]
        else:
            yield self.detector.name, self.detector, self.det_state

    def _use_recipe(self, recipe: Recipe) -> str:
        """Every member that compares with a reference takes `recipe`'s (with `reference_in_background`, once it is
        built: until then those members hold their alarms); the soft sensors its media. Returns where the
        reference came from."""
        if self.config.reference_in_background:
            reference = reference_ready(recipe)
            self.awaiting = recipe if reference is None else None
            if reference is None:
                log.info("reactor %s: reference for recipe %s building; its members hold", self.reactor_id,
                         recipe.hash)
        else:
            reference = reference_for(recipe)
        if reference is not None:
            self._install(reference)
        self.soft.feed_glucose_g_l = float(recipe["feed_glucose_g_l"])
        if self.soft.anchor_us is None:
            self.soft.initial_glucose_g_l = float(recipe["glucose_g_l"])
        self.recipe = recipe
        return reference_source(recipe)

    def _install(self, reference: GoldenReference) -> None:
        for _, det, state in self._members():
            if hasattr(det, "reference"):
                det.reference = reference
                if hasattr(state, "last_us"):
                    state.last_us = None  # a hold is no gap in the data: the event-time EWMA goes on by one tick

    def _held(self) -> set[str]:
        """The members that hold while the recipe's reference is built (none once it is)."""
        if self.awaiting is not None and (reference := reference_ready(self.awaiting)) is not None:
            self._install(reference)
            self.awaiting = None
        if self.awaiting is None:
            return set()
        return {name for name, det, _ in self._members() if hasattr(det, "reference")}

    def _set_run_start(self, start_us: int) -> None:
        """Culture age counts from `start_us` for every member that follows it."""
        self.run_start_us = start_us
        for _, _, state in self._members():
            if hasattr(state, "start_us"):
                state.start_us = start_us

    def _restart_run_learnt(self) -> None:
        """The members that learnt this run's own normal start again: what they learnt is the old recipe's."""
        for name, det, _ in self._members():
            if hasattr(det, "reference") or name in SENSOR_HEALTH:
                continue
            if det is self.detector:
                self.det_state = det.init_state(DETECTOR_SIGNALS)
            else:
                self.det_state.members[name] = det.init_state(DETECTOR_SIGNALS)

    def on_recipe(self, recipes: pa.Table) -> Outputs:
        """Recipe messages from the plant (`RECIPES` rows: at a run's start and after each change)."""
        out = Outputs()
        for row in recipes.to_pylist():
            step = self.set_recipe(Recipe.from_json(row["recipe_json"]), row["ts"], run_id=row["run_id"],
                                   run_start_ts=row["run_start_ts"], changed_by=row["changed_by"])
            for name, table in step.tables.items():
                out.add(name, table)
        return out

    def set_recipe(self, recipe: Recipe, ts: datetime, *, run_start_ts: datetime | None = None,
                   changed_by: str | None = None, run_id: str | None = None) -> Outputs:
        """Take `recipe` for run `run_id` (default: the current one) from `ts`. For a run not begun yet it is
        kept until the run's first tick; for a run without a recipe yet (its start, or a monitor joining it) it
        selects the reference, culture age counted from `run_start_ts`; mid-run it re-bases the reference at
        `ts` (the twin's normal runs continue from their state at that age under the new settings) and restarts
        what learnt the run's own normal. Writes the `recipes` row and an `annotations` row."""
        out = Outputs()
        run_id = run_id or self.run_id
        if run_id is None:
            raise ValueError("set_recipe needs a run_id before the monitor has seen a run")
        start_us = None if run_start_ts is None else _us(run_start_ts)
        if run_id != self.run_id:
            self.pending[run_id] = (recipe, start_us)
            while len(self.pending) > PENDING_KEPT:
                self.pending.pop(next(iter(self.pending)))
            kind, text, source = "recipe", self._recipe_text(recipe), reference_source(recipe)
        elif self.recipe is None:
            source = self._use_recipe(recipe)
            if start_us is not None:
                self._set_run_start(start_us)
            kind, text = "recipe", self._recipe_text(recipe)
        else:
            at_h = (_us(ts) - (self.run_start_us or _us(ts))) / 3.6e9
            rebased = recipe if self.recipe.new_changes(recipe) is not None else self.recipe.as_changes_at(
                recipe, at_h)
            if rebased == self.recipe:
                return out  # nothing new (a message seen again)
            said = self.recipe.describe_change(rebased if rebased is not None else recipe, with_times=False)
            if rebased is None:  # e.g. a new volume: not a live control; the new recipe at the same culture age
                rebased = recipe
                said += " (not a live control: compared with the new recipe's normal runs at the same culture age)"
            source = self._use_recipe(rebased)
            self._restart_run_learnt()
            kind = "change"
            text = f"{said} at {ts.astimezone(UTC):%H:%M}" + (f" by {changed_by}" if changed_by else "")
            recipe = rebased
        out.add("recipes", pa.Table.from_pylist([{
            "run_id": run_id, "reactor_id": self.reactor_id, "ts": ts, "recipe_hash": recipe.hash,
            "recipe_json": recipe.to_json(), "run_start_ts": run_start_ts, "reference": source,
            "changed_by": changed_by}], schema=RECIPES))
        out.add("annotations", pa.Table.from_pylist([{
            "run_id": run_id, "reactor_id": self.reactor_id, "ts": ts, "kind": kind, "text": text,
            "changed_by": changed_by, "recipe_hash": recipe.hash}], schema=ANNOTATIONS))
        return out

    @staticmethod
    def _recipe_text(recipe: Recipe) -> str:
        differs = Recipe.default().describe_change(recipe)
        learned = " (reference learned from the plant's own normal batches)" \
            if reference_source(recipe) == "learned" else ""
        return f"recipe {recipe.hash}" + (f": {differs}" if differs else ": the default") + learned

    def _start_run(self, run: str, ticks: pa.Table) -> None:
        """A run's first ticks: its recipe if one came, and its start (inoculation) from the recipe or else
        from the ticks' seq (ticks since inoculation) at the recipe's tick, or the ticks' own spacing."""
        recipe, start_us = self.pending.pop(run, (None, None))
        self._use_recipe(recipe or Recipe.default())
        self.recipe = recipe  # None: no recipe came yet (the default's reference meanwhile)
        if start_us is None:
            ts = ticks["ts"].cast(pa.int64()).to_numpy()
            seq = ticks["seq"].to_numpy()
            tick_us = float((recipe or Recipe.default())["tick_s"]) * 1e6
            if len(seq) > 1 and seq[-1] != seq[0]:
                tick_us = (ts[-1] - ts[0]) / (seq[-1] - seq[0])
            start_us = int(ts[0] - seq[0] * tick_us)
        self._set_run_start(start_us)

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
                self._start_run(run, part)
            self._score_run(part, out)
        if out.alerts:
            out.tables["alerts"] = pa.Table.from_pylist(out.alerts, schema=ALERTS)

    def _member_scores(self, ts: np.ndarray, X: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(names, score ratios [members, n], contributions [members, n, signals]); a plain detector is one
        member scored against the configured alarm level."""
        held = self._held()
        if hasattr(self.detector, "score_learn_members"):
            self.det_state, R, C = self.detector.score_learn_members(self.det_state, ts, X, held)
            return list(self.detector.thresholds), R, C
        if held:
            return [self.detector.name], np.zeros((1, len(X))), np.zeros((1, *X.shape))
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
        thresholds = getattr(self.detector, "thresholds", {})
        for j, name in enumerate(names):
            if name in NEWS_MEMBERS:
                news = self._news(name, ts, C[j].T / thresholds.get(name, self.config.alarm_on), fired[j], cleared[j])
                self._news_alerts(ticks, name, news, scores, out)

    def _news(self, member: str, ts: np.ndarray, ratios: np.ndarray, fired: np.ndarray, cleared: np.ndarray,
              ) -> np.ndarray:
        """[signals, n]: each signal's move from its level (signed ratios) once `member`'s alarm has been on
        `REBASE_US`; 0 before and while the member's alarm is off."""
        st = self.news.setdefault(member, NewsState(alarms=MemberAlarms(
            1.0, self.config.alarm_off / self.config.alarm_on, self.config.alarm_persist_ticks,
            self.config.alarm_clear_ticks)))
        news = np.zeros_like(ratios)
        bounds = sorted({0, len(ts), *np.flatnonzero(fired | cleared).tolist()})
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if fired[a]:
                st.since_us, st.level = int(ts[a]), None
            elif cleared[a]:
                st.since_us, st.level = None, None
            if st.since_us is None:
                continue
            ripe = np.flatnonzero(ts[a:b] - st.since_us >= REBASE_US) + a
            if len(ripe) == 0:
                continue
            if st.level is None:
                st.level = ratios[:, ripe[0]].copy()
            move = ratios[:, ripe] - st.level[:, None]
            away = move * ratios[:, ripe] > 0  # moving away from normal, not back to it
            news[:, ripe] = np.where(away, np.minimum(np.abs(move), PAST_NORMAL * np.abs(ratios[:, ripe])), 0.0)
        return news

    def _news_alerts(self, ticks: pa.Table, member: str, news: np.ndarray, scores: np.ndarray, out: Outputs) -> None:
        _, fired, cleared = self.news[member].alarms.apply(news)
        for i in np.flatnonzero((fired | cleared).any(axis=0)):
            for k in np.flatnonzero(cleared[:, i]):
                key = f"{member}:{DETECTOR_SIGNALS[k]}"
                if key in self.open_alerts:
                    out.clears.append(alarm_clear(self.open_alerts.pop(key), ticks["ts"][int(i)].as_py()))
            for k in np.flatnonzero(fired[:, i]):
                key = f"{member}:{DETECTOR_SIGNALS[k]}"
                lead = np.zeros(len(DETECTOR_SIGNALS))
                lead[k] = 1.0  # the alert is about this signal alone: the others are the known aftermath
                self.open_alerts[key] = alert = self._alert(ticks, int(i), float(scores[i]), lead, key)
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


