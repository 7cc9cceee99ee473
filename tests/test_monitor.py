"""The per-reactor monitor outside the engine."""

from __future__ import annotations

from detectors.monitor import MonitorConfig, warm_up


def test_warm_up_scores_synthetic_ticks_with_every_detector():
    for detector in ("fusion", "zscore"):
        out = warm_up(MonitorConfig.for_detector(detector, 0))
        assert out.tables["scores"].num_rows == 10
        assert out.tables["scores"]["detector"][0].as_py() == detector
