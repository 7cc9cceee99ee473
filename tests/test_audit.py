"""The audit trail: rows written before the response, with who, what, result, request id and client; refusals
audited; a hash chain that `biopilot audit verify` walks to find a removed or an edited row; history kept."""

from __future__ import annotations

import getpass
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from biopilot.cli import main
from core.events import AUDIT
from sinks import delta
from sinks.audit import AuditLog
from tests.dashboard_helpers import SECRET


@pytest.fixture
def dash(start_dashboard):
    return start_dashboard()


def _rows(lake: str) -> list[dict]:
    table = delta.read(lake, "audit")
    return sorted(table.to_pylist(), key=lambda r: r["seq"]) if table is not None else []


def _row(action: str, k: int) -> dict:
    return {"ts": datetime.now(UTC), "actor": f"user{k}", "role": "operator", "token_id": f"jti{k}",
            "action": action, "target": f"r{k}", "payload_json": "{}", "request_id": f"req{k}",
            "client": "127.0.0.1", "result": "published"}


def _chain(lake: Path, n: int) -> str:
    log = AuditLog(str(lake))
    for k in range(n):
        log.append(_row("control", k))
    return delta.table_uri(lake, "audit")


def _verify(lake: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "biopilot.cli", "audit", "verify", "--lake", str(lake)],
                          capture_output=True, text=True, timeout=60)


def test_an_action_is_audited_with_its_result_request_id_and_client_before_the_response(dash):
    with dash.client("admin") as c:
        r = c.post("/api/tokens", json={"role": "viewer", "subject": "night-shift"},
                   headers={"X-Request-ID": "change-42"})
        odd = c.post("/api/tokens", json={"role": "viewer"}, headers={"X-Request-ID": "<script>"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "change-42"
    assert odd.headers["x-request-id"] != "<script>" and len(odd.headers["x-request-id"]) == 32
    rows = _rows(dash.lake)  # read at once: the rows were committed before the responses left
    assert [row["seq"] for row in rows] == [0, 1]
    first = rows[0]
    assert first["action"] == "token_create" and first["target"] == r.json()["token_id"]
    assert first["actor"] == "test-admin" and first["role"] == "admin" and first["token_id"]
    assert first["result"] == "minted" and first["request_id"] == "change-42" and first["client"] == "127.0.0.1"
    assert '"subject": "night-shift"' in first["payload_json"] and r.json()["token"] not in first["payload_json"]
    assert rows[1]["request_id"] == odd.headers["x-request-id"]


def test_a_change_refused_for_its_body_is_audited_under_its_sender_and_a_bad_query_is_not(dash):
    with dash.client("operator") as c:
        refused = c.post("/api/reactors/r1/faults", json={"fault": "meltdown"})
        looked = c.get("/api/runs/r1-run/ticks", params={"max_points": "many"})
    assert refused.status_code == 422 and looked.status_code == 422
    (row,) = _rows(dash.lake)
    assert row["action"] == "refused" and row["actor"] == "test-operator" and row["token_id"]
    assert row["target"] == "/api/reactors/r1/faults" and row["result"].startswith("422: fault:")


def test_refused_requests_and_logins_are_audited(dash):
    with dash.client(None, follow_redirects=False) as c:
        assert c.post("/api/reactors/r1/faults", json={"fault": "overfeed"}).status_code == 401
        assert c.get("/login", params={"code": "guessed"}).status_code == 303
    with dash.client("viewer") as c:
        assert c.post("/api/reactors/r1/faults", json={"fault": "overfeed"}).status_code == 403
    unauthenticated, login, forbidden = _rows(dash.lake)
    assert unauthenticated["action"] == "refused" and unauthenticated["actor"] == "anonymous"
    assert unauthenticated["target"] == "/api/reactors/r1/faults" and unauthenticated["result"].startswith("401")
    assert login["action"] == "login" and login["result"].startswith("refused")
    assert forbidden["actor"] == "test-viewer" and forbidden["token_id"] and forbidden["result"].startswith("403")


def test_concurrent_actions_and_a_cli_revoke_keep_one_unbroken_chain(dash, monkeypatch, capsys):
    with dash.client("admin") as c, ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: c.post("/api/tokens", json={"role": "viewer"}).status_code, range(8)))
    assert codes == [201] * 8
    monkeypatch.setenv("BIOPILOT_SECRET", SECRET)
    monkeypatch.setenv("BIOPILOT_SECRET_FILE", str(Path(dash.lake).parent / "config" / "secret"))
    assert main(["token", "revoke", "0123abcd" * 3, "--lake", dash.lake]) == 0  # another process's append
    with dash.client("admin") as c:  # the dashboard sees the CLI's row and chains after it
        assert c.post("/api/tokens", json={"role": "viewer"}).status_code == 201
    capsys.readouterr()
    assert main(["audit", "verify", "--lake", dash.lake]) == 0
    assert "intact: 10 row(s)" in capsys.readouterr().out
    assert [r["actor"] for r in _rows(dash.lake)][8:] == [f"cli:{getpass.getuser()}", "test-admin"]


