"""`biopilot report` of a patient run: the patient and genotype, the TTR, the incident's causes and the figure."""

from __future__ import annotations

import base64
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.patient_report import time_in_range

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BIOPILOT, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def patient_run(tmp_path_factory) -> tuple[str, str]:
    lake = str(tmp_path_factory.mktemp("lake"))
    res = _cli("simulate", "--plant", "patient", "--scenario", "major_bleed", "--patients", "1", "--days", "20",
               "--seed", "1", "--lake", lake)
    assert res.returncode == 0, res.stderr
    return lake, res.stdout.split()[0]


def test_ttr_is_rosendaal_linear_interpolation_between_lab_inrs():
    day = lambda d: datetime(2026, 1, d, 8, tzinfo=UTC)  # noqa: E731
    assert time_in_range([(day(1), 2.5)]) is None
    assert time_in_range([(day(1), 2.2), (day(5), 2.8)]) == 1.0
    assert time_in_range([(day(1), 1.0), (day(5), 5.0)]) == pytest.approx(2 / 5)  # INR 2 and 3 on days 2 and 3


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["md", "html"])
def test_patient_report_names_genotype_ttr_cause_and_embeds_the_figure(patient_run, tmp_path, fmt):
    lake, run = patient_run
    res = _cli("report", run, "--format", fmt, "--lake", lake, "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = Path(res.stdout.strip())
    assert out == tmp_path / f"{run}.{fmt}" and "no ticks" not in res.stderr
    text = out.read_text()
    png = tmp_path / f"{run}.png"
    assert png.stat().st_size > 10_000
    for needle in ("CYP2C9", "VKORC1", "CYP2D6", "*1/*1", "G/A", "co-medications", "major_bleed",
                   "Time in therapeutic range", "Rosendaal", "INR", "Hb (g/dL)", "warfarin"):
        assert needle in text, needle
    assert "TTR 0% (INR 2-3)" in text  # the INR never reached 2 in this run's labs
    incident = text.split("## Incidents" if fmt == "md" else "<h2>Incidents</h2>", 1)[1]
    assert "1. **major_bleed**" in incident or "1. major_bleed" in incident
    if fmt == "md":
        assert f"]({run}.png)" in text
        assert "| warfarin | 20 | 0 |" in text
    else:
        assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()[:64] in text


@pytest.mark.integration
def test_patient_report_of_an_unknown_run_is_one_line_exit_2(patient_run, tmp_path):
    lake, _ = patient_run
    res = _cli("report", "no-such-run", "--lake", lake, "--out", str(tmp_path / "reports"))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "no-such-run" in res.stderr and not (tmp_path / "reports" / "no-such-run.md").exists()
