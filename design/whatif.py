"""Counterfactual what-if on a stored run: the run re-simulated with one thing changed, beside itself.

The lake's `runs` row holds the run's scenario (`config_json`), seed and reactor (its random streams are
`[seed, index, stream]`, `sources.fleet`); `labels` holds its faults, the scenario's and any injected live;
`recipes` holds an operator's mid-run changes. The run is rebuilt from those twice, as two reactors of one fleet
with the same random streams: the actual one, checked against the stored assays, and the counterfactual one, to
which the change is made at `from_h`: a fault removed from then on (its window cut there: before it, nothing
differs), a control set (DO or pH setpoint, temperature shift...), a kinetic parameter or the daily feed changed;
from the run's start any scenario setting can change. Both are stepped in the batch writer's daily chunks (split
at `from_h`), so where the twin is deterministic the counterfactual of a fault removed at its onset is the
fault-free run itself, to the last bit.

    run = load_run(lake, run_id)
    res = what_if(run, Change(without_fault="overfeed"))  # or Change(settings={"do_setpoint_pct": 30.0}), from_ts
    res.as_json()   # `biopilot whatif --json`: final_titer_g_l_actual, final_titer_g_l_counterfactual, ...
    res.sentence()  # "without the overfeed, final titer would have been 3.12 g/L instead of 2.59 g/L"

What cannot be done raises `WhatIfError`, its message one line for the user.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sinks import delta
from sources import kinetics as K
from sources import reactor as R
from sources.faults import CATALOGUE, SENSOR_FAULTS
from sources.fleet import Fleet
from sources.measurement import SENSOR_FAULT_KIND
from sources.recipe import BOLUS, SETTING_CONTROLS, Recipe
from sources.scenarios import Scenario, ScenarioError, parse_scenario

SERIES = ("titer_g_l", "vcd_e6_per_ml", "viability_pct", "lactate_g_l", "glucose_g_l", "ammonia_mm",
          "osmolality_mosm_kg", "hcp_ng_ml")


class WhatIfError(ValueError):
    """A what-if that cannot be made; the message is one line meant for the user."""


@dataclass
class StoredRun:
    run_id: str
    scenario: Scenario
    seed: int
    index: int
    started: datetime
    faults: list[dict]  # the labels: fault, start_h, duration_h, magnitude, signal
    changes: tuple[tuple[float, str, float], ...]  # operator changes (hours since inoculation, control, value)
    assays: pa.Table


def load_run(lake: str | Path, run_id: str) -> StoredRun:
    runs = delta.read(lake, "runs", run_ids=[run_id])
    if runs is None or runs.num_rows == 0:
        raise WhatIfError(f"no run {run_id!r} in the lake's runs table")
    row = runs.to_pylist()[0]
    if row["plant"] != "bioreactor":
        raise WhatIfError(f"run {run_id} is a {row['plant']} run; what-if re-simulates bioreactor runs")
    try:
        scenario = parse_scenario(json.loads(row["config_json"]), f"run {run_id}")
    except (ScenarioError, json.JSONDecodeError, TypeError) as err:
        raise WhatIfError(f"run {run_id}: its stored scenario cannot be read: {err}") from None
    started = row["started_ts"]
    labels = delta.read(lake, "labels", run_ids=[run_id])
    faults = []
    for lab in ([] if labels is None else labels.to_pylist()):
        signals = lab["signals"] or []
        faults.append({"fault": lab["fault"], "start_h": (lab["start_ts"] - started).total_seconds() / 3600.0,
                       "duration_h": (lab["end_ts"] - lab["start_ts"]).total_seconds() / 3600.0,
                       "magnitude": lab["magnitude"],
                       "signal": signals[0] if lab["fault"] in SENSOR_FAULTS and signals else None})
    recipes = delta.read(lake, "recipes", run_ids=[run_id]) if delta.open_table(lake, "recipes") else None
    changes: tuple = ()
    if recipes is not None and recipes.num_rows:
        latest = recipes.sort_by([("ts", "descending")]).to_pylist()[0]
        changes = Recipe.from_json(latest["recipe_json"]).changes
    assays = delta.read(lake, "assays", run_ids=[run_id])
    return StoredRun(run_id, scenario, int(row["seed"]), int(row["reactor_id"].lstrip("r")) - 1, started, faults,
                     tuple(changes), assays if assays is not None else pa.table({}))


@dataclass
class Change:
    """What the counterfactual changes: a fault removed, or settings made (KEY=VALUE)."""

    without_fault: str | None = None
    settings: dict[str, float | str] = field(default_factory=dict)

    def describe(self) -> str:
        if self.without_fault:
            return f"without the {self.without_fault}"
        return "with " + ", ".join(f"{k} = {v}" for k, v in self.settings.items())


@dataclass
class WhatIf:
    run_id: str
    change: Change
    from_h: float
    started: datetime
    days: dict[str, np.ndarray]  # "actual"/"counterfactual": each assay's culture day
    actual: dict[str, np.ndarray]
    counterfactual: dict[str, np.ndarray]
    actual_ticks: pa.Table
    counterfactual_ticks: pa.Table
    reproduced: dict[str, object]  # the re-simulated actual run against the stored assays

    def final(self, which: str, name: str) -> float:
        values = getattr(self, which)[name]
        return float(values[-1]) if len(values) else math.nan

    def as_json(self) -> dict:
        out: dict[str, object] = {"run_id": self.run_id, "change": self.change.describe(), "from_h": self.from_h,
                                  "from_ts": (self.started + timedelta(hours=self.from_h)).isoformat()}
        for name, unit in (("titer", "g_l"), ("vcd", "e6_per_ml"), ("viability", "pct"), ("hcp", "ng_ml")):
            for which in ("actual", "counterfactual"):
                out[f"final_{name}_{unit}_{which}"] = self.final(which, f"{name}_{unit}")
        for which in ("actual", "counterfactual"):
            values = getattr(self, which)["lactate_g_l"]
            out[f"peak_lactate_g_l_{which}"] = float(values.max()) if len(values) else math.nan
        out["sentence"] = self.sentence()
        out["reproduced"] = self.reproduced
        return out

    def sentence(self) -> str:
        actual, cf = self.final("actual", "titer_g_l"), self.final("counterfactual", "titer_g_l")
        return f"{self.change.describe()}, final titer would have been {cf:.2f} g/L instead of {actual:.2f} g/L"


def _from_h(run: StoredRun, change: Change, from_ts: datetime | None) -> float:
    if from_ts is not None:
        from_h = (from_ts - run.started).total_seconds() / 3600.0
        if not 0 <= from_h < run.scenario.days * 24:
            raise WhatIfError(f"--from {from_ts.isoformat()} is outside run {run.run_id} "
                              f"({run.started.isoformat()} + {run.scenario.days:g} days)")
        return from_h
    if change.without_fault:
        return min(f["start_h"] for f in run.faults if f["fault"] == change.without_fault)
    return 0.0


def _remove_fault(fleet: Fleet, k: int, fault: str, from_h: float) -> None:
    """The fault's window on reactor k cut at `from_h` (removed if it had not begun)."""
    if fault in SENSOR_FAULTS:
        rows = fleet.sensor_faults[k, :, 0] == SENSOR_FAULT_KIND[fault]
        fleet.sensor_faults[k, rows, 3] = np.maximum(fleet.sensor_faults[k, rows, 2], from_h)
    else:
        i = R.FAULT_NAMES.index(fault)
        fleet.faults[k, i, 1] = max(fleet.faults[k, i, 0], from_h)


