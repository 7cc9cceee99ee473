"""Scenario loading and validation: every bad value is one line naming the field and what is allowed."""

from __future__ import annotations

import pytest

from sources.scenarios import ScenarioError, builtin_names, load_scenario, parse_scenario

ARCHETYPE_SCENARIOS = {"normal", "overfeed", "pump_omission", "contamination", "do_limitation", "ph_excursion",
                       "temperature_spike", "sensor_drift", "sensor_stuck", "sensor_dropout", "underfeed"}


def test_builtins_cover_every_archetype_and_all_load():
    assert set(builtin_names()) >= ARCHETYPE_SCENARIOS
    for name in builtin_names():
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.description


def test_a_scenario_file_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "short run"\ndays = 3\n[process]\ndo_setpoint_pct = 50\n')
    sc = load_scenario(path)
    assert (sc.name, sc.days, sc.process.do_setpoint_pct) == ("mine", 3, 50)


@pytest.mark.parametrize(("data", "needle"), [
    ({"name": "x", "faults": [{"fault": "meltdown", "start_day": 2}]}, "faults.0.fault"),
    ({"name": "x", "process": {"working_volume_l": -1}}, "process.working_volume_l"),
    ({"name": "x", "days": 0}, "days: Input should be greater than 0"),
    ({"name": "x", "faults": [{"fault": "sensor_drift", "start_day": 2}]}, "needs the faulty sensor's signal"),
    ({"name": "x", "faults": [{"fault": "sensor_stuck", "start_day": 2, "signal": "voltage"}]}, "unknown signal"),
    ({"name": "x", "kinetics": {"mu_maxx": 1}}, "unknown kinetic parameter 'mu_maxx'"),
    ({"name": "x", "feed": {"colour": "blue"}}, "feed.colour"),
    ({"name": "x", "faults": [{"fault": "overfeed", "start_day": [5, 2]}]}, "reversed"),
    # NaN passes every bound and inf every lower one: the twin would integrate NaN
    ({"name": "x", "process": {"glucose_g_l": float("nan")}}, "process.glucose_g_l: Input should be a finite number"),
    ({"name": "x", "process": {"agitation_max_rpm": float("inf")}}, "process.agitation_max_rpm: Input should be a "
                                                                       "finite number"),
    ({"name": "x", "kinetics": {"mu_max_1_h": float("nan")}}, "kinetics.mu_max_1_h: Input should be a finite"),
    ({"name": "x", "kinetics": {"mu_max_1_h": -5.0}}, "kinetic parameter mu_max_1_h must be >= 0, got -5"),
])
def test_bad_values_name_the_field(data, needle):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "test.toml")
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_name_lists_the_builtins():
    with pytest.raises(ScenarioError, match="built-ins: .*normal"):
        load_scenario("no_such_scenario")


def test_invalid_toml_is_reported(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("days = = 3")
    with pytest.raises(ScenarioError, match="broken.toml: invalid TOML"):
        load_scenario(path)


def test_a_scenario_file_that_is_not_text_is_reported(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\x00\x01\xff\xfe")
    with pytest.raises(ScenarioError, match="binary.toml: not a text"):
        load_scenario(path)
