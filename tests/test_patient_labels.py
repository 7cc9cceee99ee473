"""Ground-truth INR labels (`sources/patient/inr_events.py`): read off the TRUE INR, whatever drove it there."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest

from sources.patient import cohort_sim as cs
from sources.patient import warfarin
from sources.patient.adverse_events import ADVERSE_EVENTS
from sources.patient.cohort import Cohort
from sources.patient.scenarios import load_patient_scenario

INR_EVENTS = ("over_anticoagulation", "subtherapeutic")


def _run(sc, chunk: int, cohort: Cohort | None = None, n: int | None = None, monkeypatch=None, seed: int = 1):
    if cohort is not None:
        monkeypatch.setattr(cs, "draw_cohort", lambda _n, _rng, first_index=0, **_kw: cohort.subset(
            np.array([first_index])))
    sim = cs.PatientCohortSim(sc, n or len(cohort), seed=seed)
    inr = []
    while not sim.done:
        sim.step(chunk)
        inr.append(sim.last_true["inr"])
    return sim, np.concatenate(inr, axis=1)


def _younger_heavier(cyp2c9: str, vkorc1: str, age_years: float, weight_kg: float) -> Cohort:
    """A typical patient of another age and weight (a faster clearance: a higher dose needed)."""
    c = Cohort.typical([cyp2c9], [vkorc1])
    cov = warfarin.Covariates(np.array([age_years]), np.array([weight_kg]), c.cyp2c9, c.vkorc1_1639)
    return replace(c, age_years=cov.age_years, weight_kg=cov.weight_kg, warfarin=warfarin.typical_params(cov))


def _inr_labels(sim, pid=None):
    return [lab for lab in sim.labels if lab.fault in INR_EVENTS and (pid is None or lab.reactor_id == pid)]


def _fixed(days: float = 28.0):
    return load_patient_scenario("warfarin_fixed_5mg").with_overrides(days=days)


def test_fixed_dose_cyp2c9_33_vkorc1_aa_patient_is_labelled_over_anticoagulated_when_the_true_inr_crosses_4(
        monkeypatch):
    sc = _fixed()
    sim, inr = _run(sc, 288, Cohort.typical(["*3/*3"], ["A/A"]), monkeypatch=monkeypatch)
    labels = _inr_labels(sim)
    assert [lab.fault for lab in labels] == ["over_anticoagulation"]
    lab = labels[0]
    j = int(np.argmax(inr[0] >= 4.0))
    assert inr[0, j] >= 4.0 > inr[0, j - 1] and (inr[0, j:] >= 4.0).all()  # it stays there on 5 mg
    assert lab.start_ts == sc.start + timedelta(hours=j * sim.dt_h)
    assert 7 < j * sim.dt_h / 24 < 14  # days into warfarin, as the model's *3/*3 A/A patient rises
    assert lab.end_ts == sc.start + timedelta(days=sc.days)  # still over at the run's end
    assert lab.magnitude == pytest.approx(inr[0].max(), abs=0.01)
    assert lab.root_cause == ADVERSE_EVENTS["over_anticoagulation"].root_cause  # no injected cause: the default
    assert lab.signals == ["inr"]


def test_fixed_5mg_vkorc1_gg_patient_is_labelled_subtherapeutic_from_the_end_of_initiation(monkeypatch):
    sc = _fixed()
    # 5 mg is too little for a G/G *1/*1 patient of 30 years and 120 kg (IWPC: ~9 mg/day)
    sim, inr = _run(sc, 288, _younger_heavier("*1/*1", "G/G", 30.0, 120.0), monkeypatch=monkeypatch)
    assert inr[0].max() < 2.0
    labels = _inr_labels(sim)
    assert [lab.fault for lab in labels] == ["subtherapeutic"]
    first_dose = sc.start + timedelta(hours=sc.dose_hour)
    assert labels[0].start_ts == first_dose + timedelta(days=14)  # never reached 2: initiation ends on day 14
    assert labels[0].end_ts == sc.start + timedelta(days=sc.days)
    assert labels[0].root_cause == ADVERSE_EVENTS["subtherapeutic"].root_cause


def test_a_well_controlled_patient_gets_no_inr_labels(monkeypatch):
    # 5 mg/day holds this typical *1/*2 G/G patient (71 years, 70 kg) near 2.5 at steady state (IWPC: 4.5 mg/day)
    sim, inr = _run(_fixed(42.0), 288, Cohort.typical(["*1/*2"], ["G/G"]), monkeypatch=monkeypatch)
    assert 2.0 <= inr[0, -1] < 3.0
    assert _inr_labels(sim) == []


def test_a_metoprolol_only_patient_gets_no_inr_labels():
    sim, _ = _run(load_patient_scenario("metoprolol_100mg").with_overrides(days=10), 288, n=2)
    assert _inr_labels(sim) == []


@pytest.mark.parametrize("name", ["over_anticoagulation", "nonadherence", "warfarin_standard"])
def test_labels_are_the_same_whatever_the_chunks(name):
    sc = load_patient_scenario(name).with_overrides(days=35)
    whole, _ = _run(sc, 10**6, n=5, seed=4)
    for chunk in (288, 97):
        part, _ = _run(sc, chunk, n=5, seed=4)
        assert _sorted(part.labels) == _sorted(whole.labels)  # labels are appended as episodes close


def _sorted(labels):
    return sorted(labels, key=lambda lab: (lab.start_ts, lab.reactor_id, lab.fault))


def test_injected_over_anticoagulation_labels_only_patients_whose_true_inr_reaches_4_and_names_its_cause():
    sc = load_patient_scenario("over_anticoagulation").with_overrides(days=35)
    sim, inr = _run(sc, 288, n=6, seed=2)
    over = _inr_labels(sim)
    over = [lab for lab in over if lab.fault == "over_anticoagulation"]
    reached = {sim.patient_ids[k] for k in range(sim.n) if inr[k].max() >= 4.0}
    assert {lab.reactor_id for lab in over} == reached and reached
    onset = {sim.patient_ids[k]: h for k, h in zip(sim.plan.patient, sim.plan.onset_h, strict=True)}
    for lab in over:
        if lab.start_ts >= sc.start + timedelta(hours=onset[lab.reactor_id]):
            assert "injected over_anticoagulation" in lab.root_cause
    # too weak to get there: no label at all
    weak = sc.with_overrides(events=[{**sc.events[0].model_dump(), "magnitude": 0.01}], protocol="genotype")
    sim, inr = _run(weak, 288, n=4, seed=2)
    assert not [lab for lab in sim.labels if lab.fault == "over_anticoagulation"] and inr.max() < 4.0


def test_drug_interaction_is_named_as_the_cause_of_the_over_anticoagulation_it_drives():
    sc = load_patient_scenario("drug_interaction").with_overrides(protocol="fixed", days=42)
    sim, inr = _run(sc, 288, n=6, seed=3)
    onset = {sim.patient_ids[k]: h for k, h in zip(sim.plan.patient, sim.plan.onset_h, strict=True)}
    over = [lab for lab in sim.labels if lab.fault == "over_anticoagulation"
            and lab.start_ts > sc.start + timedelta(hours=onset[lab.reactor_id])]
    assert over
    for lab in over:
        assert lab.root_cause == ADVERSE_EVENTS["drug_interaction"].root_cause
        assert lab.action == ADVERSE_EVENTS["drug_interaction"].action


def test_an_event_planned_after_the_run_ends_gets_no_label():
    """major_bleed's onset is drawn in days 15-25: in a run shortened to 20 days some patients' bleeds never
    happen, and a label for them (past the run's end) would be counted as a missed event."""
    sc = load_patient_scenario("major_bleed").with_overrides(days=20)
    sim = cs.PatientCohortSim(sc, 12, seed=3)
    planned = [onset_h for name, onset_h in zip(sim.plan.name, sim.plan.onset_h, strict=True)
               if name == "major_bleed"]
    end = sim.started + timedelta(days=20)
    bleeds = [lab for lab in sim.labels if lab.fault == "major_bleed"]
    assert 0 < sum(h < 20 * 24 for h in planned) < len(planned)  # some before the end, some after
    assert len(bleeds) == sum(h < 20 * 24 for h in planned) and all(lab.start_ts < end for lab in bleeds)