def _live_setting(fleet: Fleet, k: int, key: str, value: float, at_h: float) -> None:
    """A setting changed on reactor k mid-run: a control, a kinetic parameter or the daily feed."""
    name = key.split(".", 1)[-1]
    control, factor = SETTING_CONTROLS.get(name, (name, 1.0))
    if control in R.C:
        fleet.set_control(k, control, value * factor)
    elif name in K.PARAM_NAMES:
        fleet.p[k, K.PARAM_NAMES.index(name)] = value
    elif name == "percent_of_volume":
        base = fleet.scenario.feed.percent_of_volume
        later = fleet.bolus[k, :, 0] >= at_h
        fleet.bolus[k, later, 1] *= value / base if base else 0.0
        fleet.c[k, R.C_CONT_FEED] *= value / base if base else 0.0
    else:
        raise WhatIfError(f"{key} cannot change mid-run: give --from the run's start, or set a control "
                          f"({', '.join(R.CONTROL_NAMES)}), a kinetic parameter or feed.percent_of_volume")


def _scenario_with(scenario: Scenario, settings: dict[str, float | str]) -> Scenario:
    data = scenario.model_dump()
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        if not section:
            section = next((s for s, part in (("process", scenario.process), ("feed", scenario.feed))
                            if name in type(part).model_fields), "kinetics" if name in K.PARAM_NAMES else "")
        if section not in ("process", "feed", "kinetics"):
            raise WhatIfError(f"unknown setting {key!r}: a scenario setting (process.*, feed.*, kinetics.*) "
                              f"or a control ({', '.join(R.CONTROL_NAMES)})")
        data[section][name] = value
    try:
        return parse_scenario(data, "--set")
    except ScenarioError as err:
        raise WhatIfError(str(err)) from None


