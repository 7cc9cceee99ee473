"""`biopilot bench pipeline --json` on a tiny run: every phase runs on its own broker and prints its results
under its own key, the throughput as the median of repeated runs (a smoke test of the bench, not a
measurement); the steady-state rate from a commit log."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from biopilot.bench.pipeline import PipelineBench, format_report
from biopilot.bench.pipeline_latency import Latency, Percentiles
from biopilot.bench.pipeline_soak import Soak
from biopilot.bench.pipeline_throughput import PathRate, Throughput, steady_rate
from sinks import delta


@pytest.mark.integration
def test_a_tiny_pipeline_bench_reports_every_figure():
    res = subprocess.run([sys.executable, "-m", "biopilot.cli", "bench", "pipeline", "--json", "--detector", "zscore",
                          "--ticks", "40000", "--naive-ticks", "500", "--live-rate", "2000", "--live-s", "4",
                          "--soak-s", "6", "--repeats", "2"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert set(out) == {"detector", "throughput", "latency", "soak"}
    assert out["detector"] == "zscore"
    throughput, latency, soak = out["throughput"], out["latency"], out["soak"]
    for path in ("floor", "ours", "naive"):
        assert throughput[path]["ticks_per_s"] > 0 and throughput[path]["drain_ticks_per_s"] > 0
    for key in ("publish_to_commit", "publish_to_alert", "publish_to_first_alert", "publish_to_alert_burst",
                "publish_to_alert_recovery"):
        assert set(latency[key]) == {"p50_ms", "p99_ms", "count"}
    assert soak["rss_mb"] and soak["max_rss_mb"] > 0
    assert "rss_rise_mb" in soak  # NaN: a 6 s soak has no second and last minute
    assert soak["lost_messages"] == 0
    ours, floor = throughput["ours"], throughput["floor"]
    assert throughput["repeats"] == 2 and len(ours["runs_ticks_per_s"]) == len(floor["runs_ticks_per_s"]) == 2
    assert ours["ticks_per_s"] == pytest.approx(np.median(ours["runs_ticks_per_s"]))
    assert throughput["floor_vs_ours"] == pytest.approx(floor["ticks_per_s"] / ours["ticks_per_s"])


def test_the_text_report_has_a_line_per_path_and_phase():
    rate = PathRate(ticks_per_s=1e6, drain_ticks_per_s=8e5, runs_ticks_per_s=[1e6, 9e5])
    alerts = Percentiles.of([0.002, 0.004])
    bench = PipelineBench(
        detector="zscore",
        throughput=Throughput(ticks=40_000, naive_ticks=500, repeats=2, floor=rate, ours=rate, naive=rate,
                              ours_vs_naive=300.0, floor_vs_ours=2.0),
        latency=Latency(rate_ticks_per_s=2000.0, lateness_s=0.0, publish_to_commit=alerts, publish_to_alert=alerts,
                        publish_to_first_alert=alerts, publish_to_alert_burst=alerts,
                        publish_to_alert_recovery=alerts),
        soak=Soak(duration_s=6.0, ticks_per_s=1e5, rss_mb=[700.0, 720.0], max_rss_mb=720.0,
                  rss_rise_mb=float("nan"), lost_messages=0))
    lines = format_report(bench).splitlines()
    assert [line[:10] for line in lines] == ["(a) floor ", "(b) ours  ", "(c) naive ", "ratios    ", "live      ",
                                             "soak      "]
    assert "flow + zscore" in lines[1] and "publish->alert p50 3.0 ms p99 4.0 ms (2 alerts)" in lines[4]


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
