"""Live changes to a running fleet: setpoints, one-off feeds, fault injection (used by the plant feed)."""

from __future__ import annotations

import numpy as np
import pytest

from sources.fleet import Fleet
from sources.scenarios import load_scenario


def _advance(fleet: Fleet, ticks: int, k: int, name: str) -> np.ndarray:
    batch = fleet.step(ticks).ticks
    rid = fleet.reactor_ids[k]
    rows = [i for i, r in enumerate(batch.column("reactor_id").to_pylist()) if r == rid]
    return batch.column(name).to_numpy(zero_copy_only=False)[rows]


def test_setpoint_change_moves_the_process():
    fleet = Fleet(load_scenario("normal"), 2, seed=3)
    _advance(fleet, 2 * 1440, 0, "do_pct")
    fleet.set_control(0, "do_setpoint_pct", 60.0)
    do0 = _advance(fleet, 240, 0, "do_pct")
    fleet2 = Fleet(load_scenario("normal"), 2, seed=3)
    fleet2.step(2 * 1440)
    do1 = _advance(fleet2, 240, 0, "do_pct")
    assert do0[-60:].mean() > 55.0 > do1[-60:].mean()


def test_one_off_bolus_is_delivered_now():
    fleet = Fleet(load_scenario("normal"), 1, seed=3)
    fleet.step(600)
    before = _advance(fleet, 1, 0, "feed_ml")[-1]
    fleet.add_bolus(0, 30.0)
    after = _advance(fleet, 60, 0, "feed_ml")[-1]
    assert after - before == pytest.approx(30.0, abs=0.5)


def test_injected_fault_acts_from_now_and_is_labelled():
    fleet = Fleet(load_scenario("normal"), 1, seed=3)
    fleet.step(3 * 1440)
    label = fleet.inject_fault(0, "temperature_spike", fleet.t_h[0], 4.0, 3.0)
    temp = _advance(fleet, 240, 0, "temp_c")
    assert temp[120:].mean() > 39.0
    assert label.fault == "temperature_spike" and label.signals[0] == "temp_c"
    assert fleet.labels_table().num_rows == 1


def test_bad_live_commands_are_refused_with_the_allowed_values():
    fleet = Fleet(load_scenario("normal"), 1)
    with pytest.raises(ValueError, match="allowed: overfeed"):
        fleet.inject_fault(0, "meltdown", 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="needs a signal"):
        fleet.inject_fault(0, "sensor_stuck", 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="allowed: do_setpoint_pct"):
        fleet.set_control(0, "warp_drive", 1.0)