def _fleet(scenario: Scenario, run: StoredRun, run_id: str) -> Fleet:
    fleet = Fleet(scenario, 1, seed=run.seed, first_index=run.index, run_ids=[run_id])
    fleet.started = [run.started]
    # faults injected live (not drawn from the scenario's own specs) are put back at their times
    drawn = [(lab.fault, (lab.start_ts - scenario.start).total_seconds() / 3600.0) for lab in fleet.labels]
    for f in run.faults:
        if not any(name == f["fault"] and abs(h - f["start_h"]) < 1e-3 for name, h in drawn):
            fleet.inject_fault(0, f["fault"], f["start_h"], f["duration_h"], f["magnitude"], f["signal"])
    return fleet


def _live_target(key: str) -> None:
    """Refuse, before any step, a setting that cannot change mid-run (else the actual run is stepped first)."""
    name = key.split(".", 1)[-1]
    control, _ = SETTING_CONTROLS.get(name, (name, 1.0))
    if control not in R.C and name not in K.PARAM_NAMES and name != "percent_of_volume":
        raise WhatIfError(f"{key} cannot change mid-run: give --from the run's start, or set a control "
                          f"({', '.join(R.CONTROL_NAMES)}), a kinetic parameter or feed.percent_of_volume")


def _in_scenario(scenario: Scenario, key: str) -> bool:
    """Whether `key` names a scenario setting (whose bounds then hold mid-run too), not a control alone."""
    section, _, name = key.rpartition(".")
    parts = {"process": type(scenario.process).model_fields, "feed": type(scenario.feed).model_fields}
    if section:
        return name in parts.get(section, ()) or (section == "kinetics" and name in K.PARAM_NAMES)
    return any(name in fields for fields in parts.values()) or name in K.PARAM_NAMES


