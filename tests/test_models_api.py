"""The outcome model registry over HTTP (`dashboard/routers/models.py`) on a real dashboard: the versions for a
viewer, promotion and rollback for an admin only, written to the registry and the audit trail under the token's
subject, and the refusals (unknown version 404, a change that does not apply 409, a malformed version 422)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from outcomes import registry
from outcomes.model import load_model
from sinks import delta
from tests.dashboard_helpers import Dashboard

OLDER, NEWER = "outcome-20260101T000000Z-0000000a", "outcome-20260102T000000Z-0000000b"


@pytest.fixture(scope="module")
def dash(start_module_dashboard) -> Dashboard:
    dash = start_module_dashboard()
    shipped = load_model()
    for version in (OLDER, NEWER):  # the newer registered last: the challenger
        registry.register(dash.lake, replace(shipped, version=version), data_snapshot=f"cohort of {version}",
                          metrics=shipped.metrics, actor="test")
    return dash


def test_a_viewer_lists_the_versions_newest_first_with_alias_and_provenance(dash):
    with dash.client("viewer") as c:
        answer = c.get("/api/models")
    assert answer.status_code == 200, answer.text
    versions = answer.json()["models"]
    assert [v["version"] for v in versions] == [NEWER, OLDER]
    assert [v["alias"] for v in versions] == ["challenger", None]
    assert versions[0]["data_snapshot"] == f"cohort of {NEWER}" and versions[0]["created_by"] == "test"
    assert versions[0]["mean_auroc"] == pytest.approx(registry.entries(dash.lake)[0].mean_auroc)


def test_only_an_admin_promotes_and_rolls_back_each_change_audited_under_its_subject(dash):
    with dash.client("viewer") as c:
        assert c.post(f"/api/models/{NEWER}/promote", json={}).status_code == 403
    with dash.client("operator") as c:
        assert c.post("/api/models/rollback", json={}).status_code == 403
    with dash.client("admin") as c:
        promoted = c.post(f"/api/models/{NEWER}/promote", json={"reason": "beat the champion in shadow"})
        assert promoted.status_code == 200, promoted.text
        assert (promoted.json()["alias"], promoted.json()["promoted_by"]) == ("champion", "test-admin")
        assert c.post(f"/api/models/{OLDER}/promote", json={}).json()["alias"] == "champion"
        back = c.post("/api/models/rollback", json={"reason": "the older one drifted less"})
        assert back.status_code == 200, back.text
        assert back.json()["version"] == NEWER
    assert registry.champion(dash.lake).version == NEWER
    audit = sorted((r for r in delta.read(dash.lake, "audit").to_pylist() if r["action"].startswith("model_")),
                   key=lambda r: r["seq"])
    assert [(r["action"], r["target"], r["actor"]) for r in audit if r["actor"] == "test-admin"] == [
        ("model_promote", NEWER, "test-admin"), ("model_promote", OLDER, "test-admin"),
        ("model_rollback", NEWER, "test-admin")]


def test_unknown_versions_404_changes_that_do_not_apply_409_and_malformed_versions_422(dash):
    with dash.client("admin") as c:
        unknown = c.post("/api/models/outcome-29990101T000000Z-ffffffff/promote", json={})
        assert unknown.status_code == 404 and "unknown model version" in unknown.json()["detail"]
        champion = registry.champion(dash.lake).version
        again = c.post(f"/api/models/{champion}/promote", json={})
        assert again.status_code == 409 and "already the champion" in again.json()["detail"]
        assert c.post("/api/models/../../etc/promote", json={}).status_code in (404, 422)
        assert c.post("/api/models/not-a-version/promote", json={}).status_code == 422
        assert c.post("/api/models/rollback", json={"to": "../x"}).status_code == 422
        assert c.post("/api/models/rollback", json={"reason": "x" * 501}).status_code == 422
