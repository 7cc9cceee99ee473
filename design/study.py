"""A study: the factors a design varies (any scenario setting, by its dotted path), the responses it measures
(an assay column and how a run's samples reduce to one number), the constraints on them and the goal.

Read from a TOML file (built-ins in `design/studies/`) or built from the command line's flags. Every bad value is
one line naming what is wrong (`StudyError`). A factor is numeric with a range (`feed.percent_of_volume` from 2 to
8) or categorical with levels (`feed.mode`: bolus or continuous, coded -1 and +1).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.events import ASSAYS
from sources.scenarios import Scenario, ScenarioError, load_scenario, parse_scenario, read_builtin_or_toml

BUILTIN_DIR = Path(__file__).parent / "studies"

# assay columns a response may reduce; `integral` is over culture days (IVCD: e6 cells x day / mL)
ASSAY_COLUMNS = tuple(n for n in ASSAYS.names if n not in ("run_id", "reactor_id", "sample_ts", "reported_ts"))
AGGREGATES = ("last", "max", "min", "mean", "integral")
# the responses a process-development scientist names, as column:aggregate
NAMED_RESPONSES = {
    "final_titer": "titer_g_l:last", "peak_vcd": "vcd_e6_per_ml:max", "final_hcp": "hcp_ng_ml:last",
    "peak_lactate": "lactate_g_l:max", "peak_ammonia": "ammonia_mm:max", "peak_osmolality": "osmolality_mosm_kg:max",
    "ivcd": "vcd_e6_per_ml:integral", "final_viability": "viability_pct:last",
}
# a derived setting: the day feeding starts (`feed.days` from it to the end, `feed.continuous_start_day`)
FEED_START_DAY = "feed.start_day"
_CONSTRAINT = re.compile(r"^\s*([A-Za-z0-9_:]+)\s*(<=|>=)\s*([-+0-9.eE]+)\s*$")


class StudyError(ScenarioError):
    """A study that cannot be run; the message is one line meant for the user."""


@dataclass(frozen=True)
class Factor:
    """A scenario setting the design varies: numeric from `low` to `high`, or categorical over two `levels`."""

    name: str  # dotted scenario path: feed.percent_of_volume, process.temp_shift_day, kinetics.mu_max_1_h
    low: float = 0.0
    high: float = 1.0
    levels: tuple[str, ...] = ()
    integer: bool = False  # rounded when decoded (feed days, for instance)

    @property
    def categorical(self) -> bool:
        return bool(self.levels)

    @property
    def short(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    def decode(self, coded: float) -> float | str:
        """-1..+1 (beyond for a central composite's axial points) to the setting's value."""
        if self.categorical:
            return self.levels[int(coded > 0)]
        value = (self.low + self.high) / 2 + coded * (self.high - self.low) / 2
        return float(round(value)) if self.integer else round(float(value), 10)

    def encode(self, value: float | str) -> float:
        if self.categorical:
            return -1.0 if str(value) == self.levels[0] else 1.0
        return (float(value) - (self.low + self.high) / 2) / ((self.high - self.low) / 2)


@dataclass(frozen=True)
class Response:
    name: str
    column: str
    aggregate: str

    def of(self, days: np.ndarray, values: np.ndarray) -> float:
        """One run's samples (culture days, values) reduced to the response."""
        if values.size == 0:
            return math.nan
        if self.aggregate == "integral":
            return float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(days)))
        return float({"last": values[-1], "max": values.max(), "min": values.min(),
                      "mean": values.mean()}[self.aggregate])


@dataclass(frozen=True)
class Constraint:
    response: str
    op: str  # "<=" or ">="
    limit: float

    def slack(self, value: np.ndarray | float) -> np.ndarray | float:
        """>= 0 where the constraint holds."""
        return self.limit - value if self.op == "<=" else value - self.limit

    def __str__(self) -> str:
        return f"{self.response} {self.op} {self.limit:g}"


