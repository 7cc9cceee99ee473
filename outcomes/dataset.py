"""Training data for the outcome model: virtual patients through the project's own patient simulator
(`sources.patient.cohort_sim.PatientCohortSim`), sampled at random times, each sample the model's inputs as of
then (`outcomes.features.encode`, the serving path's code) and what happened next.

The patients: the standard warfarin protocol (loading, then the INR nomogram) with the events that move the
INR in practice drawn per patient: amiodarone started (`drug_interaction`: its daily doses are in the dose rows,
so a model can see it), an intercurrent illness lowering warfarin clearance for days (`over_anticoagulation`:
seen only through the INR) and missed doses (`nonadherence`: the missed doses are dose rows taken = false).
Half of them also take metoprolol 100 mg a day. Vitals every `VITALS_EVERY_MIN` minutes (the model reads
hourly means, so the rate only changes how noisy a mean is).

Labels (the simulator's true state, not a measurement, so they do not depend on when blood was drawn):
- `inr_ge4_7d`: the true INR reaches 4 within 7 days (`inr_events.OVER_INR`, the over-anticoagulation level);
- `major_bleed_14d`: a major bleed within 14 days, drawn from a hazard of the true INR and age: ISCOAT's major
  bleeding rate (1.1 per 100 patient-years), x 7.91 for INR >= 4.5 against the therapeutic range (taken as a
  log-linear rise from 2.5 to 4.5: x 2.81 per INR unit above 2.5) and x 1.75 at age >= 70 (Palareti et al.
  1996, Lancet 348:423), times `BLEED_ENRICHMENT` = 40 so that a 14-day window holds enough bleeds to learn
  from (a case-enriched cohort: the ranking - AUROC - is what transfers, not the absolute risk). A sample
  after the patient's bleed is dropped (warfarin would have been stopped);
- `bradycardia_24h` (metoprolol patients only; NaN otherwise): the true heart rate's hourly mean falls below
  `BRADY_HR_BPM` = 40 within 24 h. 40 bpm, not the 50 of the ACC/AHA/HRS 2018 definition of sinus
  bradycardia: in this simulator the sleeping heart rate under metoprolol 100 mg is below 50 on 75 % of days
  (docs/OUTCOMES.md), which would make the label the rule, not the event;
- `inr_3d`: the true INR 72 h ahead; `ttr_12w`: the share of the next 84 days (%) with the true INR in 2-3
  (the hourly true INR: what Rosendaal's interpolation between draws estimates). NaN where the run ends first.

>>> ds = simulate_dataset(6, seed=1, days=12, samples_per_patient=2)
>>> 0 < len(ds) <= 12, sorted(ds.labels), ds.inputs.series.shape[1:]  # samples after a bleed are dropped
(True, ['bradycardia_24h', 'inr_3d', 'inr_ge4_7d', 'major_bleed_14d', 'ttr_12w'], (120, 17))
>>> a, b = ds.split((0.5, 0.5), seed=0)
>>> set(a.run_id).isdisjoint(b.run_id), len(a) + len(b) == len(ds)
(True, True)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from outcomes.contract import CLASS_HEADS, REGRESSION_HEADS
from outcomes.features import Encoded, encode, metoprolol_group, warfarin_group
from outcomes.patient_arrays import PatientArrays, epoch_hours
from sources.patient.adverse_events import MAJOR_BLEED_RATE_PER_YEAR, major_bleed_relative_hazard
from sources.patient.cohort_sim import PatientCohortSim
from sources.patient.inr_events import OVER_INR
from sources.patient.scenarios import load_patient_scenario

DAYS = 112  # 4 weeks of samples, then the 12 weeks the TTR label looks ahead
VITALS_EVERY_MIN = 30.0
BLOCK_PATIENTS = 200  # patients simulated together (memory: a block's vitals are held until encoded)
SAMPLES_PER_PATIENT = 8
FIRST_SAMPLE_H = 48.0
BLEED_ENRICHMENT = 40.0  # x ISCOAT's rate (`adverse_events.major_bleed_relative_hazard`): a case-enriched cohort
BRADY_HR_BPM = 40.0
HORIZON_H = {"inr_ge4_7d": 168.0, "major_bleed_14d": 336.0, "bradycardia_24h": 24.0, "inr_3d": 72.0,
             "ttr_12w": 84 * 24.0}
HOURS_PER_YEAR = 8766.0


@dataclass(frozen=True)
class OutcomeDataset:
    """Samples: the encoded inputs, the labels per head (NaN: not applicable or not known), who and when."""

    inputs: Encoded
    labels: dict[str, np.ndarray]
    run_id: np.ndarray
    patient_id: np.ndarray
    ancestry: np.ndarray
    warfarin_group: np.ndarray
    metoprolol_group: np.ndarray
    as_of_h: np.ndarray  # epoch hours
    # per run id: the PATIENTS row and the labs and doses (no vitals: memory), for the twin baseline
    histories: dict[str, tuple[dict, PatientArrays]] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.run_id)

    def take(self, index: np.ndarray) -> OutcomeDataset:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return OutcomeDataset(**{k: (v if k == "histories" else v.take(index) if isinstance(v, Encoded) else
                                     {h: a[index] for h, a in v.items()} if isinstance(v, dict) else v[index])
                                  for k, v in values.items()})

    def split(self, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> list[OutcomeDataset]:
        """Disjoint parts by patient (every sample of a patient in one part), about `fractions` of the patients."""
        runs = np.unique(self.run_id)
        order = np.random.default_rng(seed).permutation(len(runs))
        cuts = np.round(np.cumsum(fractions) / np.sum(fractions) * len(runs)).astype(int)
        parts = np.split(runs[order], cuts[:-1])
        return [self.take(np.flatnonzero(np.isin(self.run_id, part))) for part in parts]

    def groups(self, head: str) -> np.ndarray:
        """The genotype group of each sample for `head` (the Mondrian bins)."""
        return self.metoprolol_group if head == "bradycardia_24h" else self.warfarin_group

    @classmethod
    def concat(cls, parts: Sequence[OutcomeDataset]) -> OutcomeDataset:
        out = {}
        for f in fields(cls):
            items = [getattr(p, f.name) for p in parts]
            out[f.name] = (Encoded.concat(items) if f.name == "inputs" else
                           {k: v for i in items for k, v in i.items()} if f.name == "histories" else
                           {h: np.concatenate([i[h] for i in items]) for h in items[0]} if f.name == "labels"
                           else np.concatenate(items))
        return cls(**out)


def outcome_scenario(days: float, ancestry: Mapping[str, float] | None, amiodarone_share: float, metoprolol: bool):
    """The simulated course (docstring above): the standard protocol, the INR-moving events, +- metoprolol."""
    cohort = {"amiodarone_share": amiodarone_share} | ({"ancestry": dict(ancestry)} if ancestry else {})
    events = [
        {"event": "drug_interaction", "onset_day": [3.0, 28.0], "duration_h": 600.0, "share": 0.2},
        {"event": "over_anticoagulation", "onset_day": [3.0, 30.0], "duration_h": [72.0, 240.0],
         "magnitude": [0.3, 1.0], "share": 0.2},
        {"event": "nonadherence", "onset_day": [5.0, 30.0], "duration_h": [72.0, 168.0], "magnitude": [0.3, 0.8],
         "share": 0.1},
    ]
    return load_patient_scenario("warfarin_standard").with_overrides(
        name="outcome_cohort_metoprolol" if metoprolol else "outcome_cohort", drug="both" if metoprolol else "warfarin",
        days=days, vitals_every_min=VITALS_EVERY_MIN, cohort=cohort, events=events)


def bleed_hours(true_inr_hourly: np.ndarray, age_years: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """Per patient the hour (since the run began) of their major bleed, NaN if none: the first time the
    cumulative hazard passes an exponential draw."""
    rr = major_bleed_relative_hazard(true_inr_hourly, age_years)
    cumulative = np.cumsum(MAJOR_BLEED_RATE_PER_YEAR * BLEED_ENRICHMENT / HOURS_PER_YEAR * rr, axis=1)
    draw = np.array([r.exponential() for r in rngs])
    hit = cumulative >= draw[:, None]
    return np.where(hit.any(axis=1), np.argmax(hit, axis=1) + 1.0, np.nan)


def _labels(k: int, t_h: np.ndarray, inr_h: np.ndarray, hr_h: np.ndarray | None, bleed_h: float) -> dict:
    """The labels of patient `k` at sample hours `t_h` (since the run began) from hourly true states."""
    n_h = inr_h.shape[1]
    out = {h: np.full(len(t_h), np.nan) for h in (*CLASS_HEADS, *REGRESSION_HEADS)}
    for i, t in enumerate(t_h.astype(int)):
        if t + HORIZON_H["inr_ge4_7d"] <= n_h:
            out["inr_ge4_7d"][i] = float(inr_h[k, t:t + 168].max() >= OVER_INR)
        if t + HORIZON_H["major_bleed_14d"] <= n_h or (not np.isnan(bleed_h) and bleed_h <= n_h):
            out["major_bleed_14d"][i] = float(t < bleed_h <= t + HORIZON_H["major_bleed_14d"])
        if hr_h is not None and t + 24 <= n_h:
            out["bradycardia_24h"][i] = float(hr_h[k, t:t + 24].min() < BRADY_HR_BPM)
        if t + 72 <= n_h:
            out["inr_3d"][i] = inr_h[k, t + 71]  # the hour ending 72 h ahead
        if t + HORIZON_H["ttr_12w"] <= n_h:
            window = inr_h[k, t:t + int(HORIZON_H["ttr_12w"])]
            out["ttr_12w"][i] = 100.0 * float(((window >= 2.0) & (window <= 3.0)).mean())
    return out


def _by_patient(table: pa.Table) -> dict[str, pa.Table]:
    """A block's rows per run id (zero-copy slices of the table sorted by run id)."""
    if not table.num_rows:
        return {}
    table = table.sort_by([("run_id", "ascending")])
    runs = table["run_id"].to_numpy(zero_copy_only=False)
    starts = np.r_[0, np.flatnonzero(runs[1:] != runs[:-1]) + 1, len(runs)]
    return {str(runs[a]): table.slice(a, b - a) for a, b in zip(starts[:-1], starts[1:], strict=True)}


