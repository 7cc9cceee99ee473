"""`biopilot bench simulate --json` reports its figures beside the baseline (correctness only, no timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.integration
def test_bench_simulate_json_has_the_figures():
    out = subprocess.run([sys.executable, "-m", "biopilot.cli", "bench", "simulate", "--reactors", "4", "--days",
                          "0.5", "--baseline-reactors", "1", "--baseline-days", "0.05", "--json"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    for key in ("reactor_runs_per_s", "ticks_per_s", "baseline_reactor_runs_per_s", "speedup", "max_rss_mb"):
        assert result[key] > 0, key
    assert result["reactors"] == 4
    assert result["speedup"] == result["reactor_runs_per_s"] / result["baseline_reactor_runs_per_s"]