@pytest.mark.integration
def test_audit_verify_finds_a_removed_row(tmp_path):
    lake = tmp_path / "lake"
    uri = _chain(lake, 5)
    ok = _verify(lake)
    assert ok.returncode == 0 and "intact: 5 row(s), seq 0..4" in ok.stdout
    DeltaTable(uri).delete("seq = 2")
    broken = _verify(lake)
    assert broken.returncode == 1 and "seq 2 missing" in broken.stderr and len(broken.stderr.splitlines()) == 1


def test_audit_verify_finds_an_edited_row_and_a_removed_first_row(tmp_path, capsys):
    lake = tmp_path / "lake"
    uri = _chain(lake, 4)
    DeltaTable(uri).update(updates={"result": "'refused'"}, predicate="seq = 3")
    assert main(["audit", "verify", "--lake", str(lake)]) == 1
    assert "seq 3: hash mismatch" in capsys.readouterr().err
    other = tmp_path / "other"
    DeltaTable(_chain(other, 3)).delete("seq = 0")
    assert main(["audit", "verify", "--lake", str(other)]) == 1
    assert "seq 0 missing" in capsys.readouterr().err


def test_an_audit_table_from_before_the_chain_gains_the_columns_and_its_old_rows_are_named(tmp_path, capsys):
    lake = tmp_path / "lake"
    old_schema = pa.schema(list(AUDIT)[:6])
    delta.append(lake, "audit", pa.Table.from_pylist([{
        "ts": datetime.now(UTC), "actor": "old", "role": "admin", "action": "token", "target": "viewer",
        "payload_json": "{}"}], schema=old_schema), old_schema)
    _chain(lake, 2)
    assert main(["audit", "verify", "--lake", str(lake)]) == 0
    assert "intact: 2 row(s), seq 0..1; 1 row(s) from before the chain" in capsys.readouterr().out
    assert main(["audit", "tail", "-n", "2", "--lake", str(lake)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["0", "1"]


@pytest.mark.integration
def test_lake_optimize_keeps_the_audit_history(tmp_path):
    lake = tmp_path / "lake"
    uri = _chain(lake, 3)
    DeltaTable(uri).delete("seq = 1")  # tampering: the row leaves the table, its file stays in the history
    tampered_version = DeltaTable(uri).version() - 1
    assert subprocess.run([sys.executable, "-m", "biopilot.cli", "lake", "optimize", "--lake", str(lake)],
                          capture_output=True, timeout=60).returncode == 0
    before = DeltaTable(uri)
    before.load_as_version(tampered_version)
    assert all(Path(f.removeprefix("file://")).exists() for f in before.file_uris())
    assert DeltaTable(uri).metadata().configuration["delta.deletedFileRetentionDuration"] == "interval 3650 days"


def test_verify_of_a_lake_without_an_audit_table_fails_and_tail_says_so(tmp_path, capsys):
    # a deleted table or a mistyped --lake must not pass the integrity check as "intact"
    assert main(["audit", "verify", "--lake", str(tmp_path / "typo")]) == 1
    assert "no audit table" in capsys.readouterr().err
    assert main(["audit", "tail", "--lake", str(tmp_path / "typo")]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "no audit rows" in out.err
