"""Soft sensors in the monitor: VCD and glucose between assays beat carrying the last assay forward."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from detectors.soft_sensors import SoftSensors
from tests.agent_helpers import simulated


@pytest.mark.parametrize("scenario", ["normal", "pump_omission"])
def test_estimates_before_each_assay_beat_the_last_assay_held(scenario):
    ticks, assays, _ = simulated(scenario, seed=14)
    monitor = ReactorMonitor("r1", MonitorConfig.for_detector("fusion", lateness_s=0))
    ts = ticks["ts"].cast(pa.int64()).to_numpy()
    estimates, pos = [], 0
    for assay in assays.sort_by("reported_ts").to_pylist():  # results arrive when the lab reports them
        upto = int(np.searchsorted(ts, int(assay["reported_ts"].timestamp() * 1e6)))
        out = monitor.on_ticks(ticks.slice(pos, upto - pos))
        pos = upto
        if "scores" in out.tables:
            estimates.append(out.tables["scores"])
        monitor.on_assays(pa.Table.from_pylist([assay], schema=assays.schema))
    soft = pa.concat_tables(estimates)
    soft_us = soft["ts"].cast(pa.int64()).to_numpy()
    errors, last = [], None
    for assay in assays.sort_by("sample_ts").to_pylist():
        i = int(np.searchsorted(soft_us, int(assay["sample_ts"].timestamp() * 1e6)))
        if last is not None and i < len(soft_us):
            errors.append([abs(soft["vcd_e6_per_ml_est"][i].as_py() - assay["vcd_e6_per_ml"]),
                           abs(last["vcd_e6_per_ml"] - assay["vcd_e6_per_ml"]),
                           abs(soft["glucose_g_l_est"][i].as_py() - assay["glucose_g_l"]),
                           abs(last["glucose_g_l"] - assay["glucose_g_l"])])
        last = assay
    vcd_soft, vcd_hold, glc_soft, glc_hold = np.mean(errors, axis=0)
    assert len(errors) >= 8
    assert vcd_soft < 0.75 * vcd_hold and glc_soft < glc_hold


def test_the_history_keeps_every_tick_of_half_a_day_then_one_per_ten_minutes_up_to_four_days():
    soft = SoftSensors()
    minute_us = 60_000_000
    for day in range(5):
        us = (day * 1440 + np.arange(1440)) * minute_us
        soft.update(us, np.full(1440, 2.0), np.zeros(1440), np.full(1440, 1.6))
    minutes = soft.history["us"] // minute_us
    end = 5 * 1440 - 1
    recent = minutes >= end - 720
    assert np.array_equal(minutes[recent], np.arange(end - 720, end + 1))  # the last 12 h, every tick
    older = minutes[~recent]
    assert older[0] >= end - 4 * 1440 and np.all(np.diff(older) == 10)  # one per 10-minute bucket, four days
    assert all(len(v) == len(minutes) for v in soft.history.values())
    k_before = soft.k
    soft.on_assay(int((end - 2 * 1440 + 3) * minute_us), 3.0, None)  # a result reported two days late
    assert soft.k > k_before  # matched to the capacitance of its ten minutes (2.0 pF/cm, so k moves to 1.5)
