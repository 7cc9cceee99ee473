"""The outcome model (issue 26 §1): conformal coverage on synthetic data with known answers, one encoding for
training and serving, the twin's forecast as an input following the patient's own INRs, the shipped checkpoint
predicting for a simulated patient (and a checkpoint from before the twin inputs still loading), `biopilot train
outcome` end to end on a tiny configuration (coverage reported over re-splits, the shipped model compared)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from sklearn.metrics import roc_auc_score

from biopilot.cli import main
from outcomes.calibration import sigmoid
from outcomes.conformal import ClassConformal, RegressionConformal
from outcomes.contract import CLASS_HEADS, REGRESSION_HEADS, CheckpointError, PatientRecord, RiskPrediction
from outcomes.dataset import outcome_scenario, simulate_dataset
from outcomes.explain import baseline, explain_batch
from outcomes.features import (
    CATEGORICAL,
    SERIES,
    STATIC,
    STATIC_BASE,
    WINDOW_H,
    Encoded,
    encode,
    encode_records,
)
from outcomes.linear_head import MEMBERS, LinearHead, flatten, logistic_regression
from outcomes.model import OutcomeConfig, OutcomeNet, from_blob, load_model
from outcomes.patient_arrays import PatientArrays, epoch_hours
from outcomes.train import TrainConfig, coverage_by_group, patient_weights, train_outcome
from outcomes.twin_features import TwinInputs, twin_forecast
from sources.patient import warfarin
from sources.patient.cohort_sim import SimulatedCohort, simulate_cohort
from sources.patient.twin_fit import simulate_inr

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
                 "--choose-heads", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["heads"]) == set(CLASS_HEADS)
    for head in report["heads"].values():
        assert {"auroc", "best_baseline_auroc", "ece", "coverage", "min_group_coverage",
                "max_group_coverage", "coverage_test_split", "min_group_coverage_test_split"} <= set(head)
        # the coverage reported is the mean over re-splits, overall and per group, not one split's
        resplits = head["coverage_over_resplits"]
        if resplits:
            assert head["coverage"] == resplits["coverage_mean"] and resplits["repeats"] > 1
            assert head["min_group_coverage"] == min(resplits["group_coverage_mean"].values())
    # the model shipped before, scored on the same test patients: a one-epoch model on 8 patients does not beat it
    assert report["previous"]["version"] == load_model().version and not report["previous"]["ship_ok"]
    assert set(report["previous"]["heads"]) == set(CLASS_HEADS)
    model = load_model(tmp_path)
    assert model.version == report["version"] and model.metrics["patients"]["train"] >= 3
    # per risk, the predictor served was chosen on the validation patients: logistic regression only where it
    # ranked them better than the network (by more than the network's standard error: the margin is checked in
    # test_choose_heads_...)
    for h, head in report["heads"].items():
        scores = head["validation_auroc"]
        better = scores["logistic_regression"] is not None and scores["logistic_regression"] > scores["hybrid"]
        assert head["served_by"] == model.served_by[h]
        assert better or head["served_by"] == "hybrid"


def test_train_outcome_says_where_it_wrote_the_model(tmp_path, capsys) -> None:
    """The text report's figures alone did not say where the versioned model went."""
    code = main(["train", "outcome", "--patients", "5", "--shift-patients", "2", "--days", "9",
                 "--samples-per-patient", "1", "--epochs", "1", "--twin-samples", "0", "--out", str(tmp_path)])
    assert code == 0
    written = list(tmp_path.glob("*.pt"))
    assert len(written) == 1 and f"model written to {written[0]}" in capsys.readouterr().out


def test_train_outcome_refuses_a_run_too_short_to_label(capsys) -> None:
    assert main(["train", "outcome", "--days", "5", "--json"]) == 2
    assert "--days 5 must be >= 9" in capsys.readouterr().err


