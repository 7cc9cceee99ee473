"""The outcome model registry (issue 26 §3): versions in a real Delta `models` table with their artefacts beside
it, promote and rollback, each change in the audit chain, and `biopilot models` on top."""

from __future__ import annotations

import json

import pytest

from biopilot.cli import main
from outcomes import registry
from outcomes.model import OutcomeConfig, OutcomeModel, OutcomeNet, load_model
from sinks import audit, delta


def _model(version: str) -> OutcomeModel:
    """A real (untrained) outcome model: what the registry stores and loads is the same either way."""
    heads = ("inr_ge4_7d", "major_bleed_14d", "bradycardia_24h")
    return OutcomeModel(OutcomeNet(OutcomeConfig()), dict.fromkeys(heads, 1.0), dict.fromkeys(heads, 0.5), {}, {},
                        version=version)


@pytest.fixture()
def lake(tmp_path):
    lake = str(tmp_path / "lake")
    for k, version in enumerate(("m1", "m2", "m3")):
        registry.register(lake, _model(version), data_snapshot=f"sim seed={k}", actor="test",
                          metrics={"heads": {"inr_ge4_7d": {"auroc": 0.7 + k / 100}}})
    return lake


def _aliases(lake: str) -> dict[str, str | None]:
    return {e.version: e.alias for e in registry.entries(lake)}


def test_a_new_version_is_the_challenger_and_replaces_the_one_before(lake):
    assert _aliases(lake) == {"m1": None, "m2": None, "m3": "challenger"}
    entry = registry.challenger(lake)
    assert entry.data_snapshot == "sim seed=2" and entry.code_hash == registry.code_hash()
    assert entry.metrics["heads"]["inr_ge4_7d"]["auroc"] == pytest.approx(0.72)


def test_promote_then_rollback_walks_back_the_champions_and_loads_each(lake):
    assert registry.champion(lake) is None
    for version in ("m1", "m2", "m3"):
        registry.promote(lake, version, actor="alice", reason="better")
    assert _aliases(lake) == {"m1": None, "m2": None, "m3": "champion"}
    assert registry.load_champion(lake).version == "m3"
    assert registry.rollback(lake, actor="bob").version == "m2"
    assert registry.load_champion(lake).version == "m2"
    assert registry.rollback(lake, actor="bob").version == "m1"
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(lake, actor="bob")
    champion = registry.champion(lake)
    assert champion.promoted_by == "bob" and champion.version == "m1"
    # the whole history stays in the table: 3 registrations (+2 challenger demotions), 3 promotions (+2
    # demotions), 2 rollbacks (each with the rolled-back row)
    assert delta.read(lake, "models").num_rows == 5 + 5 + 4


def test_every_change_is_in_the_audit_chain(lake):
    registry.promote(lake, "m1", actor="alice")
    registry.promote(lake, "m2", actor="alice")
    registry.rollback(lake, actor="bob", reason="m2 misses bleeds")
    rows = audit.tail(lake, 10)
    assert [r["action"] for r in rows] == ["model_register"] * 3 + ["model_promote"] * 2 + ["model_rollback"]
    last = rows[-1]
    assert (last["actor"], last["target"]) == ("bob", "m1")
    assert json.loads(last["payload_json"]) == {"from": "m2", "reason": "m2 misses bleeds"}
    assert audit.verify(lake).intact


def test_an_unknown_or_repeated_version_is_refused(lake):
    with pytest.raises(registry.RegistryError, match="unknown model version 'nope'"):
        registry.promote(lake, "nope", actor="alice")
    with pytest.raises(registry.RegistryError, match="already registered"):
        registry.register(lake, _model("m1"), data_snapshot="", metrics={}, actor="test")
    registry.promote(lake, "m1", actor="alice")
    with pytest.raises(registry.RegistryError, match="not a champion before"):
        registry.rollback(lake, actor="bob", to="m2")
    # rolling back to the champion itself: said so, not "promote it instead" (which promote then refuses)
    with pytest.raises(registry.RegistryError, match="model version m1 is already the champion"):
        registry.rollback(lake, actor="bob", to="m1")


def test_an_empty_registry_serves_the_shipped_checkpoint(tmp_path):
    assert registry.load_champion(tmp_path / "empty").version == load_model().version


def test_models_cli_lists_promotes_rolls_back_and_refuses_unknown_versions(lake, capsys):
    assert main(["models", "promote", "m1", "--lake", lake]) == 0
    assert main(["models", "promote", "m2", "--lake", lake, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["alias"] == "champion"
    assert main(["models", "list", "--lake", lake, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert [(m["version"], m["alias"]) for m in listed] == [("m3", "challenger"), ("m2", "champion"), ("m1", None)]
    assert listed[1]["mean_auroc"] == pytest.approx(0.71)
    assert main(["models", "rollback", "--lake", lake]) == 0
    assert "m1 is now the champion" in capsys.readouterr().out
    assert main(["models", "promote", "nope", "--lake", lake]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model version 'nope'" in err[0]
    assert audit.tail(lake, 1)[0]["actor"].startswith("cli:")
