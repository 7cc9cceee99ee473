"""The per-reactor monitor outside the engine."""

from __future__ import annotations

import weakref

import numpy as np

from detectors.reactor_monitor import MonitorConfig, warm_up
from detectors.soft_sensors import SoftSensors


def test_warm_up_scores_synthetic_ticks_with_every_detector():
    for detector in ("fusion", "zscore"):
        out = warm_up(MonitorConfig.for_detector(detector, 0))
        assert out.tables["scores"].num_rows == 10
        assert out.tables["scores"]["detector"][0].as_py() == detector


def test_the_scores_for_the_sink_keep_none_of_the_steps_numpy_arrays_alive(monkeypatch):
    """The Delta sink holds a micro-batch's rows for a second or more; numpy's buffers held that long between
    the step's short-lived arrays fragmented glibc's heap, and the flow's memory rose in a soak."""
    estimates: list[weakref.ref] = []

    def update(self, ts_us, capacitance, feed_ml, volume_l):
        vcd, glucose = np.full(len(ts_us), 1.5), np.full(len(ts_us), 2.5)
        estimates.extend([weakref.ref(vcd), weakref.ref(glucose)])
        return vcd, glucose

    monkeypatch.setattr(SoftSensors, "update", update)
    scores = warm_up(MonitorConfig(lateness_s=0)).tables["scores"]
    assert scores["vcd_e6_per_ml_est"].to_pylist() == [1.5] * 10
    assert scores["glucose_g_l_est"].to_pylist() == [2.5] * 10
    assert [ref() for ref in estimates] == [None, None]  # freed: the table holds copies
