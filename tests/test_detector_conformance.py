"""One conformance suite over every registered detector (docs/DESIGN.md, "Detector interface")."""

from __future__ import annotations

import pickle
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pytest

import detectors  # noqa: F401 - registers every detector
from core.events import VITAL_SIGNALS
from detectors.base import DETECTOR_SIGNALS, REGISTRY, make_detector, plant_of
from detectors.features import features
from sources.fleet import Fleet
from sources.patient.cohort_sim import PatientCohortSim
from sources.patient.scenarios import load_patient_scenario
from sources.scenarios import load_scenario

SMALL = {"pca": {"reference_ticks": 300}, "iforest": {"reference_ticks": 300, "n_estimators": 30},
         "dpca": {"reference_ticks": 300}, "cva": {"reference_ticks": 300},
         "lagged_ae": {"reference_ticks": 300, "epochs": 40}, "variance": {"reference_ticks": 300}}
N_TICKS = 900


@lru_cache(maxsize=2)
def _normal(plant: str) -> tuple[np.ndarray, np.ndarray]:
    if plant == "patient":  # a patient's vitals at 5-min readings, from their second day
        vitals = PatientCohortSim(load_patient_scenario("warfarin_standard"), 1, seed=9).step(288 + N_TICKS).vitals
        X = np.column_stack([vitals[name].to_numpy(zero_copy_only=False) for name in VITAL_SIGNALS])[288:]
        return vitals["ts"].cast(pa.int64()).to_numpy()[288:], X
    ticks = pa.Table.from_batches([Fleet(load_scenario("normal"), 1, seed=9).step(3 * 1440).ticks])
    X = features(ticks, np.array([np.nan, np.nan]))[1440:1440 + N_TICKS]  # day 1-2: a growing culture
    return ticks["ts"].cast(pa.int64()).to_numpy()[1440:1440 + N_TICKS], X


# the detector whose features the tests below use: each detector gets its plant's signals
_CURRENT: list[str] = ["zscore"]


def normal_features() -> tuple[np.ndarray, np.ndarray]:
    return _normal(plant_of(_CURRENT[0]))


def signals(name: str) -> tuple[str, ...]:
    return VITAL_SIGNALS if plant_of(name) == "patient" else DETECTOR_SIGNALS


def detector(name: str):
    return make_detector(name, **SMALL.get(name, {}))


def score(name: str, X: np.ndarray, chunks: int = 1) -> np.ndarray:
    det = detector(name)
    state = det.init_state(signals(name))
    ts = np.arange(len(X))
    out = []
    for part in np.array_split(np.arange(len(X)), chunks):
        state, s = det.score_learn(state, ts[part], X[part])
        out.append(s)
    return np.concatenate(out)


@pytest.fixture(params=sorted(REGISTRY))
def name(request) -> str:
    _CURRENT[0] = request.param
    return request.param


def test_scores_are_one_finite_float_per_tick(name):
    _, X = normal_features()
    s = score(name, X)
    assert s.shape == (len(X),) and s.dtype == np.float64
    assert np.isfinite(s).all()


def test_missing_readings_neither_crash_nor_score_as_anomalies(name):
    _, X = normal_features()
    holey = X.copy()
    rng = np.random.default_rng(0)
    holey[rng.random(X.shape) < 0.02] = np.nan  # scattered single missing readings (a long run is a dropout)
    clean, gaps = score(name, X), score(name, holey)
    assert np.isfinite(gaps).all()
    floor = 1.0 if name in ("dropout", "fusion") else 0.0  # `dropout` counts missing readings by design
    assert gaps.max() <= max(2.0 * clean.max(), floor + 2.0, 1e-9)


def test_deterministic(name):
    _, X = normal_features()
    np.testing.assert_array_equal(score(name, X), score(name, X))


def test_state_pickles_mid_stream_and_resumes_identically(name):
    _, X = normal_features()
    det = detector(name)
    state = det.init_state(signals(name))
    ts = np.arange(len(X))
    state, first = det.score_learn(state, ts[:500], X[:500])
    state = pickle.loads(pickle.dumps(state))
    state, second = det.score_learn(state, ts[500:], X[500:])
    np.testing.assert_allclose(np.concatenate([first, second]), score(name, X), rtol=1e-9, atol=1e-12)


def test_batching_does_not_change_scores(name):
    _, X = normal_features()
    np.testing.assert_allclose(score(name, X, chunks=7), score(name, X), rtol=1e-9, atol=1e-12)


def test_no_look_ahead_changing_the_future_leaves_the_past(name):
    _, X = normal_features()
    future = X.copy()
    future[600:] = future[600:] * 3.0 + 50.0
    np.testing.assert_allclose(score(name, future)[:600], score(name, X)[:600], rtol=1e-9, atol=1e-12)


def test_a_gross_fault_scores_higher_than_normal_operation(name):
    _, X = normal_features()
    faulty = X.copy()
    do = DETECTOR_SIGNALS.index("do_pct") if plant_of(name) == "bioreactor" else VITAL_SIGNALS.index("hr_bpm")
    if name == "dropout":
        faulty[700:760, do] = np.nan  # what this detector is for: the DO reading stops arriving
    elif name in ("flatline", "sensor_health"):
        faulty[700:760, do] = faulty[699, do]  # the DO transmitter (the pulse reading) freezes
    else:
        faulty[700:760, do] = 2.0  # DO crash (a pulse of 2: asystole, or a lead off)
    s, base = score(name, faulty), score(name, X)
    assert s[700:760].max() > np.quantile(base[300:700], 0.99)
