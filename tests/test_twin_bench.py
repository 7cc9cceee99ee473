"""`biopilot bench twin`'s figures on a small drawn cohort: keys, and the twin ahead of the population model."""

from __future__ import annotations

from biopilot.bench.twin import run


def test_twin_bench_reports_the_issue_keys_and_the_fit_beats_the_population():
    result = run(patients=40, seed=3)
    for key in ("fit_mae_inr_day14", "population_mae_inr_day14", "in_range_day28_twin", "in_range_day28_iwpc"):
        assert key in result
    assert result["fit_mae_inr_day14"] < 0.85 * result["population_mae_inr_day14"]
    assert 0.0 <= result["in_range_day28_iwpc"] <= 1.0
    assert result["in_range_day28_twin"] > 0.4
