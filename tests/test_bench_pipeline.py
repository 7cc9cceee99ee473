"""`biopilot bench pipeline --json` on a tiny run: every phase runs on its own broker and prints the keys the
streaming issue names (a smoke test of the bench, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_a_tiny_pipeline_bench_reports_every_figure():
    res = subprocess.run([sys.executable, "-m", "biopilot.cli", "bench", "pipeline", "--json", "--detector", "zscore",
                          "--ticks", "40000", "--naive-ticks", "500", "--live-rate", "2000", "--live-s", "4",
                          "--soak-s", "6"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    for key in ("ours_ticks_per_s", "floor_ticks_per_s", "naive_ticks_per_s", "p99_publish_to_alert_ms",
                "flow_max_rss_mb", "p99_publish_to_alert_burst_ms", "p99_publish_to_alert_recovery_ms"):
        assert key in out
    assert out["detector"] == "zscore"
    assert out["ours_ticks_per_s"] > 0 and out["floor_ticks_per_s"] > 0 and out["naive_ticks_per_s"] > 0
    assert out["soak_rss_mb"] and out["flow_max_rss_mb"] > 0
