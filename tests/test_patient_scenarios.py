"""The patient scenario model: built-ins load, bad values give one clear line, the lab schedule."""

from __future__ import annotations

import pytest

from sources.patient.scenarios import (
    EVENT_NAMES,
    ScenarioError,
    load_patient_scenario,
    parse_patient_scenario,
    patient_scenario_names,
)
from sources.scenarios import builtin_names


def test_every_builtin_patient_scenario_loads_and_the_required_ones_exist():
    names = patient_scenario_names()
    for required in ("warfarin_fixed_5mg", "warfarin_standard", "warfarin_genotype", "warfarin_twin",
                     "metoprolol_100mg", *EVENT_NAMES):
        assert required in names, required
    composites = [n for n in names if len(load_patient_scenario(n).events) > 1]
    assert composites, "at least one composite scenario"
    for name in names:
        assert load_patient_scenario(name).name == name


def test_each_adverse_event_scenario_injects_its_own_event():
    for event in EVENT_NAMES:
        assert [e.event for e in load_patient_scenario(event).events] == [event]


def test_fixed_5mg_reference_is_everyone_5mg_for_42_days_at_5_min_vitals():
    sc = load_patient_scenario("warfarin_fixed_5mg")
    assert (sc.drug, sc.protocol, sc.fixed_dose_mg, sc.days, sc.vitals_every_min) == ("warfarin", "fixed", 5.0, 42.0,
                                                                                     5.0)
    assert sc.events == [] and sc.adherence == 1.0


def test_lab_days_are_the_inr_check_days_then_weekly_and_stop_at_the_end():
    sc = load_patient_scenario("warfarin_standard")
    assert sc.labs.check_days(84.0) == [3, 5, 7, 10, 14, 21, 28, 35, 42, 49, 56, 63, 70, 77]
    assert sc.labs.check_days(12.0) == [3, 5, 7, 10]
    assert parse_patient_scenario({"name": "x", "labs": {"days": [2, 1], "then_every_days": None}}
                                  ).labs.check_days(30) == [1, 2]


@pytest.mark.parametrize(("data", "says"), [
    ({"protocol": "guess"}, "protocol"),
    ({"drug": "aspirin"}, "drug"),
    ({"days": 0}, "days"),
    ({"cohort": {"ancestry": {"martian": 1.0}}}, "unknown ancestry 'martian'"),
    ({"events": [{"event": "stroke", "onset_day": 1}]}, "events.0.event"),
    ({"events": [{"event": "sensor_drift", "onset_day": 1}]}, "needs the faulty vital"),
    ({"events": [{"event": "sensor_stuck", "onset_day": 1, "signal": "ph"}]}, "unknown vital 'ph'"),
    ({"events": [{"event": "sepsis", "onset_day": [5, 2]}]}, "reversed"),
    ({"drug": "metoprolol", "protocol": "standard"}, "metoprolol-only"),
    ({"reactors": 3}, "reactors"),
])
def test_bad_values_raise_one_line_naming_the_field(data, says):
    with pytest.raises(ScenarioError) as err:
        parse_patient_scenario({"name": "bad", **data}, "bad.toml")
    message = str(err.value)
    assert says in message and "\n" not in message and message.startswith("bad.toml:")


def test_unknown_name_lists_the_builtins_and_a_reactor_scenario_is_not_a_patient_one(tmp_path):
    with pytest.raises(ScenarioError, match="warfarin_fixed_5mg"):
        load_patient_scenario("no_such_scenario")
    assert "normal" in builtin_names()
    with pytest.raises(ScenarioError, match="unknown patient scenario 'normal'"):
        load_patient_scenario("normal")
    path = tmp_path / "mine.toml"
    path.write_text('drug = "both"\nprotocol = "fixed"\ndays = 3\n')
    assert load_patient_scenario(path).name == "mine"
    path.write_text("days = [\n")
    with pytest.raises(ScenarioError, match="invalid TOML"):
        load_patient_scenario(path)