@dataclass(frozen=True)
class Study:
    name: str
    factors: tuple[Factor, ...]
    responses: tuple[Response, ...]
    constraints: tuple[Constraint, ...] = ()
    goal: str = "final_titer"  # the response to maximise (or minimise with `maximize = false`)
    maximize: bool = True
    scenario: Scenario = field(default_factory=lambda: load_scenario("normal"))

    def response(self, name: str) -> Response:
        return next(r for r in self.responses if r.name == name)

    def scenario_at(self, settings: dict[str, float | str]) -> Scenario:
        """The base scenario with these settings (factor name -> decoded value) made."""
        data = self.scenario.model_dump()
        for name, value in settings.items():
            section, key = name.split(".", 1)
            if name == FEED_START_DAY:  # both feed modes start then; bolus feeds daily to the end of the run
                data["feed"]["days"] = list(range(round(float(value)), math.ceil(self.scenario.days)))
                data["feed"]["continuous_start_day"] = float(value)
            else:
                data.setdefault(section, {})[key] = value
        try:
            return parse_scenario(data, f"{self.name} at {settings}")
        except ScenarioError as err:
            raise StudyError(str(err)) from None


def parse_response(spec: str) -> Response:
    """`final_titer`, or `NAME=column:aggregate`, or `column:aggregate` (named after itself)."""
    name, _, definition = spec.partition("=")
    if not definition:
        definition = NAMED_RESPONSES.get(name, name)
        name = name.replace(":", "_")
    column, _, aggregate = definition.partition(":")
    if column not in ASSAY_COLUMNS:
        raise StudyError(f"response {spec!r}: unknown column {column!r}; named responses: "
                         f"{', '.join(NAMED_RESPONSES)}; columns: {', '.join(ASSAY_COLUMNS)}")
    if aggregate not in AGGREGATES:
        raise StudyError(f"response {spec!r}: aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    return Response(name, column, aggregate)


def parse_constraint(spec: str) -> Constraint:
    match = _CONSTRAINT.match(spec)
    if not match:
        raise StudyError(f"constraint {spec!r}: expected RESPONSE<=LIMIT or RESPONSE>=LIMIT")
    return Constraint(match[1], match[2], float(match[3]))


def _setting_default(scenario: Scenario, name: str) -> object:
    section, _, key = name.partition(".")
    if name == FEED_START_DAY:
        return min(scenario.feed.days, default=0)
    if section == "kinetics":
        from sources.kinetics import PARAM_NAMES, KineticParams

        if key not in PARAM_NAMES:
            raise StudyError(f"factor {name!r}: unknown kinetic parameter; allowed: {', '.join(PARAM_NAMES)}")
        return scenario.kinetics.get(key, getattr(KineticParams(), key))
    part = getattr(scenario, section, None) if section in ("process", "feed") else None
    if part is None or key not in type(part).model_fields:
        sections = f"process.*, feed.*, {FEED_START_DAY}, kinetics.*"
        raise StudyError(f"factor {name!r}: not a scenario setting a design can vary ({sections}; see "
                         "`biopilot scenarios`)")
    return getattr(part, key)


def parse_factor(spec: str | dict, scenario: Scenario) -> Factor:
    """`feed.percent_of_volume=2:8`, `feed.mode=bolus,continuous`, or a TOML table {name, low, high} / {name,
    levels}."""
    if not isinstance(spec, str | dict):  # a TOML `factors = [3]`: an AttributeError on .get otherwise
        raise StudyError(f"factor {spec!r}: expected a table {{name, low, high}} or {{name, levels}}")
    if isinstance(spec, str):
        name, _, rng = spec.partition("=")
        if ":" in rng:
            lo, _, hi = rng.partition(":")
            try:
                spec = {"name": name, "low": float(lo), "high": float(hi)}
            except ValueError:
                raise StudyError(f"factor {spec!r}: range must be LOW:HIGH numbers") from None
        elif "," in rng:
            spec = {"name": name, "levels": rng.split(",")}
        else:
            raise StudyError(f"factor {spec!r}: expected NAME=LOW:HIGH or NAME=LEVEL,LEVEL")
    name = str(spec.get("name", ""))
    default = _setting_default(scenario, name)
    if "levels" in spec:
        levels = tuple(str(v) for v in spec["levels"])
        if len(levels) != 2:
            raise StudyError(f"factor {name!r}: a categorical factor has exactly two levels, got {len(levels)}")
        if levels[0] == levels[1] or not all(levels):  # else every run at one level, an effect of 0 reported
            raise StudyError(f"factor {name!r}: its two levels must differ and not be empty, got {', '.join(levels)}")
        factor = Factor(name, levels=levels)
    else:
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise StudyError(f"factor {name!r}: needs numeric low and high (or two levels)") from None
        if not (math.isfinite(low) and math.isfinite(high)):  # else a NaN setting reported by the scenario check
            raise StudyError(f"factor {name!r}: low and high must be finite numbers, got {low:g} and {high:g}")
        if not high > low:
            raise StudyError(f"factor {name!r}: high ({high:g}) must be above low ({low:g})")
        factor = Factor(name, low, high, integer=isinstance(default, int) and not isinstance(default, bool))
    return factor


def build_study(name: str, factors: list[str | dict], responses: list[str], constraints: list[str],
                goal: str | None, maximize: bool = True, scenario: str | Scenario = "normal") -> Study:
    try:  # an unknown base scenario is the study's error: a ScenarioError would escape the CLI's StudyError
        base = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    except ScenarioError as err:
        raise StudyError(str(err)) from None
    parsed = tuple(parse_factor(f, base) for f in factors)
    if not parsed:
        raise StudyError("a study needs at least one factor")
    names = [f.name for f in parsed]
    if len(set(names)) != len(names):
        raise StudyError(f"a factor is named twice: {', '.join(names)}")
    resp = tuple(parse_response(r) for r in (responses or ["final_titer"]))
    cons = tuple(parse_constraint(c) for c in constraints)
    goal = goal or resp[0].name
    known = {r.name for r in resp}
    for c in cons:
        if c.response not in known:
            resp = (*resp, parse_response(c.response))
            known.add(c.response)
    if goal not in known:
        resp = (*resp, parse_response(goal))
    study = Study(name, parsed, resp, cons, goal, maximize, base)
    corners = [{f.name: f.decode(c) for f in parsed} for c in (-1.0, 1.0)]
    for settings in corners:  # every setting must be valid at both ends of its range
        study.scenario_at(settings)
    return study


def load_study(name_or_path: str | Path) -> Study:
    """A built-in study by name (design/studies/*.toml) or a TOML file:

        scenario = "normal"
        goal = "final_titer"
        responses = ["final_titer", "peak_lactate", "peak_osmolality"]
        constraints = ["peak_lactate <= 3", "peak_osmolality <= 450"]
        [[factors]]
        name = "feed.percent_of_volume"
        low = 2.0
        high = 8.0
    """
    data, source = read_builtin_or_toml(name_or_path, BUILTIN_DIR, "study", StudyError)
    unknown = set(data) - {"name", "description", "scenario", "factors", "responses", "constraints", "goal",
                           "maximize"}
    if unknown:
        raise StudyError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}")
    # each key's type, before it is used: `maximize = "no"` would be true, `factors = 3` a TypeError
    kinds = {"name": (str, "a string"), "description": (str, "a string"), "scenario": (str, "a string"),
             "goal": (str, "a string"), "maximize": (bool, "true or false"), "factors": (list, "a list of tables"),
             "responses": (list, "a list of strings"), "constraints": (list, "a list of strings")}
    for key, (kind, what) in kinds.items():
        if key in data and not isinstance(data[key], kind):
            raise StudyError(f"{source}: {key} must be {what}, got {data[key]!r}")
    for key in ("responses", "constraints"):
        if not all(isinstance(v, str) for v in data.get(key, [])):
            raise StudyError(f"{source}: {key} must be a list of strings, got {data[key]!r}")
    return build_study(data["name"], list(data.get("factors", [])), list(data.get("responses", [])),
                       list(data.get("constraints", [])), data.get("goal"), bool(data.get("maximize", True)),
                       data.get("scenario", "normal"))


def builtin_studies() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))