def test_the_twin_forecast_input_follows_the_patients_own_inr_readings() -> None:
    """Same covariates and doses, INRs that say warfarin-sensitive or -resistant: the twin's forecast is higher for
    the sensitive patient, and near each one's true INR 72 h ahead."""
    cov = warfarin.Covariates.typical(["*1/*1"], ["G/G"])
    dose_t_h, doses_mg, inr_t_h, now_h = 24.0 * np.arange(8), np.full(8, 7.5), np.array([72.0, 120.0, 168.0]), 180.0
    future_t_h = np.r_[dose_t_h, dose_t_h[-1] + 24.0 * np.arange(1, 9)]  # the last dose going on, as the twin assumes
    forecasts, truths = {}, {}
    for name, ec50 in (("sensitive", 0.5), ("resistant", 2.0)):
        truth = warfarin.typical_params(cov)
        truth["ec50_mg_l"] = truth["ec50_mg_l"] * ec50
        inr = simulate_inr(truth, dose_t_h, doses_mg, inr_t_h)[0]
        truths[name] = simulate_inr(truth, future_t_h, np.full(len(future_t_h), 7.5), np.array([now_h + 72.0]))[0, 0]
        forecasts[name] = twin_forecast(TwinInputs(cov, dose_t_h, doses_mg, inr_t_h, inr, now_h, np.ones_like))
    (s_now, s_3d, s_peak, s_p, s_bleed), (r_now, r_3d, r_peak, r_p, r_bleed) = forecasts["sensitive"], forecasts["resistant"]
    assert s_now > r_now and s_3d > r_3d + 0.5 and s_peak > r_peak and s_p >= r_p and s_bleed > r_bleed >= 1.0
    for name, (_, in_3d, _, _, _) in forecasts.items():
        assert abs(in_3d - truths[name]) < 0.25 * truths[name], (name, in_3d, truths[name])


@pytest.mark.parametrize(("written", "reads"), [({}, len(STATIC_BASE)), ({"twin_features": False}, len(STATIC_BASE)),
                                              ({"twin_features": True}, len(STATIC) - 1)])
def test_a_checkpoint_from_before_the_twin_inputs_or_the_bleeding_forecast_loads_and_predicts(
        cohort: SimulatedCohort, shipped, written: dict, reads: int) -> None:
    """Configs as written before `static_inputs`: none (before the twin inputs), then `twin_features`."""
    blob = shipped.to_blob()
    config = {k: v for k, v in blob["config"].items() if k != "static_inputs"} | written
    old_net = OutcomeNet(replace(OutcomeConfig(), static_inputs=reads))
    blob |= {"config": config, "state_dict": {k: v.half() if v.is_floating_point() else v
                                             for k, v in old_net.state_dict().items()},
             "linear_heads": {}}  # the shipped regressions read today's inputs
    old = from_blob(blob)
    assert old.net.static_width == reads and old.net.cfg.twin_features == (reads > len(STATIC_BASE))
    (answer,) = old.predict([record(cohort, 0, 8 * 24 + 2.0)])
    assert all(np.isfinite(h.estimate) for h in answer.heads.values())


def test_a_linear_head_is_the_fitted_logistic_regression_and_its_attributions_add_up_to_its_logit() -> None:
    rng = np.random.default_rng(3)
    n = 300
    x = Encoded(rng.normal(size=(n, WINDOW_H, len(SERIES))).astype(np.float32),
                rng.normal(size=(n, len(STATIC))).astype(np.float32),
                np.column_stack([rng.integers(0, len(v), n) for v in CATEGORICAL.values()]))
    y = (rng.random(n) < sigmoid(2.0 * x.static[:, 0] - x.series[:, -1, 0])).astype(float)
    head = LinearHead.fit(x, y)
    reference = logistic_regression().fit(flatten(x), y.astype(int)).predict_proba(flatten(x))[:, 1]
    np.testing.assert_allclose(sigmoid(head.logit(x)), reference, atol=1e-6)
    base = baseline(x)
    attr_s, attr_st, attr_e = head.attributions(x, base)
    total = attr_s.sum(axis=(1, 2)) + attr_st.sum(axis=1) + attr_e.sum(axis=1)
    np.testing.assert_allclose(total, head.logit(x) - head.logit(base), rtol=1e-5, atol=1e-6)  # float32 sums
    assert LinearHead.fit(x, np.zeros(n)) is None  # one class only: nothing to fit


