"""The detector benchmark's bookkeeping: detections, delays, false alarms, precision/recall."""

from __future__ import annotations

import numpy as np

from detectors.benchmark import Run, alarm_openings, evaluate, persistent_max


def _run(scenario: str, faults: list[tuple[str, float, float]], n: int = 2000) -> Run:
    return Run(scenario, 1, np.zeros((n, 1)), np.arange(n, dtype=float), faults)


def test_persistent_max_is_the_level_held_for_the_persistence():
    scores = np.array([0, 9, 0, 5, 6, 7, 5, 5, 0], dtype=float)
    assert persistent_max(scores, persist=5) == 5.0
    assert persistent_max(scores, persist=1) == 9.0


def test_detection_delay_false_alarms_and_f1():
    fault_run = _run("x", [("overfeed", 1000.0, 1100.0)])
    normal = _run("normal", [])
    s_fault = np.zeros(2000)
    s_fault[1030:1040] = 5.0  # detected 30 min after onset
    s_fault[200:210] = 5.0  # an alarm outside the window: a false positive
    s_normal = np.zeros(2000)
    s_normal[500:520] = 5.0  # one false alarm on a normal run (2000 min = 1.39 days)
    openings = {("x", 1): alarm_openings(s_fault, 1.0), ("normal", 1): alarm_openings(s_normal, 1.0)}
    res = evaluate("d", 1.0, openings, [fault_run, normal], grace_h=0.0)
    assert res.detection_rate == {"overfeed": 1.0}
    assert res.median_delay_min["overfeed"] == 34.0  # opens on the 5th tick above threshold
    assert np.isclose(res.false_alarms_per_reactor_day, 1 / (2000 / 1440))
    assert np.isclose(res.precision, 1 / 3) and res.recall == 1.0
    assert np.isclose(res.f1, 0.5)


def test_a_missed_fault_counts_against_recall():
    run = _run("x", [("sensor_drift", 100.0, 200.0)])
    res = evaluate("d", 1.0, {("x", 1): alarm_openings(np.zeros(2000), 1.0)}, [run], grace_h=2.0)
    assert res.detection_rate == {"sensor_drift": 0.0}
    assert res.median_delay_min["sensor_drift"] is None
    assert res.recall == 0.0 and res.f1 == 0.0
