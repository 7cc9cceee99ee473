"""`biopilot bench pipeline --json` on a tiny run: every phase runs on its own broker and prints the keys the
streaming issue names, the throughput as the median of repeated runs (a smoke test of the bench, not a
measurement); the steady-state rate from a commit log."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from biopilot.bench.pipeline import steady_rate
from sinks import delta


def test_a_tiny_pipeline_bench_reports_every_figure():
    res = subprocess.run([sys.executable, "-m", "biopilot.cli", "bench", "pipeline", "--json", "--detector", "zscore",
                          "--ticks", "40000", "--naive-ticks", "500", "--live-rate", "2000", "--live-s", "4",
                          "--soak-s", "6", "--repeats", "2"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    for key in ("ours_ticks_per_s", "floor_ticks_per_s", "naive_ticks_per_s", "p99_publish_to_alert_ms",
                "flow_max_rss_mb", "p99_publish_to_alert_burst_ms", "p99_publish_to_alert_recovery_ms"):
        assert key in out
    assert out["detector"] == "zscore"
    assert out["ours_ticks_per_s"] > 0 and out["floor_ticks_per_s"] > 0 and out["naive_ticks_per_s"] > 0
    assert out["soak_rss_mb"] and out["flow_max_rss_mb"] > 0
    assert "soak_rss_rise_mb" in out  # NaN: a 6 s soak has no second and last minute
    assert out["soak_lost_messages"] == 0
    assert out["repeats"] == 2 and len(out["ours_runs_ticks_per_s"]) == len(out["floor_runs_ticks_per_s"]) == 2
    assert out["ours_ticks_per_s"] == pytest.approx(np.median(out["ours_runs_ticks_per_s"]))
    assert out["floor_vs_ours"] == pytest.approx(out["floor_ticks_per_s"] / out["ours_ticks_per_s"])


def test_the_steady_rate_counts_the_commits_after_the_first_up_to_ninety_percent(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    appender = delta.Appender(tmp_path)
    stamps = []
    for _ in range(10):  # 100 rows every ~0.1 s
        appender.append("t", pa.table({"x": np.arange(100)}, schema=schema), schema)
        stamps.append(time.time())
        time.sleep(0.1)
    expected = 800 / (stamps[8] - stamps[0])  # commits 2-9 (the ninth reaches 900 of 1,000), over their span
    assert steady_rate(tmp_path / "t", 1000) == pytest.approx(expected, rel=0.05)
    assert steady_rate(tmp_path / "t", 100_000) is None  # never reached 90 %: too few commits to say