def test_a_risk_served_by_logistic_regression_is_predicted_explained_and_saved_as_such(
        cohort: SimulatedCohort, shipped, tmp_path) -> None:
    rec = [record(cohort, 0, 8 * 24 + 2.0)]
    x = encode_records(rec)
    x = replace(x, static=x.static[:, :shipped.net.static_width])  # the inputs the shipped model reads
    width = flatten(x).shape[1]
    weights = np.zeros(width)
    weights[5 * len(SERIES) + STATIC.index("age_years")] = 0.5  # the regression reads age alone
    # a new version: the served predictor is part of what it names
    model = replace(from_blob(shipped.to_blob()), version="",
                    linear_heads=shipped.linear_heads | {"inr_ge4_7d": LinearHead(weights, 3.0)})
    assert model.version != shipped.version
    (answer,) = model.predict(rec)
    head = answer.heads["inr_ge4_7d"]
    age = (rec[0].patient["age_years"] - 68.0) / 11.0
    expected = float(sigmoid((3.0 + 0.5 * age) / model.temperatures["inr_ge4_7d"]))
    assert head.estimate == pytest.approx(expected, rel=1e-5) and head.lo == head.hi  # one fit: no spread
    assert answer.extra["served_by"] == shipped.served_by | {"inr_ge4_7d": "logistic_regression"}
    # explained by the regression's own reason, not the network's
    ((attributions, sentence),) = explain_batch(model.net, x, ["inr_ge4_7d"], [head.estimate],
                                                model.linear_heads)
    assert [(a.feature, a.share) for a in attributions] == [("age", 1.0)] and sentence.startswith("Age ")
    # the other risks as the shipped model gives them
    (before,) = shipped.predict(rec)
    assert all(answer.heads[h] == before.heads[h] for h in ("major_bleed_14d", "bradycardia_24h"))
    again = load_model(model.save(tmp_path))
    assert again.served_by == model.served_by and again.predict(rec)[0].heads == answer.heads


@pytest.mark.parametrize("static_inputs", [len(STATIC), len(STATIC) - 1])
def test_choose_heads_serves_logistic_regression_where_it_ranks_the_validation_patients_better(
        static_inputs: int) -> None:
    """A risk set by age alone: the regression ranks it better than a network trained for one epoch, and then
    serves it; a model reading fewer static inputs (an older checkpoint's, warm-started in retraining) too."""
    ds = simulate_dataset(24, seed=3, days=10, samples_per_patient=4)
    age = ds.inputs.static[:, STATIC.index("age_years")]
    ds = replace(ds, labels=ds.labels | {"inr_ge4_7d": (age > np.median(age)).astype(float)})
    train, validation = ds.split((0.5, 0.5), seed=0)
    config = TrainConfig(epochs=1, choose_heads=True, model=replace(OutcomeConfig(), static_inputs=static_inputs))
    model = train_outcome(train, validation, config=config)
    scores = model.validation_auroc["inr_ge4_7d"]
    assert scores["logistic_regression"] > scores["hybrid"] + 0.1
    assert model.served_by["inr_ge4_7d"] == "logistic_regression"
    # its version names the predictors it serves: the same network serving itself alone is another digest
    assert model.version.rsplit("-", 1)[1] != replace(model, version="", linear_heads={}).version.rsplit("-", 1)[1]
    served = model.predict_dataset(validation)["inr_ge4_7d"]
    # the bagged regression's ranking, served, with its members' spread
    assert roc_auc_score(validation.labels["inr_ge4_7d"], served["estimate"]) == pytest.approx(
        scores["logistic_regression"], abs=0.02)
    assert (served["hi"] - served["lo"] > 1e-3).mean() > 0.5
    head = model.linear_heads["inr_ge4_7d"]
    assert head.member_weights.shape[0] == MEMBERS
    np.testing.assert_allclose(head.member_weights.mean(axis=0), head.weights)
    again = from_blob(model.to_blob())
    np.testing.assert_array_equal(again.linear_heads["inr_ge4_7d"].member_weights, head.member_weights)


def test_coverage_counts_every_patient_once_whatever_their_sample_count() -> None:
    """The conformal is calibrated on one sample per patient: a patient with three covered samples and one with a
    single uncovered sample cover half the patients, not three quarters of the samples."""
    run_id, inside = np.array(["a", "a", "a", "b"]), np.array([True, True, True, False])
    assert coverage_by_group(inside, np.full(4, "g"), patient_weights(run_id)) == {"g": 0.5}


def test_a_checkpoint_reading_more_inputs_than_this_code_encodes_is_refused_clearly(shipped, tmp_path) -> None:
    blob = shipped.to_blob()
    blob["config"] = blob["config"] | {"static_inputs": len(STATIC) + 1}
    with pytest.raises(CheckpointError, match=f"reads {len(STATIC) + 1} static inputs.*newer version"):
        from_blob(blob)
