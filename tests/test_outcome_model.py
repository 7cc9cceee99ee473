"""The outcome model (issue 26 §1): conformal coverage on synthetic data with known answers, one encoding for
training and serving, the shipped checkpoint predicting for a simulated patient, `biopilot train outcome` end
to end on a tiny configuration."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from biopilot.cli import main
from outcomes.conformal import ClassConformal, RegressionConformal
from outcomes.contract import CLASS_HEADS, REGRESSION_HEADS, PatientRecord, RiskPrediction
from outcomes.dataset import outcome_scenario
from outcomes.features import PatientArrays, encode, encode_records, epoch_hours
from outcomes.model import load_model
from sources.patient.cohort_sim import SimulatedCohort, simulate_cohort

BAND = (0.88, 0.92)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort() -> SimulatedCohort:
    """Three patients on warfarin and metoprolol, 9 days, vitals every 5 min (the serving rate)."""
    scenario = outcome_scenario(9, None, 0.0, True).with_overrides(vitals_every_min=5)
    return simulate_cohort(scenario, 3, seed=5)


def record(cohort: SimulatedCohort, k: int, hours: float, drugs: tuple[str, ...] | None = None) -> PatientRecord:
    """Patient k's data as known `hours` after the run began (labs by their report time)."""
    row = cohort.sim.patients_table().to_pylist()[k]
    as_of = cohort.sim.started + timedelta(hours=hours)
    vitals, labs, doses = cohort.of_run(row["run_id"])
    doses = doses.filter(pc.less_equal(doses["ts"], as_of))
    if drugs is not None:
        doses = doses.filter(pc.is_in(doses["drug"], pc.cast(list(drugs), "string")))
    return PatientRecord(row, vitals.filter(pc.less_equal(vitals["ts"], as_of)),
                         labs.filter(pc.less_equal(labs["reported_ts"], as_of)), doses, as_of)


def test_classification_sets_cover_at_the_nominal_rate_in_every_group() -> None:
    rng = np.random.default_rng(1)
    n = 8000
    groups = np.where(rng.random(n) < 0.5, "rare", "common")
    p = np.where(groups == "rare", rng.beta(1, 12, n), rng.beta(2, 3, n))  # calibrated, known probabilities
    y = (rng.random(n) < p).astype(float)
    conformal = ClassConformal.fit(y[:4000], p[:4000], groups[:4000])
    sets = conformal.sets(p[4000:], groups[4000:])
    inside = np.where(y[4000:] == 1, sets[:, 1], sets[:, 0])
    for g in ("rare", "common"):
        assert BAND[0] <= inside[groups[4000:] == g].mean() <= BAND[1], g


def test_regression_intervals_cover_per_group_and_widen_where_noisier() -> None:
    rng = np.random.default_rng(2)
    n = 8000
    groups = np.where(rng.random(n) < 0.3, "noisy", "quiet")
    y_hat = rng.normal(2.5, 0.5, n)
    y = y_hat + rng.normal(0.0, 1.0, n) * np.where(groups == "noisy", 0.9, 0.3)
    conformal = RegressionConformal.fit(y[:4000], y_hat[:4000], np.ones(4000), groups[:4000])
    lo, hi = conformal.interval(y_hat[4000:], np.ones(4000), groups[4000:])
    g = groups[4000:]
    inside = (y[4000:] >= lo) & (y[4000:] <= hi)
    for name in ("noisy", "quiet"):
        assert BAND[0] <= inside[g == name].mean() <= BAND[1], name
    width = hi - lo
    # the Mondrian interval follows each group's noise: 2 x 1.645 x SD
    assert width[g == "noisy"].mean() == pytest.approx(2 * 1.645 * 0.9, rel=0.1)
    assert width[g == "quiet"].mean() == pytest.approx(2 * 1.645 * 0.3, rel=0.1)
    # a group the calibration never saw gets the pooled interval, not an error
    lo_new, hi_new = conformal.interval(np.array([2.5]), np.ones(1), np.array(["unseen"]))
    assert 2 * 1.645 * 0.3 < float(hi_new[0] - lo_new[0]) < 2 * 1.645 * 0.9


def test_calibrating_on_one_sample_per_patient_covers_a_small_group_of_correlated_patients() -> None:
    """12 samples per patient sharing a patient effect: calibrated on all of them, a group of 12 patients
    calibrates on those 10 patients' effects and under-covers a new patient; one sample per patient covers."""
    rng = np.random.default_rng(3)
    per_patient, patients = 12, 12
    units = np.repeat(np.arange(patients), per_patient)
    bins = np.full(len(units), "few", dtype=object)
    mean_coverage = {}
    for name, by_patient in (("all samples", None), ("one per patient", units)):
        covered = []
        for _ in range(300):
            y_cal = np.repeat(rng.normal(0.0, 1.0, patients), per_patient) + rng.normal(0.0, 0.1, len(units))
            conformal = RegressionConformal.fit(y_cal, np.zeros(len(units)), np.ones(len(units)), bins, by_patient)
            y_new = rng.normal(0.0, 1.0) + rng.normal(0.0, 0.1, per_patient)  # a new patient
            lo, hi = conformal.interval(np.zeros(per_patient), np.ones(per_patient), bins[:per_patient])
            covered.append(((y_new >= lo) & (y_new <= hi)).mean())
        mean_coverage[name] = float(np.mean(covered))
    assert mean_coverage["one per patient"] >= 0.88
    assert mean_coverage["all samples"] < 0.87


