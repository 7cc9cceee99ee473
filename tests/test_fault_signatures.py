"""Each fault archetype moves the signals it names, against the same seed without the fault."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from tests.twin_helpers import FleetRun, run_builtin

SEED = 5


def _window(run: FleetRun, after_h: float = 0.0) -> tuple[float, float, np.ndarray]:
    label = run.fleet.labels[0]
    t0 = run.fleet.started[0]
    start = (label.start_ts - t0) / timedelta(days=1)
    end = (label.end_ts - t0) / timedelta(days=1) + after_h / 24.0
    day = run.days(0)
    return start, end, (day >= start) & (day < end)


def _pair(name: str) -> tuple[FleetRun, FleetRun]:
    return run_builtin(name, 1, SEED), run_builtin(name, 1, SEED, strip_faults=True)


def _assays_after(run: FleetRun, name: str, start: float, days: float) -> np.ndarray:
    day, values = run.assay(0, name)
    return values[(day > start) & (day <= start + days)]


def test_every_fault_writes_a_label_with_signals_root_cause_and_action():
    faulty, _ = _pair("overfeed")
    label = faulty.fleet.labels_table().to_pylist()[0]
    assert label["fault"] == "overfeed"
    assert "feed_ml" in label["signals"]
    assert label["root_cause"] and label["action"]
    assert label["end_ts"] > label["start_ts"]


def test_overfeed_jumps_feed_and_raises_glucose_osmolality_lactate():
    f, b = _pair("overfeed")
    start, end, w = _window(f)
    assert f.signal(0, "feed_ml")[w][-1] - b.signal(0, "feed_ml")[w][-1] > 50.0
    assert f.signal(0, "volume_l")[w][-1] > b.signal(0, "volume_l")[w][-1] + 0.05
    for name in ("glucose_g_l", "osmolality_mosm_kg", "lactate_g_l"):
        assert _assays_after(f, name, start, 2).mean() > _assays_after(b, name, start, 2).mean() * 1.1, name


@pytest.mark.parametrize("scenario", ["pump_omission", "underfeed"])
def test_underfeed_flattens_feed_starves_glucose_drops_our_and_viability(scenario):
    f, b = _pair(scenario)
    start, end, w = _window(f)
    assert np.ptp(f.signal(0, "feed_ml")[w]) < 0.5 * np.ptp(b.signal(0, "feed_ml")[w])
    assert np.nanmean(f.signal(0, "our_mmol_l_h")[w]) < 0.9 * np.nanmean(b.signal(0, "our_mmol_l_h")[w])
    assert _assays_after(f, "glucose_g_l", start, 3).min() < 0.5 * _assays_after(b, "glucose_g_l", start, 3).min()
    assert _assays_after(f, "viability_pct", end, 2).mean() < _assays_after(b, "viability_pct", end, 2).mean() - 3


def test_do_limitation_drops_do_with_o2_at_its_cap_and_caps_our():
    f, b = _pair("do_limitation")
    start, end, w = _window(f)
    do_f, do_b = f.signal(0, "do_pct")[w], b.signal(0, "do_pct")[w]
    assert np.nanmean(do_f) < np.nanmean(do_b) - 10.0
    o2 = f.signal(0, "o2_sccm")[w]
    cap = f.fleet.scenario.process.o2_max_sccm * (1.0 - f.fleet.labels[0].magnitude)
    assert np.median(o2) > 0.9 * cap  # O2 flow pinned at what the supply still gives
    assert np.nanmean(f.signal(0, "our_mmol_l_h")[w]) < np.nanmean(b.signal(0, "our_mmol_l_h")[w])
    assert _assays_after(f, "lactate_g_l", start, 2).mean() > _assays_after(b, "lactate_g_l", start, 2).mean()


def test_ph_excursion_leaves_the_band_with_co2_stuck_and_base_racing():
    f, b = _pair("ph_excursion")
    start, end, w = _window(f)
    sp = f.fleet.scenario.process.ph_setpoint
    assert np.nanmin(f.signal(0, "ph")[w]) < sp - 0.15
    assert np.nanmin(b.signal(0, "ph")[w]) > sp - 0.1
    assert np.median(f.signal(0, "co2_sccm")[w]) > 0.7 * f.fleet.scenario.process.co2_max_sccm
    base_f, base_b = f.signal(0, "base_ml")[w], b.signal(0, "base_ml")[w]
    assert np.ptp(base_f) > np.ptp(base_b) + 20.0


def test_temperature_spike_heats_raises_our_then_costs_viability():
    f, b = _pair("temperature_spike")
    start, end, w = _window(f)
    assert np.nanmax(f.signal(0, "temp_c")[w]) > np.nanmax(b.signal(0, "temp_c")[w]) + 1.5
    assert np.nanmean(f.signal(0, "our_mmol_l_h")[w]) > 1.1 * np.nanmean(b.signal(0, "our_mmol_l_h")[w])
    assert _assays_after(f, "viability_pct", end, 2).mean() < _assays_after(b, "viability_pct", end, 2).mean() - 2


def test_contamination_eats_glucose_spikes_respiration_crashes_do_and_ph():
    f, b = _pair("contamination")
    start, _, _ = _window(f)
    day = f.days(0)
    first = (day >= start) & (day < start + 1.0)
    assert np.nanmax(f.signal(0, "our_mmol_l_h")[first]) > 2.0 * np.nanmax(b.signal(0, "our_mmol_l_h")[first])
    assert np.nanmax(f.signal(0, "cer_mmol_l_h")[first]) > 2.0 * np.nanmax(b.signal(0, "cer_mmol_l_h")[first])
    assert np.nanmin(f.signal(0, "do_pct")[first]) < 10.0
    assert np.nanmin(f.signal(0, "ph")[first]) < np.nanmin(b.signal(0, "ph")[first]) - 0.05
    assert _assays_after(f, "glucose_g_l", start, 2).min() < 0.2
    assert _assays_after(f, "viability_pct", start, 3).min() < _assays_after(b, "viability_pct", start, 3).min() - 20
    titer_f = _assays_after(f, "titer_g_l", start, 4)
    assert titer_f[-1] <= titer_f[0] + 0.05  # titer stalls


def test_sensor_drift_moves_only_the_reading():
    f, b = _pair("sensor_drift")
    start, end, w = _window(f)
    drift = f.signal(0, "ph")[w] - b.signal(0, "ph")[w]
    assert drift[-60:].mean() > 0.05
    for other in ("co2_sccm", "base_ml", "do_pct", "our_mmol_l_h"):
        np.testing.assert_array_equal(f.signal(0, other), b.signal(0, other))
    np.testing.assert_array_equal(f.assays["lactate_g_l"].to_numpy(), b.assays["lactate_g_l"].to_numpy())


def test_sensor_stuck_freezes_the_reading_while_the_process_runs():
    f, b = _pair("sensor_stuck")
    start, end, w = _window(f)
    assert np.ptp(f.signal(0, "do_pct")[w]) == 0.0
    assert np.ptp(b.signal(0, "do_pct")[w]) > 0.5
    np.testing.assert_array_equal(f.signal(0, "our_mmol_l_h"), b.signal(0, "our_mmol_l_h"))


def test_sensor_dropout_makes_the_reading_null_not_a_magic_number():
    f, b = _pair("sensor_dropout")
    start, end, w = _window(f)
    cap = f.ticks["capacitance_pf_cm"]
    assert cap.null_count == int(w.sum())
    assert np.isnan(f.signal(0, "capacitance_pf_cm")[w]).all()
    assert not np.isnan(b.signal(0, "capacitance_pf_cm")).any()


def test_composite_faults_overlap_and_both_are_labelled():
    run = run_builtin("overfeed_then_do_limitation", 1, SEED)
    assert [lab.fault for lab in run.fleet.labels] == ["overfeed", "do_limitation"]
    day = run.days(0)
    w = (day >= 6.0) & (day < 7.0)
    assert np.nanmean(run.signal(0, "do_pct")[w]) < 30.0
