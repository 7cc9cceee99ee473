"""Settings: environment over biopilot.toml over defaults."""

from __future__ import annotations

import pytest

from biopilot.config import Settings, SettingsError, load_settings


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
])
def test_bad_settings_are_named(tmp_path, text, env, needle):
    path = tmp_path / "biopilot.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=needle):
        load_settings(path, env=env)
