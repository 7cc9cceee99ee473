"""Settings: environment over biopilot.toml over defaults."""

from __future__ import annotations

import pytest

from core.config import Settings, SettingsError, load_settings


def test_defaults_when_nothing_is_set(tmp_path):
    assert load_settings(tmp_path / "missing.toml", env={}) == Settings()


def test_toml_overrides_defaults_and_env_overrides_toml(tmp_path):
    path = tmp_path / "biopilot.toml"
    path.write_text('lake = "/data/lake"\nport = 9000\nllm = "openai"\n')
    s = load_settings(path, env={})
    assert (s.lake, s.port, s.llm) == ("/data/lake", 9000, "openai")
    s = load_settings(path, env={"BIOPILOT_LAKE": "s3://bucket/lake", "BIOPILOT_PORT": "9100"})
    assert (s.lake, s.port) == ("s3://bucket/lake", 9100)


@pytest.mark.parametrize(("text", "env", "needle"), [
    ('colour = "blue"\n', {}, "unknown setting 'colour'"),
    ("", {"BIOPILOT_PORT": "eighty"}, "port: expected an integer"),
    ("", {"BIOPILOT_LLM": "magic"}, "llm: 'magic' is not allowed"),
    ("", {"BIOPILOT_LATENESS_S": "soon"}, "lateness_s: expected a number, got 'soon'"),
    ("flush_s = true\n", {}, "flush_s: expected a number, got True"),
    ("", {"BIOPILOT_FLOW_RECOVERY": "maybe"}, "flow_recovery: expected true or false"),
    ("flow_recovery = 2\n", {}, "flow_recovery: expected true or false"),
    ("flush_rows = 2.5\n", {}, "flush_rows: expected an integer, got 2.5"),
    ("flush_rows = true\n", {}, "flush_rows: expected an integer, got True"),
])
def test_bad_settings_are_named(tmp_path, text, env, needle):
    path = tmp_path / "biopilot.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        load_settings(path, env=env)


def test_the_flow_settings_come_from_toml_and_env(tmp_path):
    path = tmp_path / "biopilot.toml"
    path.write_text('[biopilot]\ndetector = "zscore"\nlateness_s = 60\nflush_rows = 50000\nflush_s = 0.5\n'
                    'flow_durable = "mine"\nflow_recovery = false\nflow_wal = "/var/wal"\n')
    s = load_settings(path, env={})
    assert (s.detector, s.lateness_s, s.flush_rows, s.flush_s) == ("zscore", 60.0, 50_000, 0.5)
    assert (s.flow_durable, s.flow_recovery, s.flow_wal) == ("mine", False, "/var/wal")
    assert isinstance(s.lateness_s, float)
    s = load_settings(path, env={"BIOPILOT_DETECTOR": "fusion", "BIOPILOT_LATENESS_S": "0", "BIOPILOT_FLUSH_ROWS": "1000",
                                 "BIOPILOT_FLUSH_S": "2.5", "BIOPILOT_FLOW_DURABLE": "bench",
                                 "BIOPILOT_FLOW_RECOVERY": "1", "BIOPILOT_FLOW_WAL": ""})
    assert (s.detector, s.lateness_s, s.flush_rows, s.flush_s) == ("fusion", 0.0, 1000, 2.5)
    assert (s.flow_durable, s.flow_recovery, s.flow_wal) == ("bench", True, None)


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("0", False), ("true", True), ("False", False),
                                                ("yes", True), ("no", False), ("on", True), ("off", False)])
def test_a_switch_reads_the_usual_words(tmp_path, text, expected):
    assert load_settings(tmp_path / "missing.toml", env={"BIOPILOT_FLOW_RECOVERY": text}).flow_recovery is expected
