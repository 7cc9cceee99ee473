"""`biopilot bench twin`'s figures on a small drawn cohort: keys, the twin ahead of the population model, and the
twin as good as the exact posterior median (the best any forecast from those readings can do)."""

from __future__ import annotations

import pytest

from biopilot.bench.twin import posterior_median_bound, run

PATIENTS, SEED = 40, 3


@pytest.fixture(scope="module")
def result() -> dict[str, float]:
    return run(patients=PATIENTS, seed=SEED)


def test_twin_bench_reports_the_issue_keys_and_the_fit_beats_the_population(result):
    for key in ("fit_mae_inr_day14", "population_mae_inr_day14", "in_range_day28_twin", "in_range_day28_iwpc"):
        assert key in result
    assert result["fit_mae_inr_day14"] < 0.85 * result["population_mae_inr_day14"]
    assert 0.0 <= result["in_range_day28_iwpc"] <= 1.0
    assert result["in_range_day28_twin"] > 0.4


def test_the_fitted_twin_forecasts_about_as_well_as_the_exact_posterior_median(result):
    bound = posterior_median_bound(patients=PATIENTS, seed=SEED, n_draws=1000)
    assert bound["population_mae_inr_day14"] == pytest.approx(result["population_mae_inr_day14"])  # same patients
    assert bound["posterior_median_to_population_mae"] < 0.85
    # the Laplace twin loses little to the exact posterior; on 40 patients either may come out ahead
    assert abs(result["fit_to_population_mae"] - bound["posterior_median_to_population_mae"]) < 0.08
