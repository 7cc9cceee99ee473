"""Ctrl-C during `biopilot simulate --plant patient`: exit 130 with one line, and the lake stays consistent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from sinks import delta

PATIENTS, DAYS = 100, 84


@pytest.mark.integration
def test_ctrl_c_during_a_patient_simulation_exits_130_with_one_line_and_marks_no_run(tmp_path):
    lake = tmp_path / "lake"
    proc = subprocess.Popen([sys.executable, "-m", "biopilot.cli", "simulate", "--plant", "patient", "--scenario",
                             "warfarin_standard", "--patients", str(PATIENTS), "--days", str(DAYS), "--seed", "1",
                             "--lake", str(lake), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (lake / "vitals").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the simulation ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == [err.strip()] and err.startswith("biopilot: interrupted"), err
    assert delta.run_ids(lake) == set()  # no run marked complete: the next simulate writes them all again
    vitals = delta.read(lake, "vitals")  # the streamed table's commit is whole and readable
    assert vitals.num_rows < PATIENTS * DAYS * 288  # stopped mid-stream, not once it was all written
