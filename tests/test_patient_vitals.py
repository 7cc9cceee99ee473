"""Vitals: physiological ranges, realistic within-day variability, the circadian dip, correlation, the monitor's
quantisation and the sensor faults."""

from __future__ import annotations

import numpy as np
import pytest

from core.events import VITAL_SIGNALS
from sources.patient.cohort import draw_cohort
from sources.patient.vitals import PHYSIOLOGICAL_RANGE, SensorFault, VitalsModel, asleep_fraction

DT_H = 5 / 60


@pytest.fixture(scope="module")
def three_days():
    cohort = draw_cohort(200, np.random.default_rng(0))
    model = VitalsModel(cohort, np.random.default_rng(1))
    t = np.arange(0.0, 72.0, DT_H)
    true = model.step(t, {})
    return cohort, t, true, model.measure(true, np.random.default_rng(2))


def test_measured_vitals_stay_inside_physiological_ranges(three_days):
    _, _, _, seen = three_days
    for name in VITAL_SIGNALS:
        lo, hi = PHYSIOLOGICAL_RANGE[name]
        assert np.nanmin(seen[name]) >= lo and np.nanmax(seen[name]) <= hi
    # a resting patient without events: no alarming extremes
    assert np.percentile(seen["hr_bpm"], 0.1) > 40 and np.percentile(seen["sbp_mmhg"], 0.1) > 80
    assert np.percentile(seen["spo2_pct"], 0.1) >= 92 and np.all(seen["dbp_mmhg"] < seen["sbp_mmhg"])


def test_within_day_cv_of_sbp_7_to_15_and_of_hr_8_to_18_percent(three_days):
    _, _, _, seen = three_days
    day = slice(0, int(24 / DT_H))
    cv = {n: np.std(seen[n][:, day], axis=1) / np.mean(seen[n][:, day], axis=1) for n in ("sbp_mmhg", "hr_bpm")}
    assert 0.07 <= np.median(cv["sbp_mmhg"]) <= 0.15
    assert 0.08 <= np.median(cv["hr_bpm"]) <= 0.18
    assert np.mean((cv["sbp_mmhg"] > 0.05) & (cv["sbp_mmhg"] < 0.18)) > 0.9


def test_blood_pressure_dips_about_11_over_8_asleep_and_pulse_falls(three_days):
    _, t, true, _ = three_days
    asleep, awake = asleep_fraction(t) > 0.95, asleep_fraction(t) < 0.05
    dip = {n: true[n][:, awake].mean() - true[n][:, asleep].mean() for n in ("sbp_mmhg", "dbp_mmhg", "hr_bpm")}
    assert 8 <= dip["sbp_mmhg"] <= 14 and 5.5 <= dip["dbp_mmhg"] <= 10.5 and 4 <= dip["hr_bpm"] <= 10


def test_pulse_pressures_and_breathing_fluctuate_together(three_days):
    _, t, true, _ = three_days
    awake = asleep_fraction(t) < 0.05
    dev = {n: (true[n] - true[n][:, awake].mean(axis=1, keepdims=True))[:, awake].ravel()
           for n in ("hr_bpm", "sbp_mmhg", "dbp_mmhg", "rr_min")}
    assert np.corrcoef(dev["sbp_mmhg"], dev["dbp_mmhg"])[0, 1] > 0.5
    assert np.corrcoef(dev["hr_bpm"], dev["rr_min"])[0, 1] > 0.2
    assert np.corrcoef(dev["hr_bpm"], dev["sbp_mmhg"])[0, 1] > 0.15


def test_monitor_quantises_integers_and_tenths_of_a_degree(three_days):
    _, _, _, seen = three_days
    for name in ("hr_bpm", "sbp_mmhg", "dbp_mmhg", "spo2_pct", "rr_min"):
        assert np.all(seen[name] == np.round(seen[name]))
    assert np.allclose(seen["temp_c"] * 10, np.round(seen["temp_c"] * 10))


def test_chunked_stepping_equals_one_step_and_effects_add():
    cohort = draw_cohort(5, np.random.default_rng(3))
    t = np.arange(0.0, 12.0, DT_H)
    whole = VitalsModel(cohort, np.random.default_rng(4)).step(t, {})
    model = VitalsModel(cohort, np.random.default_rng(4))
    half = len(t) // 2
    a = model.step(t[:half], {})
    b = model.step(t[half:], {})
    for name in VITAL_SIGNALS:
        np.testing.assert_allclose(np.concatenate([a[name], b[name]], axis=1), whole[name])
    slowed = VitalsModel(cohort, np.random.default_rng(4)).step(t, {"hr_bpm": np.full((5, len(t)), -10.0)})
    np.testing.assert_allclose(slowed["hr_bpm"], whole["hr_bpm"] - 10.0)


def test_sensor_faults_dropout_stuck_and_drift():
    cohort = draw_cohort(4, np.random.default_rng(5))
    model = VitalsModel(cohort, np.random.default_rng(6))
    t = np.arange(0.0, 6.0, DT_H)
    true = model.step(t, {})
    active = np.zeros((4, len(t)), bool)
    active[0, 30:] = True
    hours = np.where(active, (np.arange(len(t)) - 30) * DT_H, np.nan)
    faults = [SensorFault("dropout", "spo2_pct", active), SensorFault("stuck", "hr_bpm", active),
              SensorFault("drift", "sbp_mmhg", active, hours, magnitude=2.0)]
    clean = model.measure(true, np.random.default_rng(7))
    seen = VitalsModel(cohort, np.random.default_rng(6))
    seen.step(t, {})
    faulty = seen.measure(true, np.random.default_rng(7), faults)
    assert np.isnan(faulty["spo2_pct"][0, 30:]).all() and not np.isnan(faulty["spo2_pct"][1:]).any()
    assert np.all(faulty["hr_bpm"][0, 30:] == clean["hr_bpm"][0, 29])
    drift = faulty["sbp_mmhg"][0, 30:] - clean["sbp_mmhg"][0, 30:]
    assert abs(drift[-1] - 2.0 * 3.0 * hours[0, -1]) <= 1.0 and np.all(drift >= -0.5)
    np.testing.assert_array_equal(faulty["sbp_mmhg"][1:], clean["sbp_mmhg"][1:])
    with pytest.raises(ValueError, match="unknown vital"):
        SensorFault("dropout", "glucose", active)
