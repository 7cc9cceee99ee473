"""Retraining from live traffic (`outcomes.live_learning`, driven by `agents.risk_worker`): a scored patient is
sampled once a day and labelled from the measured data once their outcomes show; with a drift open and enough
patients known, a challenger refits only the risks the live data labels (the rest stays the champion's, bit for
bit), is registered, and the patients sampled after it decide its promotion in shadow; a population the
champion already ranks as well as a refit would gives no challenger at all; the worker, started on a real
nats-server and redis-server, samples the patients it scores (none when the setting turns the loop off)."""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from agents.risk_worker import RiskWorker
from outcomes import registry
from outcomes.contract import CLASS_HEADS, PatientRecord
from outcomes.dataset import OutcomeDataset, simulate_dataset
from outcomes.drift import DriftLifecycle
from outcomes.live_learning import HOUR_US, LIVE_HEADS, LiveLearning, LiveSample, live_outcome
from outcomes.model import load_model
from outcomes.serving import Fixed, RiskService
from sinks import delta
from sources.patient.cohort_sim import PatientCohortSim
from sources.patient.scenarios import load_patient_scenario
from tests.test_risk_serving import write_patients


@pytest.fixture(scope="module")
def champion():
    return load_model()


@pytest.fixture(scope="module")
def cohort() -> OutcomeDataset:
    return simulate_dataset(160, seed=31, days=20, samples_per_patient=4)


def _samples(ds: OutcomeDataset, genotype_outcome: bool = False) -> list[LiveSample]:
    """The dataset's samples as the worker keeps them, outcomes known, in time order. `genotype_outcome`: the
    INR >= 4 outcome is VKORC1 A/A (outcomes that follow an input the champion does not rank them by, as a
    population whose outcomes changed would: a regression on the inputs learns it at once)."""
    out = []
    for i in np.argsort(ds.as_of_h, kind="stable"):
        patient = ds.histories[ds.run_id[i]][0]
        labels = {h: float(ds.labels[h][i]) for h in LIVE_HEADS}
        if genotype_outcome:
            labels["inr_ge4_7d"] = float(patient["vkorc1_1639"] == "A/A")
        sample = LiveSample(str(ds.patient_id[i]), str(ds.run_id[i]), int(ds.as_of_h[i] * HOUR_US),
                            ds.inputs.take(np.array([i])), patient,
                            frozenset(h for h in LIVE_HEADS if h != "bradycardia_24h" or ds.metoprolol_group[i]),
                            labels)
        sample.waiting.clear()
        out.append(sample)
    return out


def _record(sim_chunk, patient: dict, hours: float) -> PatientRecord:
    """The patient's record after `hours` of data, labs as reported by then."""
    vitals = pa.Table.from_batches([sim_chunk.vitals])
    end = pc.min(vitals["ts"]).as_py() + timedelta(hours=hours)
    vitals = vitals.filter(pc.less_equal(vitals["ts"], pa.scalar(end, vitals["ts"].type)))
    labs = sim_chunk.labs.filter(pc.less_equal(sim_chunk.labs["reported_ts"], pa.scalar(end, vitals["ts"].type)))
    doses = sim_chunk.doses.filter(pc.less_equal(sim_chunk.doses["ts"], pa.scalar(end, vitals["ts"].type)))
    return PatientRecord(patient, vitals, labs, doses, pc.max(vitals["ts"]).as_py())


def test_a_patient_is_sampled_once_a_day_and_labelled_from_the_measured_data_when_it_shows():
    sim = PatientCohortSim(load_patient_scenario("amiodarone_then_bleed"), 1, seed=4)
    chunk = sim.step(11 * 288)  # 11 days of vitals every 5 min
    patient = sim.patients_table().to_pylist()[0]
    learning = LiveLearning("unused")
    day2 = _record(chunk, patient, 48)
    learning.observe({"p000000": day2})
    learning.observe({"p000000": _record(chunk, patient, 60)})  # 12 h later: not a second sample
    [sample] = learning.samples
    assert sample.waiting == {h for h in LIVE_HEADS if h != "bradycardia_24h" or "metoprolol" in
                              set(day2.doses["drug"].to_pylist())}
    assert learning.known() == []
    full = _record(chunk, patient, 260)  # day 11: past the 7 days and the labs' wait
    learning.resolve("p000000", full)
    assert not sample.waiting and learning.known() == [sample]
    at_us = sample.at_us
    outcome = live_outcome("inr_ge4_7d", full, at_us)
    assert sample.labels["inr_ge4_7d"] == (outcome if outcome >= 0 else pytest.approx(math.nan, nan_ok=True))
    learning.forget("p000000")  # known samples stay for training after the run ends
    assert learning.samples == [sample]


