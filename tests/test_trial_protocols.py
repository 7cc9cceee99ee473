"""What a trial takes from the literature, against hand-computed examples: EU-PACT's genotype-guided initiation
(Avery's loading doses, Lenzini's day-4 revision) and INR days, ISCOAT's bleeding rates per INR band, and the
bradycardia definitions of the metoprolol design."""

from __future__ import annotations

import numpy as np
import pytest

from sources.patient.cohort import Cohort
from sources.patient.protocols import make_protocol
from trials.design import DesignError, load_design
from trials.endpoints import hr_endpoints
from trials.eu_pact_dosing import EuPactGenotypeProtocol
from trials.simulate import HrCourse

NO_INR = np.full(1, np.nan)


def _typical() -> Cohort:
    return Cohort.typical(["*1/*3"], ["G/A"])


def test_the_eu_pact_arm_loads_by_avery_then_revises_by_lenzini_on_the_day_4_inr() -> None:
    cohort = _typical()
    age, height, weight = cohort.age_years[0], cohort.height_cm[0], cohort.weight_kg[0]
    # IWPC (EU-PACT's terms): sqrt(weekly) = 5.6044 - 0.2614 age/10 + 0.0087 height + 0.0128 weight - 0.8677 G/A
    # - 0.9357 *1/*3
    daily = (5.6044 - 0.2614 * (age // 10) + 0.0087 * height + 0.0128 * weight - 0.8677 - 0.9357) ** 2 / 7
    f = np.exp(-24 * 0.0132)  # *1/*3
    ld3 = daily / ((1 - f) * (1 + f + f * f))
    p = EuPactGenotypeProtocol(cohort)
    loading = [p.next_doses(d, NO_INR)[0] for d in range(3)]
    half_tablets = np.round(np.array([1.5 * ld3 - 0.5 * daily, ld3, 0.5 * ld3 + 0.5 * daily]) * 2) / 2
    assert loading == pytest.approx(half_tablets.tolist())
    assert loading[0] > loading[1] > loading[2] > 0
    inr_day_4 = 1.6
    bsa = np.sqrt(height * weight / 3600)
    weekly = np.exp(3.10894 - 0.00767 * age - 0.51611 * np.log(inr_day_4) - 0.23032 * 1 - 0.30770 * 1
                    + 0.24597 * bsa + 0.26729 * 2.5 + 0.01690 * loading[1] + 0.02018 * loading[0])
    assert p.next_doses(3, np.array([inr_day_4]))[0] == pytest.approx(round(weekly / 7 * 2) / 2)
    day_4 = p.next_doses(3, np.array([inr_day_4]))[0]
    assert p.next_doses(4, np.array([3.6]))[0] == day_4  # day 5: the same dose, whatever came since
    assert p.next_doses(5, np.array([3.6]))[0] == pytest.approx(day_4 / 2)  # then the nomogram: >= 1 above, -50 %
    # a lower day-4 INR asks for more
    again = EuPactGenotypeProtocol(cohort)
    [again.next_doses(d, NO_INR) for d in range(3)]
    assert again.next_doses(3, np.array([1.1]))[0] > day_4


def test_the_simulators_genotype_protocol_is_left_as_it_was() -> None:
    assert make_protocol("genotype", _typical()).name == "genotype"


def test_eu_pact_draws_inrs_on_day_4_and_on_the_published_visit_days() -> None:
    # therapy day 1 is day 0 here: days 4, 5, 8, 15, 22, 29, 57, 85
    for name in ("eu_pact", "eu_pact_twin"):
        design = load_design(name)
        assert design.lab_days == [3, 4, 7, 14, 21, 28, 56, 84]
        assert design.arms[1].protocol == "genotype_eu_pact"


def test_major_bleeding_follows_iscoat_per_inr_band() -> None:
    bleeding = load_design("eu_pact").endpoints.bleeding
    per_100_years = bleeding.hazard_per_day(np.array([1.5, 2.5, 4.49, 4.5, 8.0])) * 36500
    # ISCOAT: 28 major or fatal bleeds in 2,011 patient-years; 7.91 times that at INR >= 4.5
    assert per_100_years[:3] == pytest.approx([28 / 20.11] * 3, rel=0.01)
    assert per_100_years[3:] == pytest.approx([28 / 20.11 * 7.91] * 2, rel=0.01)
    with pytest.raises(DesignError, match="rate_per_year needs 3 entries"):
        load_design("eu_pact").with_overrides(endpoints={"bleeding": {"inr_band_edges": [3, 4.5],
                                                                      "rate_per_year": [0.01, 0.1]}})


def test_bradycardia_is_below_60_at_the_final_visit_and_severe_below_50() -> None:
    design = load_design("metoprolol_cyp2d6")
    days = np.arange(1, 6, dtype=float)
    hr = np.array([[70, 62, 58, 61, 59],  # below 60 at the last visit, never below 50
                   [70, 49, 55, 60, 62],  # one reading below 50 on day 2, 62 at the end
                   [70, 65, 48, np.nan, np.nan]])  # lost after day 3: its last reading is its final visit
    course = HrCourse(np.zeros(3, int), days, np.full(3, 75.0), hr, 24.0 * np.arange(5) + 18, np.full((3, 5), 100.0),
                      np.ones((3, 5), bool), np.array([np.nan, np.nan, 3.5]))
    ep = hr_endpoints(design, course)
    assert ep.bradycardia_final.tolist() == [True, False, True]
    assert ep.bradycardia_event.tolist() == [False, True, True]
    assert ep.days_to_bradycardia.tolist() == [5.0, 2.0, 3.0]
