"""The monitoring agent's incident lifecycle: one excursion is one incident, never a storm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agents.incidents import IncidentTracker

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _alert(k: int, minutes: float, signal: str = "do_pct", reactor: str = "r1", run: str = "run-a",
           severity: str = "warning") -> dict:
    return {"alert_id": f"a{k}", "run_id": run, "reactor_id": reactor, "ts": T0 + timedelta(minutes=minutes),
            "severity": severity, "signals": [{"name": signal, "contribution": 0.9}]}


def _clear(k: int, minutes: float, reactor: str = "r1") -> dict:
    return {"type": "clear", "alert_id": f"a{k}", "reactor_id": reactor, "ts": T0 + timedelta(minutes=minutes)}


def test_a_burst_of_alerts_on_one_excursion_is_one_incident():
    tracker = IncidentTracker()
    events = []
    for k in range(20):
        events += tracker.on_alert(_alert(k, 10 * k))
    assert [e["event"] for e in events].count("open") == 1
    assert events[-1]["alert_count"] == 20 and events[-1]["severity"] == "critical"  # repeated: escalated


def test_unrelated_alerts_far_apart_are_separate_incidents_and_the_first_resolves():
    tracker = IncidentTracker()
    first = tracker.on_alert(_alert(1, 0, "do_pct"))
    later = tracker.on_alert(_alert(2, 600, "temp_c"))
    assert [e["event"] for e in later] == ["resolve", "open"]
    assert later[0]["incident_id"] == first[0]["incident_id"] and later[1]["incident_id"] != first[0]["incident_id"]


def test_lifecycle_open_update_resolve_and_reopen_within_the_merge_gap():
    tracker = IncidentTracker()
    opened = tracker.on_alert(_alert(1, 0))[0]
    assert tracker.on_alert(_alert(2, 30))[0]["status"] == "updated"
    assert tracker.on_clear(_clear(1, 90)) == []  # a2 is still open
    resolved = tracker.on_clear(_clear(2, 120))[0]
    assert resolved["status"] == "resolved" and resolved["end_ts"] == T0 + timedelta(minutes=120)
    reopened = tracker.on_alert(_alert(3, 200))[0]  # same signal, 80 min after: the same excursion
    assert reopened["incident_id"] == opened["incident_id"] and reopened["status"] == "updated"
    assert reopened["end_ts"] is None


def test_a_redelivered_alert_or_clear_changes_nothing():
    tracker = IncidentTracker()
    tracker.on_alert(_alert(1, 0))
    tracker.on_alert(_alert(2, 5))
    assert tracker.on_alert(_alert(1, 0)) == []
    assert tracker.on_clear(_clear(1, 10)) == []
    assert tracker.on_clear(_clear(1, 10)) == []


def test_a_new_run_on_the_reactor_never_joins_the_old_runs_incident():
    tracker = IncidentTracker()
    tracker.on_alert(_alert(1, 0, run="run-a"))
    events = tracker.on_alert(_alert(2, 5, run="run-b"))
    assert [e["event"] for e in events] == ["resolve", "open"] and events[1]["run_id"] == "run-b"


def test_state_handed_between_workers_as_json_gives_the_same_incidents():
    messages = [_alert(1, 0), _alert(2, 20), _clear(1, 80), _clear(2, 90), _alert(3, 400, "ph"),
                _alert(4, 410, "ph", reactor="r2"), _clear(3, 500)]
    one = IncidentTracker()
    expected = [e for m in messages for e in (one.on_clear(m) if "type" in m else one.on_alert(m))]
    got = []
    state: dict = {}
    for m in messages:  # every message on a "different worker"
        tracker = IncidentTracker.from_json(state)
        got += tracker.on_clear(m) if "type" in m else tracker.on_alert(m)
        state = tracker.to_json()
    strip = [{k: v for k, v in e.items() if k != "emitted_at"} for e in expected]
    assert [{k: v for k, v in e.items() if k != "emitted_at"} for e in got] == strip


def test_an_alert_whose_alarm_is_still_on_keeps_its_incident_live_past_the_merge_gap():
    tracker = IncidentTracker()
    opened = tracker.on_alert(_alert(1, 0))[0]
    later = tracker.on_alert(_alert(2, 5 * 60))  # 5 h on, a1 never cleared: the same long excursion
    assert [e["event"] for e in later] == ["update"] and later[0]["incident_id"] == opened["incident_id"]


def test_an_alarm_still_on_does_not_absorb_a_later_alert_led_by_another_signal():
    tracker = IncidentTracker()
    tracker.on_alert(_alert(1, 0, "feed_ml_per_tick"))
    later = {**_alert(2, 20 * 60, "ph"), "signals": [{"name": "ph", "contribution": 0.6},
                                                     {"name": "feed_ml_per_tick", "contribution": 0.2}]}
    assert [e["event"] for e in tracker.on_alert(later)] == ["resolve", "open"]


def test_a_clear_taken_before_its_alert_resolves_the_incident_when_the_alert_comes():
    # two workers of a queue group can swap an alert and its clear
    tracker = IncidentTracker()
    assert tracker.on_clear(_clear(1, 60)) == []
    events = tracker.on_alert(_alert(1, 0))
    assert [e["event"] for e in events] == ["open", "resolve"]
    assert events[1]["end_ts"] == T0 + timedelta(minutes=60)


def test_early_clears_that_never_meet_their_alert_are_bounded():
    tracker = IncidentTracker(max_early_clears=4)
    for k in range(10):
        tracker.on_clear(_clear(k, k))
    assert list(tracker.early_clears["r1"]) == ["a6", "a7", "a8", "a9"]
