"""A trial's patients simulated together: screening against the inclusion and exclusion criteria, stratified
block randomisation, then every arm at once through the cohort's PK/PD kernel (`pkpd.step_pkpd`, 1-h steps, one
call a day for all patients), the dosing protocols deciding each evening's dose from the INRs reported by then
(`protocols.make_protocol`), INRs drawn on the schedule (the true INR with its biological fluctuation and the
assay's error, `inr_variability`, as the cohort simulator draws them),
doses missed at random (adherence), dropouts and major bleeds (a hazard of the true INR). No vitals: a trial
needs INRs, doses and events, and the 5-min vitals would cost more than the rest together.

The twin-guided arm's advisor (`trials.twin_arm.TwinArm`) refits each patient's own twin whenever a new INR is
reported and gives the constant daily dose whose forecast INR over the next days is nearest the target.

Every random draw comes from a stream named by the seed and its purpose, so a trial is the same for the same
design, size and seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from sources.patient import metoprolol, warfarin
from sources.patient.cohort import Cohort, draw_cohort
from sources.patient.cohort_sim import concat_cohorts
from sources.patient.inr_variability import InrFluctuation, measured_inr, true_inr
from sources.patient.pkpd import PkpdState, step_pkpd
from sources.patient.protocols import make_protocol
from trials.design import COHORT_FILE_COLUMNS, Design, DesignError
from trials.eu_pact_dosing import EuPactGenotypeProtocol
from trials.twin_arm import TwinArm

DT_H = 1.0
SCREEN_BATCH_FACTOR = 1.3  # patients drawn per round of screening, over the number still needed
# streams: one per purpose, so that e.g. a change of adherence leaves the cohort and the randomisation alone
(STREAM_SCREEN, STREAM_RANDOMISE, STREAM_ADHERENCE, STREAM_LABS, STREAM_DROPOUT, STREAM_BLEED,
 STREAM_PARAMS, STREAM_INR) = range(8)


def stream(seed: int, purpose: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, *more])


@dataclass
class Screening:
    """Who was assessed and why patients were excluded (the CONSORT flow's top)."""

    assessed: int = 0
    excluded: dict[str, int] = field(default_factory=dict)


def exclusion_reasons(cohort: Cohort, design: Design) -> np.ndarray:
    """Per patient the first criterion that excludes it ("" if eligible)."""
    pop = design.population
    reason = np.full(len(cohort), "", dtype=object)
    checks = [(f"age outside {pop.min_age_years:g}-{pop.max_age_years:g} y",
               (cohort.age_years < pop.min_age_years) | (cohort.age_years > pop.max_age_years))]
    checks += [(f"on {drug.replace('_', ' ')}", np.asarray(getattr(cohort, drug), bool)) for drug in pop.exclude]
    for text, out in checks:
        reason = np.where((reason == "") & out, text, reason)
    return reason


def _screened(reasons: np.ndarray, n_needed: int) -> tuple[np.ndarray, Screening]:
    """The first `n_needed` eligible patients (indices) and the counts of those screened until then."""
    eligible = np.flatnonzero(reasons == "")[:n_needed]
    seen = reasons[: eligible[-1] + 1] if len(eligible) else reasons
    excluded = {str(r): int((seen == r).sum()) for r in dict.fromkeys(seen.tolist()) if r}
    return eligible, Screening(len(seen), excluded)


def cohort_from_table(table: object, rng: np.random.Generator, first_index: int = 0) -> Cohort:
    """Patients with the covariates of a cohort table (a pyarrow Table with `COHORT_FILE_COLUMNS`: the
    `patients` table's, as `biopilot cohort synthesize` writes them); what the file leaves empty, and the
    individual PK/PD parameters and baseline vitals, are drawn by the population model."""
    missing = [c for c in COHORT_FILE_COLUMNS if c not in table.column_names]
    if missing:
        raise DesignError(f"population file lacks column(s) {', '.join(missing)}; it needs "
                          f"{', '.join(COHORT_FILE_COLUMNS)}")
    n = table.num_rows
    if n == 0:
        raise DesignError("population file has no rows")
    drawn = draw_cohort(n, rng, first_index)
    values = {}
    try:  # a bad cell (text in a number column, an unknown sex or genotype) is one line, not a traceback
        for name in COHORT_FILE_COLUMNS:
            col = np.asarray(table[name].to_pylist(), dtype=object)
            missing_cell = np.array([v is None or v == "" or (isinstance(v, float) and v != v) for v in col])
            own = getattr(drawn, name)
            if own.dtype == bool:  # numpy's astype(bool) makes any non-empty text True: "no" would be True
                col = np.array([v if m else _flag(v, name) for v, m in zip(col, missing_cell, strict=True)],
                               dtype=object)
            merged = np.where(missing_cell, own, col)
            try:
                values[name] = merged.astype(own.dtype) if own.dtype != object else merged
            except ValueError as err:
                bad = [v for v, m in zip(col, missing_cell, strict=True) if not m and not _is_number(v)]
                raise ValueError(f"{name} must be a number, got {bad[0]!r}" if bad else f"{name}: {err}") from None
        cov = warfarin.Covariates(values["age_years"].astype(float), values["weight_kg"].astype(float),
                                  values["cyp2c9"].astype(str), values["vkorc1_1639"].astype(str),
                                  values["amiodarone"], values["enzyme_inducer"])
        params = warfarin.individual_params(cov, rng)
        metoprolol_params = metoprolol.individual_params(values["sex"].astype(str), drawn.cyp2d6, rng)
    except (ValueError, KeyError) as err:
        raise DesignError(f"population file: {str(err).splitlines()[0]}") from None
    return replace(drawn, **{k: (v.astype(str) if k in ("sex", "ancestry", "cyp2c9", "vkorc1_1639") else v)
                             for k, v in values.items()},
                   warfarin=params, metoprolol=metoprolol_params)


FLAG_WORDS = {"1": True, "true": True, "t": True, "yes": True, "y": True,
              "0": False, "false": False, "f": False, "no": False, "n": False}


def _flag(value: object, name: str) -> bool:
    """A population file's true/false cell: a boolean, 1/0, or true/false, yes/no as text."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    word = str(value).strip().lower()
    if word.endswith(".0"):  # 1.0 / 0.0 from a float column
        word = word[:-2]
    if word not in FLAG_WORDS:
        raise ValueError(f"{name} must be true/false, yes/no or 1/0, got {value!r}")
    return FLAG_WORDS[word]


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def read_population_file(path: str) -> object:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path) if path.endswith(".parquet") else pacsv.read_csv(path)
    except (OSError, ValueError) as err:
        raise DesignError(f"cannot read population file {path}: {str(err).splitlines()[0]}") from None


def screen(design: Design, n_needed: int, seed: int, population_table: object = None) -> tuple[Cohort, Screening]:
    """`n_needed` eligible patients, in order of enrolment, and the screening counts up to the last of them."""
    co = design.population.cohort
    if population_table is not None:  # the file's patients, in a random order, each once
        order = stream(seed, STREAM_SCREEN).permutation(population_table.num_rows)
        cohort = cohort_from_table(population_table.take(order), stream(seed, STREAM_PARAMS))
        eligible, screening = _screened(exclusion_reasons(cohort, design), n_needed)
        if len(eligible) < n_needed:
            raise DesignError(f"population file: {len(eligible)} eligible patients of {len(cohort)}; the trial "
                              f"needs {n_needed}")
        return cohort.subset(eligible), screening
    parts, have = [], 0
    for rnd in range(50):
        m = max(8, int(np.ceil((n_needed - have) * SCREEN_BATCH_FACTOR)))
        drawn = draw_cohort(m, stream(seed, STREAM_SCREEN, rnd), first_index=sum(len(p) for p in parts),
                            ancestry=co.ancestry, amiodarone_share=co.amiodarone_share,
                            enzyme_inducer_share=co.enzyme_inducer_share)
        parts.append(drawn)
        have += int((exclusion_reasons(drawn, design) == "").sum())
        if have >= n_needed:
            break
    else:
        raise DesignError("population: too few screened patients are eligible; loosen the criteria")
    cohort = concat_cohorts(parts)
    eligible, screening = _screened(exclusion_reasons(cohort, design), n_needed)
    return cohort.subset(eligible), screening


def strata(cohort: Cohort, stratify_by: list[str]) -> np.ndarray:
    """One label per patient: the values of the stratification factors joined."""
    if not stratify_by:
        return np.full(len(cohort), "all")
    cols = [np.where(cohort.age_years > 75, ">75", "<=75") if s == "age_over_75" else getattr(cohort, s).astype(str)
            for s in stratify_by]
    return np.array(["|".join(vals) for vals in zip(*cols, strict=True)])


def randomise(stratum: np.ndarray, ratio: list[int], block_size: int, rng: np.random.Generator) -> np.ndarray:
    """Arm index per patient, in order of enrolment: permuted blocks within each stratum (each block holds
    `block_size / sum(ratio) * ratio[a]` patients of arm a, in random order).

    >>> arms = randomise(np.array(["a"] * 8), [1, 1], 4, np.random.default_rng(0))
    >>> sorted(arms[:4].tolist()), sorted(arms[4:].tolist())
    ([0, 0, 1, 1], [0, 0, 1, 1])
    """
    per_block = np.repeat(np.arange(len(ratio)), np.asarray(ratio) * (block_size // sum(ratio)))
    arm = np.empty(len(stratum), int)
    for s in np.unique(stratum):
        idx = np.flatnonzero(stratum == s)
        n_blocks = -(-len(idx) // block_size)
        seq = np.concatenate([rng.permutation(per_block) for _ in range(n_blocks)])
        arm[idx] = seq[: len(idx)]
    return arm


@dataclass
class Course:
    """What happened to every patient (arrays over patients; `lab_*` over the schedule's draws)."""

    arm: np.ndarray  # int
    lab_day: np.ndarray  # (n_labs,) draw days
    lab_h: np.ndarray  # (n_labs,) hours since the start of the trial (midnight of day 0)
    reported_h: np.ndarray  # (n, n_labs)
    lab_inr: np.ndarray  # (n, n_labs), NaN where not drawn (lost to follow-up, withdrawn)
    dose_h: np.ndarray  # (n_days,)
    dose_mg: np.ndarray  # (n, n_days) prescribed, NaN once off study
    taken: np.ndarray  # (n, n_days) bool
    true_inr_day: np.ndarray  # (n, n_days) the true INR's mean over each day (from the dose on)
    dropout_day: np.ndarray  # NaN: followed to the end
    bleed_day: np.ndarray  # NaN: no major bleed
    twin_refits: int = 0
    twin_refit_s: float = 0.0

    @property
    def followed_to_day(self) -> np.ndarray:
        """The last day of follow-up (dropout, bleed or the end)."""
        end = len(self.dose_h)
        return np.fmin(np.fmin(self.dropout_day, self.bleed_day), end)


# metoprolol: the `cyp2d6` protocol's factor on the standard dose by phenotype (ours, after the Dutch
# Pharmacogenetics Working Group's advice to give poor metabolisers a quarter and intermediate ones half; to check)
CYP2D6_DOSE_FACTOR = {"PM": 0.25, "IM": 0.5, "NM": 1.0, "UM": 1.0}
METOPROLOL_STEP_MG = 12.5  # a quarter of a 50 mg tablet
HR_READING_HOUR = 8  # the resting heart rate taken each morning (awake, before the evening dose's peak)


@dataclass
class HrCourse:
    """A metoprolol trial's course: the resting heart rate each morning (NaN once off study)."""

    arm: np.ndarray
    day: np.ndarray  # (n_days,) days of the readings
    baseline_hr_bpm: np.ndarray
    hr_bpm: np.ndarray  # (n, n_days)
    dose_h: np.ndarray
    dose_mg: np.ndarray  # (n, n_days), NaN once off study
    taken: np.ndarray
    dropout_day: np.ndarray

    @property
    def followed_to_day(self) -> np.ndarray:
        return np.fmin(self.dropout_day, len(self.dose_h))


def metoprolol_doses(design: Design, cohort: Cohort, arm: np.ndarray) -> np.ndarray:
    """Each patient's daily metoprolol dose (mg): the arm's dose, scaled by CYP2D6 phenotype in `cyp2d6` arms."""
    dose = np.array([design.arms[a].fixed_dose_mg for a in arm])
    guided = np.array([design.arms[a].protocol == "cyp2d6" for a in arm])
    factor = np.array([CYP2D6_DOSE_FACTOR[p] for p in cohort.cyp2d6])
    scaled = np.maximum(METOPROLOL_STEP_MG, np.round(dose * factor / METOPROLOL_STEP_MG) * METOPROLOL_STEP_MG)
    return np.where(guided, scaled, dose)


def simulate_hr_course(design: Design, cohort: Cohort, arm: np.ndarray, seed: int) -> HrCourse:
    """A metoprolol trial: the PK/PD kernel's heart-rate effect (`metoprolol`'s Emax model) on each patient's
    awake baseline, read each morning with the within-patient variability of `vitals` (its OU's stationary SD,
    its time constant of hours makes mornings a day apart independent) and the monitor's noise."""
    from sources.patient.vitals import MONITOR_NOISE_SD, OU_RELATIVE_SD

    n, days = len(cohort), design.duration_days
    dose_hour = int(round(design.dose_hour))
    dose_h = 24.0 * np.arange(days) + dose_hour
    daily = metoprolol_doses(design, cohort, arm)
    taken = stream(seed, STREAM_ADHERENCE).random((n, days)) < design.adherence
    dropout_day = _dropout_days(design, n, seed)
    baseline = np.asarray(cohort.hr_bpm, float)
    sd = np.sqrt((OU_RELATIVE_SD["hr_bpm"] * baseline) ** 2 + MONITOR_NOISE_SD["hr_bpm"] ** 2)
    noise = stream(seed, STREAM_LABS).normal(0.0, 1.0, (n, days)) * sd[:, None]
    course = HrCourse(arm, np.arange(1, days + 1, dtype=float), baseline, np.full((n, days), np.nan), dose_h,
                      np.full((n, days), np.nan), taken, dropout_day)
    pk = PkpdState.initial(n)
    zeros, ones = np.zeros((n, 24)), np.ones((n, 24))
    for d in range(days):
        on_study = ~(np.nan_to_num(dropout_day, nan=np.inf) <= d)
        course.dose_mg[:, d] = np.where(on_study, daily, np.nan)
        given = np.zeros((n, 24))
        given[:, 0] = np.where(on_study & taken[:, d], daily, 0.0)
        pk, out = step_pkpd(pk, cohort, zeros, given, ones, DT_H)
        col = 24 + HR_READING_HOUR - dose_hour - 1  # the next morning's step
        read = on_study & ~(np.nan_to_num(dropout_day, nan=np.inf) < d + 1)
        course.hr_bpm[:, d] = np.where(read, np.round(baseline + out.hr_effect_bpm[:, col] + noise[:, d]), np.nan)
    return course


def _dropout_days(design: Design, n: int, seed: int) -> np.ndarray:
    """Each patient's day lost to follow-up (constant hazard reaching `dropout_share` by the end), NaN if none."""
    days = design.duration_days
    if design.dropout_share <= 0:
        return np.full(n, np.nan)
    rate = -np.log1p(-design.dropout_share) / days
    day = stream(seed, STREAM_DROPOUT).exponential(1.0 / rate, n)
    return np.where(day < days, day, np.nan)


def simulate_course(design: Design, cohort: Cohort, arm: np.ndarray, seed: int,
                    twin_progress: Callable[[int], None] | None = None) -> Course | HrCourse:
    """Every arm's patients through the trial, vectorised over patients (one kernel call a day)."""
    if design.drug == "metoprolol":
        return simulate_hr_course(design, cohort, arm, seed)
    n, days = len(cohort), design.duration_days
    dose_hour = int(round(design.dose_hour))
    lab_day = np.asarray(design.lab_days, float)
    lab_h = lab_day * 24.0 + design.labs.hour
    delay = design.labs.delay_h
    rng_labs = stream(seed, STREAM_LABS)
    reported_h = lab_h[None, :] + (rng_labs.uniform(*delay, (n, len(lab_h))) if isinstance(delay, tuple)
                                   else np.full((n, len(lab_h)), float(delay)))
    lab_noise_rng = stream(seed, STREAM_LABS, 1)
    dose_h = 24.0 * np.arange(days) + dose_hour
    taken = stream(seed, STREAM_ADHERENCE).random((n, days)) < design.adherence
    dropout_day = _dropout_days(design, n, seed)
    bleed_u = stream(seed, STREAM_BLEED).random((n, days))
    bl = design.endpoints.bleeding

    course = Course(arm, lab_day, lab_h, reported_h, np.full((n, len(lab_h)), np.nan), dose_h,
                    np.full((n, days), np.nan), taken, np.full((n, days), np.nan), dropout_day, np.full(n, np.nan))
    protocols, twins = [], []
    for a, spec in enumerate(design.arms):
        idx = np.flatnonzero(arm == a)
        sub = cohort.subset(idx)
        advisor = None
        if spec.protocol == "twin":
            def history(idx: np.ndarray = idx) -> tuple:
                d = state["day"]
                taken_mg = np.where(course.taken[idx][:, :d], np.nan_to_num(course.dose_mg[idx][:, :d]), 0.0)
                known = course.reported_h[idx] <= state["now_h"]
                return (course.dose_h[:d], taken_mg, lab_h, np.where(known, course.lab_inr[idx], np.nan),
                        state["now_h"])
            advisor = TwinArm(sub, spec.target_inr, history, twin_progress)
            twins.append(advisor)
        protocols.append((idx, EuPactGenotypeProtocol(sub, spec.target_inr) if spec.protocol == "genotype_eu_pact"
                          else make_protocol(spec.protocol, sub, target_inr=spec.target_inr, advisor=advisor,
                                             fixed_dose_mg=spec.fixed_dose_mg)))
    state = {"day": 0, "now_h": 0.0}
    pk = PkpdState.initial(n)
    # the true INR's slow biological fluctuation around the model's (`inr_variability`), a stream per patient
    fluctuation = InrFluctuation([stream(seed, STREAM_INR, i) for i in range(n)], DT_H)
    zeros = np.zeros((n, 24))
    ones_cl = np.repeat(warfarin.steady_state_factor(cohort.covariates())[:, None], 24, axis=1)
    # stepping starts at the first dose: before it the patients are drug-naive (INR 1), nothing moves
    on_study = np.ones(n, bool)
    for d in range(days):
        now_h = float(dose_h[d])
        state.update(day=d, now_h=now_h)
        on_study &= ~(np.nan_to_num(dropout_day, nan=np.inf) <= d) & ~(np.nan_to_num(course.bleed_day, nan=np.inf) <= d)
        known = course.reported_h <= now_h
        last = _last_known(np.where(known, course.lab_inr, np.nan))
        last_h = _last_known(np.where(known & ~np.isnan(course.lab_inr), course.reported_h, np.nan))
        dose = np.zeros(n)
        for idx, protocol in protocols:
            if len(idx):
                dose[idx] = protocol.next_doses(d, last[idx], last_h[idx])
        course.dose_mg[:, d] = np.where(on_study, dose, np.nan)
        given = np.zeros((n, 24))
        given[:, 0] = np.where(on_study & taken[:, d], dose, 0.0)
        pk, out = step_pkpd(pk, cohort, given, zeros, ones_cl, DT_H)
        inr_true = true_inr(out.inr, fluctuation.step(24))
        course.true_inr_day[:, d] = inr_true.mean(axis=1)
        # INRs drawn in these 24 h (step j ends at now_h + j + 1)
        for j in np.flatnonzero((lab_h > now_h) & (lab_h <= now_h + 24.0)):
            col = int(round(lab_h[j] - now_h)) - 1
            drawn = on_study & ~(np.nan_to_num(dropout_day, nan=np.inf) < lab_day[j])
            course.lab_inr[:, j] = np.where(drawn, measured_inr(inr_true[:, col], lab_noise_rng), np.nan)
        hazard_per_day = bl.hazard_per_day(course.true_inr_day[:, d])
        bleeds = on_study & np.isnan(course.bleed_day) & (bleed_u[:, d] < -np.expm1(-hazard_per_day))
        course.bleed_day = np.where(bleeds, d + 0.5, course.bleed_day)
    course.twin_refits = sum(t.refits for t in twins)
    course.twin_refit_s = sum(t.refit_s for t in twins)
    return course


def _last_known(values: np.ndarray) -> np.ndarray:
    """Each row's last non-NaN value (NaN if none)."""
    ok = ~np.isnan(values)
    last = np.where(ok.any(axis=1), values.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1), -1)
    return np.where(last >= 0, values[np.arange(len(values)), np.maximum(last, 0)], np.nan)
