"""`biopilot up --plant patient` as a user runs it: the real stack (broker, cache, flow, patient feed, agents,
dashboard) streams vitals into Delta and to the SSE telemetry stream, a dose change POSTed to the dashboard
reaches the simulated patient and the audit, and a flow killed with -9 loses nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from core.services import free_port, wait_port
from sinks import delta
from tests.dashboard_helpers import Events, read_events, wait_for
from tests.stack_helpers import BIOPILOT, Up

pytestmark = pytest.mark.integration  # the CLI in a subprocess
DAYS, PATIENTS, DAY_TICKS = 5, 2, 288


def _flow_of(lake: Path) -> psutil.Process | None:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "bytewax.run" in cmd and str(lake) in cmd:
            return proc
    return None


def _rows(lake: Path, table: str) -> int:
    t = delta.read(lake, table, columns=["run_id"])
    return 0 if t is None else t.num_rows


def test_up_plant_patient_streams_obeys_a_dashboard_dose_change_and_survives_a_killed_flow(tmp_path):
    lake = tmp_path / "lake"
    scenario = tmp_path / "short.toml"
    scenario.write_text(f'description = "short"\ndrug = "warfarin"\nprotocol = "standard"\ndays = {DAYS}\n')
    port = free_port()
    # 4 simulated hours a second: the 5 days take 30 s
    up = Up(["--plant", "patient", "--patients", str(PATIENTS), "--speed", "14400", "--batches", "1",
             "--scenario", str(scenario), "--lake", str(lake), "--port", str(port)])
    try:
        login = up.line(r"dashboard  (http://\S+/login\?code=\S+)")
        assert login, "".join(up.lines)
        assert up.line(r"plant      2 patient\(s\), scenario short, speed 14400x")
        wait_port(port, timeout_s=30, proc=up.proc)  # the link is printed as the server starts listening
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get(login.group(1)).status_code in (200, 303)  # the cookie, then the page
            with client.stream("GET", "/api/stream/telemetry", timeout=30) as response:
                ticks = read_events(Events(response), 2, {"tick"}, timeout_s=60)
            assert all("p00000" in e["data"] and "hr_bpm" in e["data"] for e in ticks)
            dose = {"type": "dose", "drug": "warfarin", "daily_mg": 7.5}
            assert wait_for(lambda: client.post("/api/patients/p000001/control", json=dose).status_code == 202, 30)
            # the flow dies hard while the vitals stream in; the supervisor restarts it
            assert wait_for(lambda: _rows(lake, "vitals") > 0, 90), "".join(up.lines)
            flow = _flow_of(lake)
            assert flow is not None and not up.line(r"supervisor plant .* finished", timeout_s=0)  # mid-stream
            flow.kill()
            assert up.line(rf"supervisor flow \(pid {flow.pid}\) died", timeout_s=30)
            assert up.line(r"flow drained", timeout_s=240), "".join(up.lines)
        try:
            up.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("`up` did not stop after the flow drained:\n" + "".join(up.lines)) from None
        assert up.proc.returncode == 0, "".join(up.lines)
    finally:
        up.stop()
    out = "".join(up.lines)
    assert f"plant stopped: 1 cohort(s), {PATIENTS * DAYS * DAY_TICKS:,} vitals rows" in out
    vitals = delta.read(lake, "vitals", columns=["run_id", "patient_id", "seq"])
    assert vitals.num_rows == PATIENTS * DAYS * DAY_TICKS  # nothing lost, nothing twice
    assert len(set(zip(vitals["run_id"].to_pylist(), vitals["seq"].to_pylist(), strict=True))) == vitals.num_rows
    doses = delta.read(lake, "doses").to_pylist()
    assert any(d["patient_id"] == "p000001" and d["drug"] == "warfarin" and d["dose_mg"] == 7.5 for d in doses)
    assert not any(d["patient_id"] == "p000000" and d["dose_mg"] == 7.5 for d in doses)
    audit = delta.read(lake, "audit").to_pylist()
    assert any(a["action"] == "control" and a["target"] == "p000001" and a["result"] == "published" for a in audit)
    assert _rows(lake, "patients") == PATIENTS and _rows(lake, "runs") == PATIENTS


@pytest.mark.parametrize(("args", "message"), [
    (["--reactors", "3"], "--reactors is for the bioreactor; a patient cohort takes --patients"),
    (["--scenario", "normal"], "'normal' is a bioreactor scenario, not a patient one"),
    (["--scenario", "nope"], "unknown patient scenario 'nope'"),
    (["--patients", "0"], "--patients"),
    (["--speed", "-1"], "--speed"),
])
def test_up_plant_patient_answers_bad_input_with_one_line_and_exit_2(tmp_path, args, message):
    out = subprocess.run([*BIOPILOT, "up", "--plant", "patient", *args, "--lake", str(tmp_path / "lake")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2  # argparse adds its usage line above its own errors
