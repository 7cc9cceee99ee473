"""A patient's data as the outcome model reads it: one code path for training (`outcomes.dataset`) and serving
(`OutcomeModel.predict` on `PatientRecord`s).

`PatientArrays.from_tables` (`outcomes.patient_arrays`) turns a patient's VITALS, LABS and DOSES rows into
sorted numpy arrays (times in hours on one clock, epoch hours); `encode(arrays, patient_row, as_of_h)` builds, for each time in `as_of_h`,
- `series` [n, WINDOW_H, len(SERIES)]: the last WINDOW_H hours, one row per hour ending at `as_of`: the vitals'
  hourly means (missing = 0 after scaling, plus a share-missing column), the latest INR and Hb *reported* by the
  hour's end and the days since they were sampled, the warfarin / metoprolol / amiodarone mg taken in the hour,
  and the hour of day (sin, cos);
- `static` [n, len(STATIC)]: covariates (age, sex, body size, co-medications), days on warfarin, the last
  weekly warfarin dose, the INR history summarised (last three reported values, their ages, the slope), and the
  last day's heart rate (mean, min, max) and systolic pressure (mean, min) from the series (a skip path: the
  network need not rediscover a daily minimum through attention), then the INR's trend over the last week and
  the patient twin's INR and bleeding forecasts over the horizons (`outcomes.twin_features`);
- `categorical` [n, 4]: CYP2C9, VKORC1, CYP2D6 and ancestry as indices (the model embeds them).
Every value is scaled by fixed physiological centres and spreads (no statistics learned from data), so a
record is encoded the same way whatever it is trained or served with. The patient's true PK/PD parameters
(the `warfarin_*` / `metoprolol_*` columns of PATIENTS) are never read: a hospital would not know them.

>>> import numpy as np
>>> arrays = PatientArrays.empty()
>>> row = {"age_years": 70.0, "sex": "F", "weight_kg": 70.0, "height_cm": 165.0, "cyp2c9": "*1/*3",
...        "vkorc1_1639": "A/A", "cyp2d6": "PM", "ancestry": "asian", "amiodarone": False, "enzyme_inducer": False}
>>> x = encode(arrays, row, np.array([1000.0]))
>>> x.series.shape, x.static.shape, x.categorical.tolist()
((1, 120, 17), (1, 25), [[2, 2, 0, 2]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.events import VITAL_SIGNALS
from outcomes.patient_arrays import PatientArrays, epoch_hours
from outcomes.twin_features import TWIN_STATIC, twin_features
from sources.patient.genetics import ANCESTRIES, CYP2C9_GENOTYPES, CYP2D6_PHENOTYPES, VKORC1_GENOTYPES

WINDOW_H = 120  # five days of hourly aggregates: the span over which an INR trend and a dose change show
# (centre, spread) per vital: the adult normal range's middle and about its width (REFERENCES-patient.md)
VITAL_SCALES: dict[str, tuple[float, float]] = {
    "hr_bpm": (70.0, 15.0), "sbp_mmhg": (125.0, 20.0), "dbp_mmhg": (75.0, 12.0), "spo2_pct": (96.0, 3.0),
    "rr_min": (15.0, 4.0), "temp_c": (36.9, 0.6),
}
SERIES: tuple[str, ...] = (*VITAL_SIGNALS, "vitals_missing", "inr", "inr_age_d", "hb_g_dl", "hb_age_d",
                           "warfarin_mg", "metoprolol_mg", "amiodarone_mg", "hour_sin", "hour_cos",
                           "inr_reported")
STATIC_BASE: tuple[str, ...] = ("age_years", "male", "weight_kg", "height_cm", "amiodarone", "enzyme_inducer",
                                "days_on_warfarin", "days_on_amiodarone", "weekly_warfarin_mg", "inr_last",
                                "inr_prev", "inr_prev2", "inr_last_age_d", "inr_slope_per_d", "hr_mean_24h",
                                "hr_min_24h", "hr_max_24h", "sbp_mean_24h", "sbp_min_24h")
# then the INR's trend over a week and the patient twin's forecast (`outcomes.twin_features`): the models before
# them read only STATIC_BASE, so `encode(..., twin=False)` leaves them out (and their cost)
STATIC: tuple[str, ...] = STATIC_BASE + TWIN_STATIC
CATEGORICAL: dict[str, tuple[str, ...]] = {"cyp2c9": CYP2C9_GENOTYPES, "vkorc1_1639": VKORC1_GENOTYPES,
                                           "cyp2d6": CYP2D6_PHENOTYPES, "ancestry": ANCESTRIES}
INR_NONE = 1.0  # no INR reported yet: a drug-naive patient's INR
AGE_NONE_D = 14.0  # "days since" when nothing was ever measured, and the cap of every "days since"


@dataclass(frozen=True)
class Encoded:
    series: np.ndarray  # float32 [n, WINDOW_H, len(SERIES)]
    static: np.ndarray  # float32 [n, len(STATIC)]
    categorical: np.ndarray  # int64 [n, len(CATEGORICAL)]

    def __len__(self) -> int:
        return len(self.static)

    @classmethod
    def concat(cls, parts: Sequence[Encoded]) -> Encoded:
        return cls(np.concatenate([p.series for p in parts]), np.concatenate([p.static for p in parts]),
                   np.concatenate([p.categorical for p in parts]))

    def take(self, index: np.ndarray) -> Encoded:
        return Encoded(self.series[index], self.static[index], self.categorical[index])

    def tensors(self) -> tuple:
        """(series, static, categorical) as torch tensors sharing the arrays' memory."""
        import torch  # only the model's callers need torch; encoding does not

        return torch.from_numpy(self.series), torch.from_numpy(self.static), torch.from_numpy(self.categorical)


