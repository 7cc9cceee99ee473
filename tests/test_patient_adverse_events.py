"""Each adverse event's signature against the same seed without it: the vitals events through the vitals model,
the PK/PD events through the warfarin kernel."""

from __future__ import annotations

import numpy as np
import pytest

from core.events import VITAL_SIGNALS
from sources.patient.adverse_events import (
    ADVERSE_EVENTS,
    PKPD_EVENTS,
    VITALS_EVENTS,
    event_effects,
    major_bleed_relative_hazard,
    pkpd_modifiers,
)
from sources.patient.cohort import Cohort, draw_cohort
from sources.patient.pkpd import PkpdState, daily_doses, step_pkpd
from sources.patient.vitals import VitalsModel

DT_H = 5 / 60
ONSET_H = 30.0


def vitals_with_and_without(name: str, magnitude: float = 1.0, hours: float = 60.0, n: int = 20):
    cohort = draw_cohort(n, np.random.default_rng(1))
    t = np.arange(0.0, hours, DT_H)
    since = np.broadcast_to(np.where(t >= ONSET_H, t - ONSET_H, np.nan), (n, len(t)))
    effects = event_effects(name, since, magnitude)
    runs = []
    for eff in ({}, effects):
        model = VitalsModel(cohort, np.random.default_rng(2))
        true = model.step(t, {k: v for k, v in eff.items() if k in VITAL_SIGNALS})
        runs.append(model.measure(true, np.random.default_rng(3)))
    return t, runs[0], runs[1], effects


def window(t, a_h, b_h):
    return (t >= ONSET_H + a_h) & (t < ONSET_H + b_h)


def delta(t, base, event, name, a_h, b_h):
    w = window(t, a_h, b_h)
    return float(np.mean(event[name][:, w] - base[name][:, w]))


def test_nothing_differs_before_onset():
    for name in VITALS_EVENTS:
        t, base, event, _ = vitals_with_and_without(name)
        for v in VITAL_SIGNALS:
            np.testing.assert_array_equal(base[v][:, t < ONSET_H], event[v][:, t < ONSET_H])


def test_major_bleed_hb_falls_2_g_dl_hr_rises_then_blood_pressure_falls():
    t, base, event, eff = vitals_with_and_without("major_bleed")
    hb = eff["hb_g_dl"][0]
    assert hb[window(t, 10, 12)].max() <= -2.0 and hb[t < ONSET_H].max() == 0.0
    assert delta(t, base, event, "hr_bpm", 1, 3) > 8.0
    assert delta(t, base, event, "sbp_mmhg", 0, 2) > -3.0  # pressure still held while the pulse rises
    assert delta(t, base, event, "sbp_mmhg", 10, 20) < -25.0
    first_hr = np.argmax(eff["hr_bpm"][0] > 10.0)
    first_bp = np.argmax(eff["sbp_mmhg"][0] < -10.0)
    assert 0 < first_hr < first_bp


def test_sepsis_fever_tachycardia_tachypnoea_then_hypotension_and_falling_spo2():
    t, base, event, _ = vitals_with_and_without("sepsis")
    assert delta(t, base, event, "temp_c", 4, 8) > 1.0
    assert delta(t, base, event, "hr_bpm", 4, 8) > 15.0
    assert delta(t, base, event, "rr_min", 4, 8) > 4.0
    assert delta(t, base, event, "sbp_mmhg", 0, 6) > -5.0
    assert delta(t, base, event, "sbp_mmhg", 18, 30) < -25.0
    assert delta(t, base, event, "spo2_pct", 18, 30) < -3.0 and delta(t, base, event, "spo2_pct", 0, 6) > -1.0


def test_bradycardia_brings_the_pulse_below_50():
    t, base, event, _ = vitals_with_and_without("bradycardia", magnitude=1.2)
    assert delta(t, base, event, "hr_bpm", 2, 10) < -25.0
    assert np.median(event["hr_bpm"][:, window(t, 2, 10)]) < 50.0 < np.median(base["hr_bpm"][:, window(t, 2, 10)])


