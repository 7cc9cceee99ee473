"""A reactor run's recipe: the settings that shape a normal run, and the changes an operator made while it ran.

`Recipe` is what the plant publishes with each run (`sources.plant.PlantFeed`) and what the monitor's reference
is made for (`detectors.recipe.reference_for`): the scenario's process and feed settings, its tick and length,
kinetics overrides, and each mid-run change at its culture age. `simulate_with_changes` runs a fleet under
those changes as the live plant applies commands.

>>> r = Recipe.default()
>>> low = r.with_changes(do_setpoint_pct=30.0)
>>> r.describe_change(low)
'DO setpoint 40 → 30 %'
>>> len(low.hash), low.hash != r.hash, Recipe.from_json(low.to_json()) == low
(16, True, True)
>>> r.describe_change(r.changed_at(26.0, "do_setpoint_pct", 30.0))
'DO setpoint lowered to 30 % (from 40) at 26.0 h'
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import pyarrow as pa

from sources.fleet import Fleet
from sources.reactor import CONTROL_NAMES
from sources.scenarios import FeedConfig, ProcessConfig, Scenario, load_scenario, parse_scenario

BOLUS = "bolus_ml"  # a change that is a one-off feed bolus (the live `feed` command), not a control's value
Change = tuple[float, str, float]  # (hours since inoculation, control name or BOLUS, value)

FEED_PREFIX = "feed_"  # feed settings carry it: the feed's glucose_g_l is not the medium's
RUN_SETTINGS = ("tick_s", "days")

# how a setting reads in an annotation: its words and unit
SETTING_WORDS: dict[str, tuple[str, str]] = {
    "do_setpoint_pct": ("DO setpoint", "%"), "ph_setpoint": ("pH setpoint", ""),
    "ph_deadband": ("pH deadband", ""), "temp_setpoint_c": ("temperature setpoint", "°C"),
    "temp_shift_c": ("shift temperature", "°C"), "temp_shift_day": ("temperature shift day", ""),
    "temp_shift_h": ("temperature shift", "h"), "working_volume_l": ("working volume", "L"),
    "seed_vcd_e6_per_ml": ("seeding density", "e6 cells/mL"), "agitation_min_rpm": ("minimum agitation", "rpm"),
    "agitation_max_rpm": ("maximum agitation", "rpm"), "feed_mode": ("feed mode", ""),
    "feed_days": ("feed days", ""), "feed_hour": ("feed hour", ""),
    "feed_percent_of_volume": ("daily feed", "% of volume"), "feed_pump_ml_min": ("feed pump", "mL/min"),
    "continuous_feed_ml_h": ("continuous feed", "mL/h"), "feed_continuous_start_day": ("continuous feed start day", ""),
    BOLUS: ("feed bolus", "mL"), "tick_s": ("tick", "s"),
}
# a recipe setting the live plant changes by a control command of another name: (control, factor)
SETTING_CONTROLS: dict[str, tuple[str, float]] = {"temp_shift_day": ("temp_shift_h", 24.0)}


def _value(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def describe_setting(name: str, old: Any, new: Any) -> str:
    """'DO setpoint 40 → 30 %'."""
    words, unit = SETTING_WORDS.get(name, (name, ""))
    if name == BOLUS:
        return f"feed bolus of {_fmt(new)} mL"
    return f"{words} {_fmt(old)} → {_fmt(new)}{' ' + unit if unit else ''}"


def describe_command(name: str, old: Any, new: Any) -> str:
    """'DO setpoint lowered to 30 % (from 40)': the words of an operator's change."""
    words, unit = SETTING_WORDS.get(name, (name, ""))
    if name == BOLUS:
        return f"feed bolus of {_fmt(new)} mL added"
    if isinstance(old, float | int) and isinstance(new, float | int) and old != new:
        verb = "lowered" if new < old else "raised"
        return f"{words} {verb} to {_fmt(float(new))}{' ' + unit if unit else ''} (from {_fmt(float(old))})"
    return f"{words} set to {_fmt(new)}{' ' + unit if unit else ''}"