def _last_reported(reported_h: np.ndarray, values: np.ndarray, sample_h: np.ndarray, at_h: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(latest value reported by each `at_h`, its sample time; NaN where none). Labs missing a value skipped."""
    keep = ~np.isnan(values)
    reported_h, values, sample_h = reported_h[keep], values[keep], sample_h[keep]
    k = np.searchsorted(reported_h, at_h, side="right") - 1
    ok = k >= 0
    kk = np.maximum(k, 0)
    if not len(values):
        return np.full(len(at_h), np.nan), np.full(len(at_h), np.nan)
    return np.where(ok, values[kk], np.nan), np.where(ok, sample_h[kk], np.nan)


def hourly_series(arrays: PatientArrays, bin_end_h: np.ndarray) -> np.ndarray:
    """[len(bin_end_h), len(SERIES)] scaled: one row per hour (bin_end - 1 h, bin_end]."""
    n_bins = len(bin_end_h)
    out = np.zeros((n_bins, len(SERIES)), np.float32)
    first = bin_end_h[0] - 1.0
    # vitals: hourly means per signal, the share missing
    vb = np.floor(arrays.vitals_h - first - 1e-9).astype(np.int64)  # bin of each reading (ends inclusive)
    inside = (vb >= 0) & (vb < n_bins)
    vb, v = vb[inside], arrays.vitals[inside]
    counts = np.bincount(vb, minlength=n_bins).astype(float)
    missing = np.ones(n_bins)
    for j, name in enumerate(VITAL_SIGNALS):
        ok = ~np.isnan(v[:, j])
        n_ok = np.bincount(vb[ok], minlength=n_bins)
        total = np.bincount(vb[ok], weights=v[ok, j], minlength=n_bins)
        centre, spread = VITAL_SCALES[name]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / n_ok
        out[:, j] = np.where(n_ok > 0, (mean - centre) / spread, 0.0)
        if j == 0:
            missing = np.where(counts > 0, 1.0 - n_ok / np.maximum(counts, 1), 1.0)
    col = {name: i for i, name in enumerate(SERIES)}
    out[:, col["vitals_missing"]] = missing
    # labs: as reported by each hour's end (a result not yet back is not known)
    inr, inr_t = _last_reported(arrays.lab_reported_h, arrays.inr, arrays.lab_sample_h, bin_end_h)
    hb, hb_t = _last_reported(arrays.lab_reported_h, arrays.hb_g_dl, arrays.lab_sample_h, bin_end_h)
    out[:, col["inr"]] = np.nan_to_num(inr, nan=INR_NONE) - 2.5
    out[:, col["inr_age_d"]] = np.minimum(np.nan_to_num((bin_end_h - inr_t) / 24.0, nan=AGE_NONE_D),
                                          AGE_NONE_D) / 7.0
    out[:, col["hb_g_dl"]] = (np.nan_to_num(hb, nan=13.5) - 13.5) / 1.5
    out[:, col["hb_age_d"]] = np.minimum(np.nan_to_num((bin_end_h - hb_t) / 24.0, nan=AGE_NONE_D),
                                         AGE_NONE_D) / 7.0
    reported = np.searchsorted(arrays.lab_reported_h, bin_end_h, side="right")
    out[1:, col["inr_reported"]] = np.diff(reported) > 0
    # doses taken in each hour
    db = np.floor(arrays.dose_h - first - 1e-9).astype(np.int64)
    inside = (db >= 0) & (db < n_bins)
    for drug, scale in (("warfarin", 5.0), ("metoprolol", 100.0), ("amiodarone", 200.0)):
        mine = inside & (arrays.dose_drug == drug)
        out[:, col[f"{drug}_mg"]] = np.bincount(db[mine], weights=arrays.dose_mg[mine], minlength=n_bins) / scale
    hour = 2 * np.pi * (np.mod(bin_end_h, 24.0) / 24.0)
    out[:, col["hour_sin"]], out[:, col["hour_cos"]] = np.sin(hour), np.cos(hour)
    return out


def _static(arrays: PatientArrays, patient: dict, as_of_h: float) -> np.ndarray:
    known = arrays.lab_reported_h <= as_of_h
    inr_ok = known & ~np.isnan(arrays.inr)
    inr, inr_t = arrays.inr[inr_ok], arrays.lab_sample_h[inr_ok]
    last3 = np.r_[np.full(max(0, 3 - len(inr)), INR_NONE), inr[-3:]]
    slope = 0.0
    if len(inr) >= 2 and inr_t[-1] > inr_t[-2]:
        slope = (inr[-1] - inr[-2]) / ((inr_t[-1] - inr_t[-2]) / 24.0)
    given = arrays.dose_h <= as_of_h
    warf = given & (arrays.dose_drug == "warfarin")
    amio = given & (arrays.dose_drug == "amiodarone")
    days_on = (as_of_h - arrays.dose_h[warf][0]) / 24.0 if warf.any() else 0.0
    on_amio = bool(patient.get("amiodarone"))
    days_amio = 60.0 if on_amio else ((as_of_h - arrays.dose_h[amio][0]) / 24.0 if amio.any() else 0.0)
    weekly = arrays.dose_mg[warf & (arrays.dose_h > as_of_h - 168.0)].sum()
    inr_age = (as_of_h - inr_t[-1]) / 24.0 if len(inr) else AGE_NONE_D
    return np.array([
        (float(patient.get("age_years") or 68.0) - 68.0) / 11.0, float(patient.get("sex") == "M"),
        (float(patient.get("weight_kg") or 80.0) - 80.0) / 15.0,
        (float(patient.get("height_cm") or 170.0) - 170.0) / 10.0, float(on_amio),
        float(bool(patient.get("enzyme_inducer"))), min(days_on, 60.0) / 14.0, min(days_amio, 60.0) / 14.0,
        weekly / 35.0, last3[-1] - 2.5, last3[-2] - 2.5, last3[-3] - 2.5, min(inr_age, AGE_NONE_D) / 7.0,
        float(np.clip(slope, -2.0, 2.0)),
    ], np.float32)


def categorical_codes(patient: dict) -> np.ndarray:
    """The genotype and ancestry indices (an unknown value: the first, the commonest)."""
    return np.array([values.index(patient.get(key)) if patient.get(key) in values else 0
                     for key, values in CATEGORICAL.items()], np.int64)


def encode(arrays: PatientArrays, patient: dict, as_of_h: np.ndarray, twin: bool = True) -> Encoded:
    """The model inputs at each time in `as_of_h` (epoch hours) from the data known by then (`twin` False:
    STATIC_BASE only, without the INR trend and the twin's forecast)."""
    as_of_h = np.asarray(as_of_h, float)
    n_static = len(STATIC) if twin else len(STATIC_BASE)
    if not len(as_of_h):
        return Encoded(np.zeros((0, WINDOW_H, len(SERIES)), np.float32), np.zeros((0, n_static), np.float32),
                       np.zeros((0, len(CATEGORICAL)), np.int64))
    series = np.stack([hourly_series(arrays, t - WINDOW_H + 1.0 + np.arange(WINDOW_H)) for t in as_of_h])
    day = series[:, -24:, :]
    hr, sbp = SERIES.index("hr_bpm"), SERIES.index("sbp_mmhg")
    summary = np.column_stack([day[:, :, hr].mean(axis=1), day[:, :, hr].min(axis=1), day[:, :, hr].max(axis=1),
                               day[:, :, sbp].mean(axis=1), day[:, :, sbp].min(axis=1)])
    parts = [np.stack([_static(arrays, patient, float(t)) for t in as_of_h]), summary]
    if twin:
        parts.append(np.stack([twin_features(arrays, patient, float(t)) for t in as_of_h]))
    static = np.hstack(parts).astype(np.float32)
    codes = np.repeat(categorical_codes(patient)[None, :], len(as_of_h), axis=0)
    return Encoded(series, static, codes)


def encode_records(records: Sequence, twin: bool = True) -> Encoded:
    """The inputs of `PatientRecord`s at their `as_of` (the serving path)."""
    return Encoded.concat([encode(PatientArrays.from_tables(r.vitals, r.labs, r.doses), r.patient,
                                  np.array([epoch_hours(r.as_of)]), twin) for r in records])


def warfarin_group(patient: dict) -> str:
    """The warfarin-sensitivity genotype group (the Mondrian conformal's bins): CYP2C9 variant carrier or not
    x VKORC1 -1639 genotype, six groups."""
    carrier = "cyp2c9_var" if patient.get("cyp2c9", "*1/*1") != "*1/*1" else "cyp2c9_wt"
    return f"{carrier}|vkorc1_{patient.get('vkorc1_1639', 'G/G')}"


def metoprolol_group(patient: dict) -> str:
    """The CYP2D6 phenotype (the bradycardia head's Mondrian bins)."""
    return f"cyp2d6_{patient.get('cyp2d6', 'NM')}"