def test_drift_and_enough_known_patients_train_a_challenger_that_refits_only_the_labelled_risks_and_its_shadow_promotes_it(
        champion, cohort, tmp_path):
    lake = str(tmp_path / "lake")
    samples = _samples(cohort, genotype_outcome=True)
    half = len(samples) // 2
    learning = LiveLearning(lake, min_patients=60, samples=samples[:half], started_us=samples[0].at_us)
    now_us = samples[half - 1].at_us
    assert learning.due(now_us, drift=False) is None  # a week has not passed since the first sample
    news = learning.step(champion, now_us, drift=True)
    assert "challenger" in news and "registered" in news, news
    challenger = learning.challenger
    assert "inr_ge4_7d" in challenger.metrics["live_refit"] and challenger.version != champion.version
    assert registry.champion(lake) is None and [e.version for e in registry.entries(lake)] == [challenger.version]
    # what no live label can teach is the champion's, bit for bit
    assert challenger.net is champion.net
    for h in ("major_bleed_14d",):
        assert challenger.temperatures[h] == champion.temperatures[h]
        assert challenger.class_conformal[h] is champion.class_conformal[h]
    assert challenger.regression_conformal == champion.regression_conformal
    x = cohort.take(np.arange(20))
    bleed = CLASS_HEADS.index("major_bleed_14d")
    np.testing.assert_array_equal(challenger.raw(x.inputs).p[:, bleed], champion.raw(x.inputs).p[:, bleed])
    # while its window fills, no second challenger; once the window's outcomes are known, the shadow decides
    assert learning.step(champion, now_us, drift=True) is None
    learning.samples += samples[half:]
    news = learning.step(champion, samples[-1].at_us, drift=True)
    assert "promoted" in news, news
    assert registry.champion(lake).version == challenger.version and learning.challenger is None


def test_a_population_the_champion_ranks_as_well_as_a_refit_gives_no_challenger(champion, cohort, tmp_path):
    lake = str(tmp_path / "lake")
    samples = _samples(cohort)
    learning = LiveLearning(lake, min_patients=60, samples=samples, started_us=samples[0].at_us)
    news = learning.step(champion, samples[-1].at_us + 200 * HOUR_US, drift=False)  # the schedule (a week) is due
    assert "no risk gained" in news, news
    assert registry.entries(lake) == [] and learning.challenger is None
    assert learning.due(samples[-1].at_us + 400 * HOUR_US, drift=True) is None  # nothing new since


def test_the_worker_retrains_when_a_drift_incident_of_the_served_model_is_open(champion, cohort, tmp_path):
    samples = _samples(cohort, genotype_outcome=True)
    worker = RiskWorker("nats://unused", "redis://unused", str(tmp_path / "lake"))
    worker.service = RiskService(Fixed(champion), None, None)
    worker.learning = LiveLearning(worker.lake, min_patients=60, samples=samples, started_us=samples[0].at_us)
    worker.hour_of = {"p000000": samples[0].at_us + 100 * HOUR_US}  # 100 h of data: the weekly schedule not due
    assert asyncio.run(worker.learn()) is None  # no drift, and the schedule not due
    life = DriftLifecycle(champion.version)
    life.row = {"status": "open"}
    worker.drift_lifecycles[(champion.version, "inputs")] = life
    news = asyncio.run(worker.learn())
    assert news and "registered" in news
    assert registry.entries(worker.lake)[0].version == worker.learning.challenger.version



def test_the_started_worker_samples_the_patients_it_scores_unless_the_setting_turns_it_off(nats_server, redis_server, tmp_path):
    lake = tmp_path / "lake"
    write_patients(Path(lake))
    newest_us = pc.max(pc.cast(delta.read(str(lake), "vitals", columns=["ts"])["ts"], pa.int64())).as_py()

    async def go() -> list[LiveSample]:
        worker = RiskWorker(nats_server.url, redis_server.url, str(lake))
        await worker.start()
        try:
            for patient in ("p000000", "p000001"):  # their last hour closed
                worker.note_vitals(patient, newest_us - HOUR_US)
                worker.note_vitals(patient, newest_us)
            worker.settle_s = 0.0
            assert await worker.score_due() == 2
            assert await worker.learn() is None  # two patients, no drift: nothing to learn yet
            off = RiskWorker(nats_server.url, redis_server.url, str(lake), live_retrain_patients=0)
            await off.start()  # the setting `live_retrain_patients` 0: no retraining from live traffic
            await off.stop()
            assert off.learning is None
            return worker.learning.samples
        finally:
            await worker.stop()

    samples = asyncio.run(go())
    assert sorted(s.patient_id for s in samples) == ["p000000", "p000001"]
    assert all(s.waiting and s.inputs.series.shape[0] == 1 for s in samples)
