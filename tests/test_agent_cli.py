"""`biopilot diagnose`, `report`, `chat` and `scenarios propose` over a real Delta lake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sinks import delta
from sources.fleet import Fleet
from sources.scenarios import load_scenario

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]
pytestmark = pytest.mark.integration  # the CLI in a subprocess


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BIOPILOT, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[str, str]:
    lake = str(tmp_path_factory.mktemp("lake"))
    res = _cli("simulate", "--scenario", "do_limitation", "--seed", "13", "--lake", lake, "--quiet")
    assert res.returncode == 0, res.stderr
    return lake, res.stdout.split()[0]


def test_diagnose_json_lists_incidents_with_ranked_causes(lake):
    root, run = lake
    res = _cli("diagnose", "--run", run, "--lake", root, "--json")
    assert res.returncode == 0, res.stderr
    incidents = json.loads(res.stdout)
    assert len(incidents) >= 1
    first = incidents[0]
    assert {"reactor_id", "start_ts", "end_ts", "hypotheses"} <= set(first)
    assert first["hypotheses"][0]["fault"] == "do_limitation"
    assert {"fault", "confidence", "evidence"} <= set(first["hypotheses"][0])
    # the soft sensors and the windowed scorer's second opinion are part of the evidence
    assert first["soft_sensors"]["vcd_e6_per_ml_est"] > 0 and first["soft_sensors"]["glucose_g_l_est"] >= 0
    assert sum(p for p, _ in first["scorer"]["classes"].values()) > 0.5
    text = _cli("diagnose", "--run", run, "--lake", root)
    assert "1. do_limitation" in text.stdout and "action:" in text.stdout


def test_diagnose_an_unknown_run_is_one_line_exit_2(lake):
    res = _cli("diagnose", "--run", "no-such-run", "--lake", lake[0])
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "no ticks for run 'no-such-run'" in res.stderr


@pytest.mark.parametrize("fmt", ["md", "html", "pdf"])
def test_report_in_each_format(lake, tmp_path, fmt):
    root, run = lake
    res = _cli("report", run, "--format", fmt, "--lake", root, "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = Path(res.stdout.strip())
    assert out.exists() and (tmp_path / f"{run}.png").stat().st_size > 10_000
    body = out.read_bytes()
    if fmt == "pdf":
        assert body.startswith(b"%PDF") and len(body) > 20_000  # the plot is embedded
    else:
        text = body.decode()
        assert "peak VCD" in text and "do_limitation" in text and "CPP excursions" in text


def test_chat_answers_from_the_evidence(lake):
    root, run = lake
    res = _cli("chat", "why did DO drop?", "--run", run, "--lake", root)
    assert res.returncode == 0, res.stderr
    assert "do_limitation" in res.stdout and "do_pct read" in res.stdout and "UTC" in res.stdout


def test_proposed_scenarios_simulate_to_their_expected_labels(tmp_path):
    res = _cli("scenarios", "propose", "--n", "3", "--out", str(tmp_path), "--seed", "4")
    assert res.returncode == 0, res.stderr
    tomls = sorted(tmp_path.glob("*.toml"))
    assert len(tomls) == 3
    for path in tomls:
        expected = json.loads(path.with_suffix(".labels.json").read_text())
        fleet = Fleet(load_scenario(path), 1, seed=0)
        fleet.step(fleet.total_ticks)
        got = [(lab.fault, round((lab.start_ts - fleet.started[0]).total_seconds() / 86400, 2)) for lab in fleet.labels]
        assert got == [(e["fault"], round(e["start_day"], 2)) for e in expected]
        assert len(expected) >= 2  # composites


def test_report_of_a_normal_run_says_no_incident(tmp_path):
    lake = str(tmp_path / "lake")
    run = _cli("simulate", "--scenario", "normal", "--seed", "12", "--lake", lake, "--quiet").stdout.split()[0]
    res = _cli("report", run, "--lake", lake, "--out", str(tmp_path))
    text = Path(res.stdout.strip()).read_text()
    assert "No incident was raised." in text
    assert delta.read(lake, "ticks") is not None


@pytest.mark.parametrize("run", ["../../escaped", "a/b", "/tmp/abs", "<img src=x onerror=alert(1)>", "x" * 129])
def test_report_refuses_a_run_id_that_is_not_an_id_one_line_exit_2(tmp_path, run):
    out = tmp_path / "reports"
    res = _cli("report", run, "--lake", str(tmp_path / "lake"), "--out", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "is not an id" in res.stderr, res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["report", "run-1"], ["scenarios", "propose"]])
def test_an_out_folder_that_is_a_file_is_one_line_exit_2(tmp_path, command):
    out = tmp_path / "overview.png"
    out.write_bytes(b"png")
    res = _cli(*command, "--lake", str(tmp_path / "lake"), "--out", str(out)) if command[0] == "report" else \
        _cli(*command, "--out", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "is a file" in res.stderr, res.stderr
    assert out.read_bytes() == b"png"


def test_agents_with_no_broker_at_the_url_is_one_line_exit_2(tmp_path):
    from core.services import free_port

    env = {**os.environ, "BIOPILOT_NATS_URL": f"nats://biopilot-agents:secret@127.0.0.1:{free_port()}",
           "BIOPILOT_REDIS_URL": f"redis://127.0.0.1:{free_port()}"}
    res = subprocess.run([*BIOPILOT, "agents", "--wait-s", "1", "--lake", str(tmp_path / "lake")],
                         capture_output=True, text=True, env=env, timeout=90)
    # before: a TimeoutError traceback once the wait for the broker ran out
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert "no NATS node of nats://127.0.0.1:" in res.stderr and "after 1 s" in res.stderr
    assert "secret" not in res.stderr


def test_report_refuses_to_follow_a_link_out_of_the_report_folder(tmp_path):
    out, outside = tmp_path / "reports", tmp_path / "outside.md"
    out.mkdir()
    (out / "run-1.md").symlink_to(outside)
    res = _cli("report", "run-1", "--lake", str(tmp_path / "lake"), "--out", str(out))
    assert res.returncode == 2 and "outside the report folder" in res.stderr, res.stderr
    assert not outside.exists()
