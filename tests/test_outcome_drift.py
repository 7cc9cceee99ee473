"""Drift and retraining (issue 26 §3): the input drift monitor fires on a population shift and not on a
stationary stream, its incident reads as the agents write it, the outcome monitor fires when outcomes stop
following the predictions, and a challenger that does not beat the champion by the margin is not promoted."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from agents.phrasing import explain_drift
from outcomes import registry
from outcomes.dataset import simulate_dataset
from outcomes.drift import MONITORED, FeatureDrift, drift_incident, input_features
from outcomes.features import Encoded, encode
from outcomes.linear_head import LinearHead, flatten
from outcomes.patient_arrays import PatientArrays
from outcomes.performance_drift import PerformanceDrift
from outcomes.retrain import PromotionRule, retrain
from outcomes.train import TrainConfig, train_outcome
from sinks import audit
from sources.patient.cohort import draw_cohort

SHIFTED = {"white": 0.25, "black": 0.05, "asian": 0.6, "other": 0.1}


def _admissions(n: int, seed: int, **shift) -> list[dict]:
    """`n` patients drawn from the cohort model, with what the drift monitor reads of them (`MONITORED`; the
    warfarin course's inputs are left out: these patients have none yet)."""
    cohort = draw_cohort(n, np.random.default_rng(seed), **shift)
    rows = cohort.patients_table([f"r{seed}-{i}" for i in range(n)]).to_pylist()
    return [{k: row[k] for k in ("cyp2c9", "vkorc1_1639", "cyp2d6", "ancestry", "amiodarone", "enzyme_inducer",
                                 "age_years", "weight_kg")} | {"male": row["sex"] == "M"} for row in rows]


@pytest.fixture(scope="module")
def stationary() -> list[dict]:
    return _admissions(1500, seed=1)


def test_input_features_read_back_what_the_model_encodes():
    rows = draw_cohort(20, np.random.default_rng(0), amiodarone_share=0.5).patients_table(
        [f"r{i}" for i in range(20)]).to_pylist()
    features = input_features(Encoded.concat([encode(PatientArrays.empty(), r, np.array([1000.0])) for r in rows]))
    assert set(features[0]) == set(MONITORED)
    for row, x in zip(rows, features, strict=True):
        assert (x["vkorc1_1639"], x["cyp2c9"], x["ancestry"]) == (row["vkorc1_1639"], row["cyp2c9"], row["ancestry"])
        assert x["amiodarone"] is row["amiodarone"] and x["male"] == (row["sex"] == "M")


def test_input_drift_is_found_within_a_hundred_patients_and_explained(stationary):
    monitor = FeatureDrift(MONITORED)
    shifted = _admissions(400, seed=2, ancestry=SHIFTED, amiodarone_share=0.3)
    fired = None
    for k, x in enumerate(stationary + shifted):
        monitor.update(x)
        if monitor.drift_detected:
            fired = k
            break
    assert fired is not None and len(stationary) <= fired < len(stationary) + 100
    drifted = {(s.feature, s.level) for s in monitor.shifts}
    assert drifted & {("amiodarone", "True"), ("ancestry", "asian"), ("vkorc1_1639", "A/A")}
    row, findings = drift_incident("m1", datetime(2026, 1, 3, tzinfo=UTC), shifts=monitor.shifts)
    assert row["reactor_id"] == "outcome-model" and row["signals"]
    text = explain_drift(findings)[0]
    assert "shifted:" in text and "→" in text and " %" in text


def test_input_drift_stays_quiet_on_a_stationary_population(stationary):
    monitor = FeatureDrift(MONITORED)
    alarms = 0
    for x in stationary + _admissions(1500, seed=3):  # 3,000 patients: 300 h of admissions at 10 an hour
        monitor.update(x)
        alarms += monitor.drift_detected
    assert alarms == 0


def test_outcome_drift_fires_when_outcomes_stop_following_predictions():
    rng = np.random.default_rng(4)
    p = rng.beta(1.0, 3.0, 2400)
    y_follows = (rng.random(2400) < p).astype(int)
    y_ignores = (rng.random(2400) < 0.25).astype(int)
    steady, shifted = PerformanceDrift(window=400), PerformanceDrift(window=400)
    steady_flags, shifted_flags = [], []
    for k in range(2400):
        steady.update(p[k], y_follows[k])
        shifted.update(p[k], y_follows[k] if k < 1200 else y_ignores[k])
        steady_flags.append(steady.drift_detected)
        shifted_flags.append(shifted.drift_detected)
    assert not any(steady_flags) and not any(shifted_flags[:1200])
    assert 1200 <= shifted_flags.index(True) < 1600
    m = shifted
    _, findings = drift_incident("m1", datetime(2026, 1, 9, tzinfo=UTC), performance={
        "head": "inr_ge4_7d", "reference_auroc": m.reference_auroc, "auroc": m.auroc, "ece": m.ece,
        "window": m.window, "mean_probability": m.mean_probability, "observed_rate": m.observed_rate})
    assert m.auroc < m.reference_auroc - 0.05
    assert "drifted over the last 400 resolved: AUROC 0." in explain_drift(findings)[0]


def test_a_challenger_short_of_the_margin_is_not_promoted(tmp_path):
    lake = str(tmp_path / "lake")
    ds = simulate_dataset(8, seed=5, days=12, samples_per_patient=3)
    before, recent, window = ds.split((0.4, 0.3, 0.3), seed=0)
    champion = train_outcome(*before.split((0.5, 0.5), seed=0), config=TrainConfig(epochs=1))
    registry.register(lake, champion, data_snapshot="test", metrics={}, actor="test", alias=None)
    registry.promote(lake, champion.version, actor="test")
    # no AUROC gain reaches 1.0: whatever the challenger scores in shadow, it stays the challenger
    result = retrain(lake, recent, window, trigger="drift", data_snapshot="test", rule=PromotionRule(margin=1.0),
                     config=TrainConfig(epochs=1))
    assert not result.promoted and result.champion_version == champion.version
    assert registry.champion(lake).version == champion.version
    assert registry.challenger(lake).version == result.challenger_version != champion.version
    actions = [r["action"] for r in audit.tail(lake, 10)]
    assert actions == ["model_register", "model_promote", "model_register"]
    worse = PromotionRule(margin=0.0).decide({"heads": {"inr_ge4_7d": {"auroc": 0.8}}},
                                             {"heads": {"inr_ge4_7d": {"auroc": 0.79}}})
    assert not worse.promote and "kept as challenger" in worse.reason


def test_the_challenger_of_a_champion_serving_regression_chooses_its_predictors_too(tmp_path):
    lake = str(tmp_path / "lake")
    ds = simulate_dataset(8, seed=5, days=12, samples_per_patient=3)
    before, recent, window = ds.split((0.4, 0.3, 0.3), seed=0)
    champion = train_outcome(*before.split((0.5, 0.5), seed=0), config=TrainConfig(epochs=1))
    assert not champion.validation_auroc  # trained without the choice
    regression = LinearHead(np.zeros(flatten(before.inputs).shape[1]), 0.0)
    champion = replace(champion, version="", linear_heads={"inr_ge4_7d": regression})
    registry.register(lake, champion, data_snapshot="test", metrics={}, actor="test", alias=None)
    registry.promote(lake, champion.version, actor="test")
    result = retrain(lake, recent, window, trigger="drift", data_snapshot="test", rule=PromotionRule(margin=1.0),
                     config=TrainConfig(epochs=1))
    challenger = registry.load(lake, result.challenger_version)
    assert set(challenger.validation_auroc) == {"inr_ge4_7d", "major_bleed_14d", "bradycardia_24h"}