def test_hypotension_brings_systolic_below_90_with_tachycardia():
    t, base, event, _ = vitals_with_and_without("hypotension", magnitude=1.3)
    assert np.median(event["sbp_mmhg"][:, window(t, 2, 10)]) < 95.0
    assert delta(t, base, event, "sbp_mmhg", 2, 10) < -35.0 and delta(t, base, event, "hr_bpm", 2, 10) > 8.0


def inr_course(name: str | None, magnitude: float, days: float = 42, onset_day: float = 14, duration_h=240.0,
               seed: int = 0):
    cohort = Cohort.typical(["*1/*1"] * 4, ["G/A"] * 4)
    dt_h = 1.0
    n = int(days * 24 / dt_h)
    t = dt_h * np.arange(n)
    since = np.broadcast_to(np.where((t >= onset_day * 24) & (t < onset_day * 24 + duration_h),
                                     t - onset_day * 24, np.nan), (4, n))
    doses = daily_doses(4, n, dt_h, 6.0)
    clf = np.ones((4, n))
    if name is not None:
        mod = pkpd_modifiers(name, since, magnitude)
        clf = mod["cl_factor"]
        taken = np.random.default_rng(seed).random((4, n)) >= mod["missed_dose_share"]
        doses = np.where(taken, doses, 0.0)
    _, out = step_pkpd(PkpdState.initial(4), cohort, doses, np.zeros((4, n)), clf, dt_h)
    return t / 24, out.inr.mean(axis=0)


def test_over_anticoagulation_takes_a_therapeutic_inr_past_4():
    day, base = inr_course(None, 1.0)
    _, event = inr_course("over_anticoagulation", 1.0)
    assert 2.0 < base[day < 14][-1] < 3.0 and base.max() < 3.0
    assert event.max() >= 4.0 and np.all(event[day < 14] == base[day < 14])


def test_subtherapeutic_keeps_inr_below_2_for_72_hours():
    day, base = inr_course(None, 1.0)
    _, event = inr_course("subtherapeutic", 1.5)
    below = (event < 2.0) & (day >= 14)
    assert below.sum() >= 72 and np.all(base[day >= 10] >= 2.0)


def test_drug_interaction_raises_inr_over_weeks():
    day, base = inr_course(None, 1.0, duration_h=1e6)
    _, event = inr_course("drug_interaction", 1.0, duration_h=1e6)
    rise = event - base
    at = lambda d: rise[np.searchsorted(day, 14 + d)]  # noqa: E731
    assert at(2) < 0.1 < at(7) < at(14) < at(21) and at(21) > 0.4


def test_nonadherence_lowers_inr_days_later():
    day, base = inr_course(None, 1.0)
    _, event = inr_course("nonadherence", 1.0, duration_h=144.0)
    assert np.allclose(event[day < 14], base[day < 14])
    assert event[np.searchsorted(day, 15)] > base[np.searchsorted(day, 15)] - 0.3  # the INR lags the missed doses
    assert event[np.searchsorted(day, 20)] < base[np.searchsorted(day, 20)] - 0.5


def test_catalogue_covers_every_event_and_rejects_unknown_names():
    expected = {"over_anticoagulation", "major_bleed", "subtherapeutic", "bradycardia", "hypotension", "sepsis",
                "drug_interaction", "nonadherence", "sensor_drift", "sensor_stuck", "sensor_dropout"}
    assert set(ADVERSE_EVENTS) == expected
    assert all(e.root_cause and e.action and e.mechanism for e in ADVERSE_EVENTS.values())
    for name in PKPD_EVENTS:
        assert event_effects(name, np.array([1.0]), 1.0) == {}
    with pytest.raises(ValueError, match="unknown adverse event 'stroke'"):
        event_effects("stroke", np.array([1.0]), 1.0)


def test_major_bleeding_hazard_follows_iscoat_flat_in_range_7_91_at_inr_4_5_and_1_75_from_age_70() -> None:
    rr = major_bleed_relative_hazard(np.array([[1.0, 2.5, 4.5], [1.0, 2.5, 4.5]]), np.array([69.0, 70.0]))
    np.testing.assert_allclose(rr, [[1.0, 1.0, 7.91], [1.75, 1.75, 1.75 * 7.91]])
    assert float(major_bleed_relative_hazard(3.5, 50.0)) == pytest.approx(7.91**0.5)