def what_if(run: StoredRun, change: Change, from_ts: datetime | None = None) -> WhatIf:
    if not change.without_fault and not change.settings:  # `--without-fault ""`: else "with , ..." and no change
        raise WhatIfError("nothing to change: name a fault the run had, or KEY=VALUE settings")
    if change.without_fault:
        if change.without_fault not in CATALOGUE:
            raise WhatIfError(f"unknown fault {change.without_fault!r}; allowed: {', '.join(CATALOGUE)}")
        had = sorted({f["fault"] for f in run.faults})
        if change.without_fault not in had:
            raise WhatIfError(f"run {run.run_id} has no {change.without_fault} fault; its faults: "
                              f"{', '.join(had) or 'none'}")
    from_h = _from_h(run, change, from_ts)
    actual = _fleet(run.scenario, run, run.run_id)
    settings_at_start = bool(change.settings) and from_h == 0.0
    cf_scenario = _scenario_with(run.scenario, change.settings) if settings_at_start else run.scenario
    counterfactual = _fleet(cf_scenario, run, f"{run.run_id}-whatif")
    try:
        fleet = Fleet.stack([actual, counterfactual])
    except ValueError as err:
        raise WhatIfError(f"a what-if keeps the run's length, tick and measurement: {err}") from None
    if change.without_fault:  # time-triggered: cut now, acts at from_h
        _remove_fault(fleet, 1, change.without_fault, from_h)

    # the batch writer's daily chunks, split where something happens
    day_ticks = max(1, int(86400 / fleet.dt_s))
    events: dict[int, list] = {}
    for at_h, name, value in run.changes:
        events.setdefault(int(round(at_h * 3600 / fleet.dt_s)), []).append(("both", name, value, at_h))
    if change.settings and not settings_at_start:
        for key, value in change.settings.items():
            try:
                number = float(value)
            except ValueError:
                raise WhatIfError(f"{key} = {value!r}: a mid-run change takes a number") from None
            _live_target(key)
            if not math.isfinite(number):
                raise WhatIfError(f"{key} = {value}: a mid-run change takes a finite number")
            if _in_scenario(run.scenario, key):  # the bounds a change at the start is held to (DO 0-100 %...)
                _scenario_with(run.scenario, {key: number})
            events.setdefault(int(round(from_h * 3600 / fleet.dt_s)), []).append(("cf", key, number, from_h))
    stops = sorted({*range(day_ticks, fleet.total_ticks, day_ticks), *events, fleet.total_ticks} - {0})
    ticks, assays = [], []
    done = 0
    for stop in [0, *stops]:
        if stop > done:
            chunk = fleet.step(stop - done)
            ticks.append(chunk.ticks)
            assays.append(chunk.assays)
            done = stop
        for who, name, value, at_h in events.get(stop, []):
            for k in ((0, 1) if who == "both" else (1,)):
                if name == BOLUS:
                    fleet.add_bolus(k, value)
                elif who == "both":
                    fleet.set_control(k, name, value)
                else:
                    _live_setting(fleet, k, name, value, at_h)
    tick_table = pa.Table.from_batches(ticks)
    assay_table = pa.concat_tables(assays)
    days, series = {}, {}
    for which, rid in (("actual", run.run_id), ("counterfactual", f"{run.run_id}-whatif")):
        rows = assay_table.filter(pc.equal(assay_table["run_id"], rid))
        ts = rows["sample_ts"].to_pylist()
        days[which] = np.array([(t - run.started).total_seconds() / 86400.0 for t in ts])
        series[which] = {name: rows[name].to_numpy() for name in SERIES}
    split = {which: tick_table.filter(pc.equal(tick_table["run_id"], rid))
             for which, rid in (("actual", run.run_id), ("counterfactual", f"{run.run_id}-whatif"))}
    return WhatIf(run.run_id, change, from_h, run.started, days, series["actual"], series["counterfactual"],
                  split["actual"], split["counterfactual"], _reproduced(run, series["actual"]))


def _reproduced(run: StoredRun, actual: dict[str, np.ndarray]) -> dict[str, object]:
    """The re-simulated run's assays against the stored ones: the same, where the run is rebuilt exactly."""
    if run.assays.num_rows == 0:
        return {"assays_compared": 0, "match": False}
    stored = run.assays.sort_by("sample_ts")["titer_g_l"].to_numpy()
    n = min(len(stored), len(actual["titer_g_l"]))
    diff = float(np.max(np.abs(stored[:n] - actual["titer_g_l"][:n]))) if n else math.inf
    return {"assays_compared": n, "max_abs_titer_diff_g_l": diff,
            "match": bool(n == len(stored) and diff <= 1e-9 * max(1.0, float(np.max(np.abs(stored)))))}
