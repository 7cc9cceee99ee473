"""Bytewax snapshots every reactor's monitor at each epoch (deep copy, and pickle with a recovery store):
shared read-only data is not copied, the state is plain arrays, and a restored monitor goes on identically."""

from __future__ import annotations

import copy
import pickle

import numpy as np

from detectors.golden import load_reference
from detectors.monitor import MonitorConfig, ReactorMonitor
from tests.stream_helpers import make_ticks


def _monitor_after(ticks) -> ReactorMonitor:
    monitor = ReactorMonitor("r1", MonitorConfig.for_detector("fusion", 0))
    monitor.on_ticks(ticks)
    return monitor


def test_the_golden_reference_is_shared_by_copies_and_pickled_by_its_file():
    ref = load_reference()
    assert copy.deepcopy(ref) is ref
    blob = pickle.dumps(ref)
    assert len(blob) < 1000 and pickle.loads(blob) is ref  # the file's name, not 0.4 MB of arrays
    assert not ref.median.flags.writeable  # shared by every reactor: read-only


def test_a_monitor_snapshot_is_small_and_holds_no_torch_objects():
    monitor = _monitor_after(make_ticks(reactors=1, ticks=6500))  # past the soft sensors' four days of history
    blob = pickle.dumps(monitor)
    # 557 kB when the references and the torch model travelled with it, ~250 kB with every tick of the history
    assert len(blob) < 120_000
    assert b"torch" not in blob


def test_a_restored_monitor_goes_on_with_the_same_scores():
    ticks = make_ticks(reactors=1, ticks=4000)
    live = _monitor_after(ticks.slice(0, 2500))
    restored = pickle.loads(pickle.dumps(copy.deepcopy(live)))
    rest = ticks.slice(2500)
    a, b = live.on_ticks(rest).tables["scores"], restored.on_ticks(rest).tables["scores"]
    assert a.num_rows == b.num_rows == 1500
    for name in ("score", "vcd_e6_per_ml_est", "glucose_g_l_est"):
        assert np.allclose(a[name].to_numpy(), b[name].to_numpy(), equal_nan=True)


def test_a_monitor_is_copied_at_each_epoch_only_when_a_recovery_store_keeps_the_copy():
    ticks = make_ticks(reactors=1, ticks=500)
    kept = ReactorMonitor("r1", MonitorConfig.for_detector("fusion", 0))
    kept.on_ticks(ticks)
    clone = copy.deepcopy(kept)
    assert clone is not kept and clone.det_state is not kept.det_state
    assert clone.soft.history["us"] is not kept.soft.history["us"]
    assert clone.detector is kept.detector and clone.config is kept.config  # settings, shared
    unkept = ReactorMonitor("r1", MonitorConfig.for_detector("fusion", 0, snapshots_kept=False))
    unkept.on_ticks(ticks)
    assert copy.deepcopy(unkept) is unkept  # Bytewax's per-epoch copy would be thrown away
