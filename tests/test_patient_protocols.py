"""Dosing protocols: the loading doses, the nomogram's steps, the genotype arm's IWPC start, the twin hook, and
the closed loop (protocol + PK/PD + INR checks) keeping patients in range better than a fixed dose."""

from __future__ import annotations

import numpy as np
import pytest

from sources.patient.cohort import Cohort, draw_cohort
from sources.patient.iwpc import iwpc_weekly_dose_mg
from sources.patient.pkpd import PkpdState, step_pkpd
from sources.patient.protocols import make_protocol, round_to_tablets

CHECK_DAYS = (3, 5, 7, 10, 14, 21, 28, 35)
NAN2 = np.full(2, np.nan)


def closed_loop(cohort: Cohort, protocol: str, days: int = 42, seed: int = 0, **kw) -> tuple[np.ndarray, np.ndarray]:
    """INR drawn at 08:00 on the check days (with the lab's error), known by the 18:00 dose; (true INR at 08:00
    each day, doses) per patient and day."""
    rng = np.random.default_rng(seed)
    n = len(cohort)
    state, last = PkpdState.initial(n), np.full(n, np.nan)
    p = make_protocol(protocol, cohort, **kw)
    inrs, doses = [], []
    zeros = lambda k: np.zeros((n, k))  # noqa: E731
    ones = lambda k: np.ones((n, k))  # noqa: E731
    for day in range(days):
        state, morning = step_pkpd(state, cohort, zeros(8), zeros(8), ones(8), 1.0)
        inrs.append(morning.inr[:, -1])
        if day in CHECK_DAYS:
            last = np.round(morning.inr[:, -1] * np.exp(rng.normal(0, np.sqrt(0.0325), n)), 1)
        state, _ = step_pkpd(state, cohort, zeros(10), zeros(10), ones(10), 1.0)
        dose = p.next_doses(day, last)
        doses.append(dose)
        evening = zeros(6)
        evening[:, 0] = dose
        state, _ = step_pkpd(state, cohort, evening, zeros(6), ones(6), 1.0)
    return np.array(inrs).T, np.array(doses).T


def test_standard_loading_is_10_5_5_up_to_75_and_5_5_5_above():
    cohort = Cohort.typical(["*1/*1"] * 2, ["G/G"] * 2)
    cohort = cohort.subset(np.arange(2))
    object.__setattr__(cohort, "age_years", np.array([60.0, 80.0]))
    p = make_protocol("standard", cohort)
    assert [p.next_doses(d, NAN2).tolist() for d in range(4)] == [[10, 5], [5, 5], [5, 5], [5, 5]]


@pytest.mark.parametrize(("inr", "today", "then"), [
    (1.2, 6.0, 6.0), (1.8, 5.5, 5.5), (2.5, 5.0, 5.0), (3.3, 4.5, 4.5), (3.8, 4.0, 4.0), (4.5, 0.0, 4.0),
    (6.0, 0.0, 0.0)])
def test_maintenance_nomogram_steps(inr, today, then):
    cohort = Cohort.typical(["*1/*1"] * 2, ["G/G"] * 2)
    p = make_protocol("standard", cohort)
    for d in range(8):
        p.next_doses(d, NAN2)
    assert p.next_doses(10, np.full(2, inr))[0] == today
    assert p.next_doses(11, np.full(2, inr))[0] == then  # the same INR is not acted on twice
    if inr >= 5:
        assert p.next_doses(12, np.full(2, inr))[0] == 4.0  # two doses held, then 20 % less


def test_early_high_inr_cuts_the_dose_and_low_inr_waits():
    cohort = Cohort.typical(["*1/*1"] * 3, ["G/G"] * 3)
    p = make_protocol("standard", cohort)
    for d in range(3):
        p.next_doses(d, np.full(3, np.nan))
    assert p.next_doses(3, np.array([1.3, 2.4, 4.2])).tolist() == [5.0, 4.0, 0.0]
    assert p.next_doses(4, np.array([1.3, 2.4, 4.2])).tolist() == [5.0, 4.0, 2.5]


def test_genotype_arm_starts_at_the_iwpc_dose_with_a_loading():
    c = draw_cohort(50, np.random.default_rng(2))
    p = make_protocol("genotype", c)
    expected = round_to_tablets(iwpc_weekly_dose_mg(c.age_years, c.height_cm, c.weight_kg, c.vkorc1_1639,
                                                    c.cyp2c9, c.ancestry, c.enzyme_inducer, c.amiodarone) / 7)
    nan = np.full(50, np.nan)
    assert np.all(p.next_doses(0, nan) >= expected)
    p.next_doses(1, nan)
    np.testing.assert_array_equal(p.next_doses(2, nan), expected)
    slow = make_protocol("genotype", Cohort.typical(["*1/*1", "*3/*3"], ["G/G", "A/A"]))
    start = slow.next_doses(2, NAN2)
    assert start[1] < 0.4 * start[0]


def test_twin_hook_uses_the_advisor_and_falls_back_on_genotype():
    cohort = Cohort.typical(["*1/*1"] * 2, ["G/G"] * 2)
    calls = []

    def advisor(day, last_inr, current):
        calls.append((day, last_inr.tolist(), current.tolist()))
        return np.array([3.3, 7.0])

    twin = make_protocol("twin", cohort, advisor=advisor)
    assert twin.next_doses(4, np.array([2.0, np.nan])).tolist() == [3.5, 7.0]
    assert calls[0][0] == 4 and calls[0][1][0] == 2.0
    plain = make_protocol("twin", cohort)
    assert plain.next_doses(2, NAN2).tolist() == make_protocol("genotype", cohort).next_doses(2, NAN2).tolist()
    with pytest.raises(ValueError, match="advice"):
        make_protocol("twin", cohort, advisor=lambda *a: np.array([1.0])).next_doses(0, NAN2)
    with pytest.raises(ValueError, match="unknown dosing protocol 'magic'"):
        make_protocol("magic", cohort)


def test_titration_keeps_more_patients_in_range_than_a_fixed_dose():
    cohort = draw_cohort(300, np.random.default_rng(5))
    share = {}
    for protocol in ("fixed", "standard", "genotype"):
        inr, doses = closed_loop(cohort, protocol)
        share[protocol] = (np.mean((inr[:, 14:] >= 2) & (inr[:, 14:] <= 3)), np.mean((inr >= 4).any(axis=1)),
                           doses)
    assert share["standard"][0] >= share["fixed"][0] + 0.1
    assert share["genotype"][0] >= share["fixed"][0] + 0.1 and share["genotype"][0] >= 0.5
    assert share["standard"][1] < share["fixed"][1] and share["genotype"][1] < share["fixed"][1]
    # the titrated doses follow genotype: *1/*1 G/G patients end on more than variant carriers
    final = share["standard"][2][:, -7:].mean(axis=1)
    wild = (cohort.cyp2c9 == "*1/*1") & (cohort.vkorc1_1639 == "G/G")
    sensitive = (cohort.cyp2c9 != "*1/*1") & (cohort.vkorc1_1639 == "A/A")
    assert final[wild].mean() > final[sensitive].mean() + 1.0