@dataclass(frozen=True)
class Recipe:
    """The settings that shape a normal run. `settings`: sorted (name, value) pairs: every `ProcessConfig` field
    under its own name, every `FeedConfig` field prefixed `feed_`, `tick_s` and `days`; `kinetics`: the
    scenario's kinetic overrides; `changes`: (hours since inoculation, control name or `bolus_ml`, value) made
    while the run ran, in time order."""

    settings: tuple[tuple[str, Any], ...]
    kinetics: tuple[tuple[str, float], ...] = ()
    changes: tuple[Change, ...] = ()

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_scenario(cls, scenario: Scenario) -> Recipe:
        pairs = [(k, _value(v)) for k, v in scenario.process.model_dump().items()]
        pairs += [(FEED_PREFIX + k, _value(v)) for k, v in scenario.feed.model_dump().items()]
        pairs += [(k, float(getattr(scenario, k))) for k in RUN_SETTINGS]
        return cls(tuple(sorted(pairs)), tuple(sorted(scenario.kinetics.items())))

    @classmethod
    def default(cls) -> Recipe:
        """The `normal` scenario's recipe: the one the shipped golden batch was built from."""
        return _default_recipe()

    def with_changes(self, **settings: Any) -> Recipe:
        """The same recipe with other base settings (checked by the scenario model: `ScenarioError`)."""
        current = dict(self.settings)
        unknown = sorted(set(settings) - set(current))
        if unknown:
            raise ValueError(f"unknown recipe setting(s) {', '.join(unknown)}; allowed: {', '.join(current)}")
        current.update({k: _value(v) for k, v in settings.items()})
        changed = replace(self, settings=tuple(sorted(current.items())))
        changed.scenario()  # validates every value
        return changed

    def changed_at(self, at_h: float, name: str, value: float) -> Recipe:
        """The recipe with an operator's command (a control's new value, or a `bolus_ml`) made `at_h` hours
        after inoculation."""
        if name != BOLUS and name not in CONTROL_NAMES:
            raise ValueError(f"unknown control {name!r}; allowed: {', '.join(CONTROL_NAMES)}, {BOLUS}")
        at_h = round(float(at_h) * 3600.0) / 3600.0  # to the second: a clock summed tick by tick drifts
        return replace(self, changes=tuple(sorted((*self.changes, (at_h, name, float(value))))))

    # ---- what it is -----------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return dict(self.settings)[name]

    def control_value(self, name: str) -> float | None:
        """A control's value once every change is made: the latest change's, else the base setting's."""
        for _, changed, value in reversed(self.changes):
            if changed == name:
                return value
        base = dict(self.settings)
        for setting, (control, factor) in SETTING_CONTROLS.items():
            if control == name:
                v = base.get(setting)
                return None if v is None else float(v) * factor
        v = base.get(name)
        return float(v) if isinstance(v, int | float) else None

    def scenario(self) -> Scenario:
        """The scenario whose normal runs (before `changes`) this recipe describes; no faults."""
        base = dict(self.settings)
        process = {k: base[k] for k in ProcessConfig.model_fields}
        feed = {k: base[FEED_PREFIX + k] for k in FeedConfig.model_fields}
        return parse_scenario({"name": f"recipe-{self.base_hash}", "process": process, "feed": feed,
                               "kinetics": dict(self.kinetics), **{k: base[k] for k in RUN_SETTINGS}}, "recipe")

    def _payload(self, with_changes: bool = True) -> dict:
        return {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings},
                "kinetics": dict(self.kinetics),
                "changes": [list(c) for c in self.changes] if with_changes else []}

    @cached_property
    def hash(self) -> str:
        """16 hex characters over every setting and change: the reference's cache key."""
        return hashlib.sha256(json.dumps(self._payload(), sort_keys=True).encode()).hexdigest()[:16]

    @cached_property
    def base_hash(self) -> str:
        """The hash of the recipe as planned, before any mid-run change."""
        return hashlib.sha256(json.dumps(self._payload(False), sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({**self._payload(), "hash": self.hash}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Recipe:
        data = json.loads(text)
        recipe = cls(tuple(sorted((k, _value(v)) for k, v in data["settings"].items())),
                     tuple(sorted((k, float(v)) for k, v in data.get("kinetics", {}).items())),
                     tuple(sorted((float(h), str(n), float(v)) for h, n, v in data.get("changes", []))))
        recipe.scenario()  # a recipe that is not a valid scenario is refused here, not at the build
        return recipe

    # ---- differences ----------------------------------------------------------------------------------
    def setting_differences(self, other: Recipe) -> Iterator[tuple[str, Any, Any]]:
        """(name, this recipe's value, other's) for each base setting that differs."""
        mine = dict(self.settings)
        for name, value in other.settings:
            if mine.get(name) != value:
                yield name, mine.get(name), value

    def new_changes(self, other: Recipe) -> tuple[Change, ...] | None:
        """`other`'s changes after this recipe's, when `other` is this recipe with changes added; else None."""
        if other.settings != self.settings or other.kinetics != self.kinetics:
            return None
        if other.changes[:len(self.changes)] != self.changes:
            return None
        return other.changes[len(self.changes):]

    def describe_change(self, other: Recipe, with_times: bool = True) -> str:
        """What changed from this recipe to `other`, in words: 'DO setpoint 40 → 30 %'; '' if nothing did.
        A change made mid-run says its culture age unless `with_times` is false."""
        parts = [describe_setting(n, old, new) for n, old, new in self.setting_differences(other)]
        if dict(self.kinetics) != dict(other.kinetics):
            parts.append("kinetics changed")
        added = self.new_changes(other)
        for at_h, name, value in (added if added is not None else ()):
            said = describe_command(name, self.control_value(name), value)
            parts.append(f"{said} at {at_h:.1f} h" if with_times else said)
        return "; ".join(parts)

    def as_changes_at(self, other: Recipe, at_h: float) -> Recipe | None:
        """This recipe with `other`'s differing base settings made as commands at `at_h` hours, where each is a
        live control (a recipe that differs elsewhere, e.g. in volume or feed mode, cannot be reached mid-run:
        None). Changes `other` carries after this recipe's are kept at their own times."""
        recipe = self
        if other.kinetics != self.kinetics:
            return None
        for name, _, value in self.setting_differences(other):
            control, factor = SETTING_CONTROLS.get(name, (name, 1.0))
            if control not in CONTROL_NAMES or not isinstance(value, int | float):
                return None
            recipe = recipe.changed_at(at_h, control, float(value) * factor)
        same_base = replace(other, settings=self.settings)
        added = self.new_changes(same_base)
        if added is None:
            return None
        for change in added:
            recipe = recipe.changed_at(*change)
        return recipe


_DEFAULT: list[Recipe] = []


def _default_recipe() -> Recipe:
    if not _DEFAULT:
        _DEFAULT.append(Recipe.from_scenario(load_scenario("normal")))
    return _DEFAULT[0]


def simulate_with_changes(fleet: Fleet, changes: Sequence[Change] = ()) -> pa.Table:
    """Every reactor of `fleet` run to its end, each change applied to all of them at its culture age, as the
    live plant applies an operator's command between steps."""
    batches = []
    for at_h, name, value in sorted(changes):
        ticks = int(round(at_h * 3600.0 / fleet.dt_s)) - int(fleet.seq.min())
        if ticks > 0:
            batches.append(fleet.step(ticks).ticks)
        for k in range(fleet.n):
            if name == BOLUS:
                fleet.add_bolus(k, value)
            else:
                fleet.set_control(k, name, value)
    batches.append(fleet.step(fleet.remaining_ticks).ticks)
    return pa.Table.from_batches(batches)  # each step's rows reactor after reactor
