"""Bytewax snapshots every reactor's state at each epoch (a deep copy, pickled with a recovery store): the
snapshot is the monitor pickled once, only when a store keeps it; shared read-only data is not copied, the
state is plain arrays, and a restored monitor goes on identically."""

from __future__ import annotations

import copy
import pickle

import numpy as np

from detectors.golden import load_reference
from detectors.reactor_monitor import MonitorConfig, ReactorMonitor
from detectors.unit_monitor import MonitorState
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
    state = MonitorState(_monitor_after(ticks.slice(0, 2500)))
    stored = pickle.dumps(copy.deepcopy(state))  # what Bytewax does at an epoch's end with a recovery store
    restored = pickle.loads(stored).monitor
    rest = ticks.slice(2500)
    a, b = state.monitor.on_ticks(rest).tables["scores"], restored.on_ticks(rest).tables["scores"]
    assert a.num_rows == b.num_rows == 1500
    for name in ("score", "vcd_e6_per_ml_est", "glucose_g_l_est"):
        assert np.allclose(a[name].to_numpy(), b[name].to_numpy(), equal_nan=True)


def test_an_epoch_copy_is_the_monitor_pickled_once_and_only_when_a_recovery_store_keeps_it():
    ticks = make_ticks(reactors=1, ticks=500)
    kept = MonitorState(_monitor_after(ticks))
    snapshot = copy.deepcopy(kept)
    assert snapshot is not kept and isinstance(snapshot._pickled, bytes) and snapshot._monitor is None
    kept.monitor.on_ticks(make_ticks(reactors=1, ticks=600).slice(500))  # later epochs do not change it
    assert snapshot.monitor.soft.last_us < kept.monitor.soft.last_us
    unkept = MonitorState(ReactorMonitor("r1", MonitorConfig.for_detector("fusion", 0, snapshots_kept=False)))
    unkept.monitor.on_ticks(ticks)
    assert copy.deepcopy(unkept) is unkept  # Bytewax's per-epoch copy would be thrown away