def _simulate_block(scenario, n: int, seed: int, first_index: int, samples: int, rng: np.random.Generator,
                    metoprolol: bool) -> OutcomeDataset | None:
    sim = PatientCohortSim(scenario, n, seed=seed, first_index=first_index)
    per_h = int(round(60.0 / scenario.vitals_every_min))
    vitals, labs, doses, inr, hr = [], [], [], [], []
    while not sim.done:
        chunk = sim.step(24 * per_h)
        vitals.append(pa.Table.from_batches([chunk.vitals]))
        labs.append(chunk.labs)
        doses.append(chunk.doses)
        inr.append(sim.last_true["inr"])
        hr.append(sim.last_true["hr_bpm"])
    hourly = {name: np.concatenate(v, axis=1).reshape(n, -1, per_h).mean(axis=2) for name, v in
              (("inr", inr), ("hr", hr))}
    n_h = hourly["inr"].shape[1]
    bleed = bleed_hours(hourly["inr"], sim.cohort.age_years,
                        [np.random.default_rng([seed, i, 7]) for i in sim.indices])
    patients = sim.patients_table().to_pylist()
    tables = [_by_patient(pa.concat_tables(t)) for t in (vitals, labs, doses)]
    start_h = epoch_hours(scenario.start)
    # samples where every head can be labelled when the run is long enough (DAYS: day 2-28), else to 7 days
    # before the end
    last_h = n_h - HORIZON_H["ttr_12w"]
    last_h = last_h if last_h > FIRST_SAMPLE_H + 24 else n_h - HORIZON_H["inr_ge4_7d"]
    parts = []
    for k, (run_id, row) in enumerate(zip(sim.run_ids, patients, strict=True)):
        t_h = np.sort(rng.integers(int(FIRST_SAMPLE_H), max(int(FIRST_SAMPLE_H) + 1, int(last_h)), samples))
        t_h = t_h[~(t_h >= bleed[k])].astype(float)  # after a bleed warfarin stops: no more samples
        if not len(t_h):
            continue
        arrays = PatientArrays.from_tables(*(t.get(run_id, empty) for t, empty in zip(
            tables, (vitals[0].slice(0, 0), labs[0].slice(0, 0), doses[0].slice(0, 0)), strict=True)))
        m = len(t_h)
        parts.append(OutcomeDataset(
            encode(arrays, row, start_h + t_h),
            _labels(k, t_h, hourly["inr"], hourly["hr"] if metoprolol else None, float(bleed[k])),
            np.full(m, run_id, dtype=object), np.full(m, row["patient_id"], dtype=object),
            np.full(m, row["ancestry"], dtype=object), np.full(m, warfarin_group(row), dtype=object),
            np.full(m, metoprolol_group(row) if metoprolol else "", dtype=object), start_h + t_h,
            {run_id: (row, replace(arrays, vitals_h=np.zeros(0), vitals=np.zeros((0, arrays.vitals.shape[1]))))}))
    return OutcomeDataset.concat(parts) if parts else None