def test_serving_encodes_a_record_as_training_encodes_the_same_moment(cohort: SimulatedCohort) -> None:
    for k, hours in ((0, 100.5), (1, 7 * 24 + 13.0), (2, 200.0)):
        rec = record(cohort, k, hours)
        served = encode_records([rec])
        # training: the patient's whole run (labs reported later, doses after as_of included), cut by time
        vitals, labs, doses = cohort.of_run(rec.patient["run_id"])
        trained = encode(PatientArrays.from_tables(vitals, labs, doses), rec.patient,
                         np.array([epoch_hours(rec.as_of)]))
        np.testing.assert_array_equal(served.series, trained.series)
        np.testing.assert_array_equal(served.static, trained.static)
        np.testing.assert_array_equal(served.categorical, trained.categorical)
        assert np.abs(served.series[0, -24:, :6]).sum() > 0  # the last day's vitals are there


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_shipped_checkpoint_predicts_a_risk_for_a_simulated_patient(cohort: SimulatedCohort, shipped) -> None:
    recs = [record(cohort, 0, 8 * 24 + 2.0), record(cohort, 1, 8 * 24 + 2.0, drugs=("warfarin",))]
    out = shipped.predict(recs)
    assert [type(r) for r in out] == [RiskPrediction, RiskPrediction]
    first, warfarin_only = out
    assert first.model_version == shipped.version and first.patient_id == recs[0].patient["patient_id"]
    assert set(first.heads) == set(CLASS_HEADS) | set(REGRESSION_HEADS)
    for h in CLASS_HEADS:
        head = first.heads[h]
        assert 0.0 <= head.lo <= head.estimate <= head.hi <= 1.0 or head.lo <= head.estimate <= head.hi
        assert head.prediction_set is not None and set(head.prediction_set) <= {0, 1}
        assert head.alert == (head.estimate >= head.threshold)
    for h in REGRESSION_HEADS:
        assert first.heads[h].lo <= first.heads[h].estimate <= first.heads[h].hi
    # the watermark: the newest row in the record, never after as_of
    assert first.data_watermark <= recs[0].as_of
    assert first.data_watermark >= recs[0].as_of - timedelta(minutes=5)
    assert first.attributions and abs(sum(a.share for a in first.attributions) - 1.0) < 0.01
    assert "% of this risk of" in first.explanation
    # no metoprolol in the record: no bradycardia alert, said so
    assert warfarin_only.extra["not_applicable"] == ["bradycardia_24h"]
    assert not warfarin_only.heads["bradycardia_24h"].alert
    assert warfarin_only.extra["explained_head"] != "bradycardia_24h"


def test_reference_genotypes_are_never_a_reason_and_variants_raise_the_inr_risk(cohort: SimulatedCohort,
                                                                                  shipped) -> None:
    rec = record(cohort, 0, 8 * 24 + 2.0, drugs=("warfarin",))
    reference = replace(rec, patient={**rec.patient, "cyp2c9": "*1/*1", "vkorc1_1639": "G/G", "cyp2d6": "NM",
                                      "ancestry": "white"})
    sensitive = replace(rec, patient={**rec.patient, "cyp2c9": "*3/*3", "vkorc1_1639": "A/A"})
    ref, sens = shipped.predict([reference, sensitive])
    assert not {"cyp2c9", "vkorc1", "cyp2d6", "ancestry"} & {a.feature for a in ref.attributions}
    assert {"cyp2c9", "vkorc1"} <= {a.feature for a in sens.attributions}
    # the same history, a warfarin-sensitive genotype: more INR >= 4 ahead (the model learned the pharmacology)
    assert sens.heads["inr_ge4_7d"].estimate > ref.heads["inr_ge4_7d"].estimate


def test_a_saved_model_loads_back_with_the_same_answers(cohort: SimulatedCohort, shipped, tmp_path) -> None:
    path = shipped.save(tmp_path)
    again = load_model(tmp_path)
    assert path.name == f"{shipped.version}.pt" and again.version == shipped.version
    rec = [record(cohort, 2, 150.0)]
    a, b = shipped.predict(rec)[0], again.predict(rec)[0]
    assert {h: v.estimate for h, v in a.heads.items()} == {h: v.estimate for h, v in b.heads.items()}


def test_train_outcome_end_to_end_on_a_tiny_cohort(tmp_path, capsys) -> None:
    code = main(["train", "outcome", "--patients", "8", "--shift-patients", "2", "--days", "10",
                 "--samples-per-patient", "2", "--epochs", "1", "--twin-samples", "1", "--out", str(tmp_path),
                 "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["heads"]) == set(CLASS_HEADS)
    for head in report["heads"].values():
        assert {"auroc", "best_baseline_auroc", "ece", "coverage", "min_group_coverage",
                "max_group_coverage"} <= set(head)
    model = load_model(tmp_path)
    assert model.version == report["version"] and model.metrics["patients"]["train"] >= 3


def test_train_outcome_refuses_a_run_too_short_to_label(capsys) -> None:
    assert main(["train", "outcome", "--days", "5", "--json"]) == 2
    assert "--days 5 must be >= 9" in capsys.readouterr().err