def simulate_dataset(n_patients: int, seed: int, *, ancestry: Mapping[str, float] | None = None,
                     amiodarone_share: float = 0.0, days: int = DAYS, progress: bool = False,
                     samples_per_patient: int = SAMPLES_PER_PATIENT, metoprolol_share: float = 0.5
                     ) -> OutcomeDataset:
    """`n_patients` virtual patients (a `metoprolol_share` of them also on metoprolol), `samples_per_patient`
    samples each at random hours from day 2 on (to day 28 at the default length)."""
    if n_patients < 1:
        raise ValueError(f"n_patients {n_patients!r} must be >= 1")
    if days < 9:
        raise ValueError(f"days {days!r} must be >= 9 (a sample needs 2 days of history and 7 ahead)")
    n_meto = int(round(n_patients * metoprolol_share))
    rng = np.random.default_rng([seed, 11])
    jobs = []
    for metoprolol, count, first in ((True, n_meto, 0), (False, n_patients - n_meto, n_meto)):
        scenario = outcome_scenario(days, ancestry, amiodarone_share, metoprolol)
        jobs += [(scenario, min(BLOCK_PATIENTS, count - a), first + a, metoprolol)
                 for a in range(0, count, BLOCK_PATIENTS)]
    parts = []
    with tqdm(total=n_patients, desc="simulating patients", unit="patient", disable=not progress) as bar:
        for scenario, n, first, metoprolol in jobs:
            part = _simulate_block(scenario, n, seed, first, samples_per_patient, rng, metoprolol)
            if part is not None:
                parts.append(part)
            bar.update(n)
    return OutcomeDataset.concat(parts)


def label_counts(ds: OutcomeDataset) -> dict[str, dict[str, int]]:
    """Per classification head: samples labelled and positives."""
    return {h: {"labelled": int((~np.isnan(ds.labels[h])).sum()), "positive": int(np.nansum(ds.labels[h]))}
            for h in CLASS_HEADS}
