"""What the outcome model must beat, trained in the same run on the same patients:
- logistic regression and gradient boosting (scikit-learn) per classification head on flattened features
  (`flatten`: per hourly series the mean of the last 24 h, of the whole window, the last hour, the 24-h min and
  max; the static covariates; the genotypes one-hot);
- the mechanistic twin's own forecast (`sources.patient.twin_fit`, as the flow refits it on every INR): the
  patient's twin fitted to the doses taken and INRs reported by `as_of`, the doses going on as the last one;
  P(INR >= 4 within 7 days) is the posterior's share of forecasts reaching 4, `inr_3d` its median 72 h ahead.
  A refit costs ~0.1-1 s, so the twin is scored on a subsample of the test patients (`TWIN_SAMPLES`), and the
  model's AUROC on that same subsample goes with it.

>>> import numpy as np
>>> from outcomes.features import PatientArrays, encode
>>> row = {"cyp2c9": "*1/*1", "vkorc1_1639": "G/G", "cyp2d6": "NM", "ancestry": "white"}
>>> flatten(encode(PatientArrays.empty(), row, np.array([100.0]))).shape
(1, 121)
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from outcomes.contract import CLASS_HEADS
from outcomes.dataset import OutcomeDataset
from outcomes.features import CATEGORICAL, Encoded
from sources.patient import warfarin
from sources.patient.inr_events import OVER_INR
from sources.patient.twin_fit import fit_patient, simulate_inr

TWIN_SAMPLES = 120
TWIN_DRAWS = 100
TWIN_MAX_ITER = 40


def flatten(x: Encoded) -> np.ndarray:
    """[n, 5 x series + static + one-hot genotypes] for the tabular baselines."""
    s = x.series
    day = s[:, -24:, :]
    parts = [day.mean(axis=1), s.mean(axis=1), s[:, -1, :], day.min(axis=1), day.max(axis=1), x.static]
    parts += [np.eye(len(values), dtype=np.float32)[x.categorical[:, i]] for i, values in
              enumerate(CATEGORICAL.values())]
    return np.hstack(parts)


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    return round(float(roc_auc_score(y, p)), 4) if len(y) and 0 < y.sum() < len(y) else float("nan")


def tabular_baselines(train: OutcomeDataset, test: OutcomeDataset, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per classification head: the test AUROC of logistic regression and of gradient boosting."""
    xtr, xte = flatten(train.inputs), flatten(test.inputs)
    out = {}
    for h in CLASS_HEADS:
        y = train.labels[h]
        keep = ~np.isnan(y)
        res = {}
        if keep.any() and 0 < y[keep].sum() < keep.sum():
            models = {"logistic_regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
                      "gradient_boosting": HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05,
                                                                          random_state=seed)}
            for name, m in models.items():
                m.fit(xtr[keep], y[keep].astype(int))
                res[name] = _auroc(test.labels[h], m.predict_proba(xte)[:, 1])
        out[h] = res
    return out


def twin_forecast(ds: OutcomeDataset, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the samples `index`: (P(INR >= 4 within 7 d), median INR 72 h ahead) from the patient's own twin."""
    p_over, inr_3d = np.full(len(index), np.nan), np.full(len(index), np.nan)
    for j, i in enumerate(index):
        row, arrays = ds.histories[ds.run_id[i]]
        as_of = ds.as_of_h[i]
        warf = (arrays.dose_drug == "warfarin") & (arrays.dose_h <= as_of)
        if not warf.any():
            continue
        t0 = arrays.dose_h[warf][0]
        dose_t, dose_mg = arrays.dose_h[warf] - t0, arrays.dose_mg[warf]
        known = (arrays.lab_reported_h <= as_of) & ~np.isnan(arrays.inr) & (arrays.lab_sample_h > t0)
        cov = warfarin.Covariates(np.array([row["age_years"]]), np.array([row["weight_kg"]]),
                                  np.array([row["cyp2c9"]]), np.array([row["vkorc1_1639"]]),
                                  np.array([bool(row["amiodarone"])]), np.array([bool(row["enzyme_inducer"])]))
        amio = (arrays.dose_drug == "amiodarone") & (arrays.dose_h <= as_of)
        started_h = arrays.dose_h[amio][0] - t0 if amio.any() and not row["amiodarone"] else None
        steady = float(warfarin.steady_state_factor(cov)[0])

        def clearance(t_h: np.ndarray, started_h: float | None = started_h, steady: float = steady) -> np.ndarray:
            amio_h = t_h - started_h if started_h is not None else np.full_like(t_h, np.nan)
            return steady * warfarin.clearance_factor(amio_h, np.full_like(t_h, np.nan))

        try:
            fit = fit_patient(cov, dose_t, dose_mg, arrays.lab_sample_h[known] - t0, arrays.inr[known],
                              cl_factor_h=clearance, max_iter=TWIN_MAX_ITER)
            now = as_of - t0
            future_t = dose_t[-1] + 24.0 * np.arange(1, 9)
            times = np.r_[dose_t, future_t]
            doses = np.r_[dose_mg, np.full(len(future_t), dose_mg[-1] if dose_mg[-1] > 0 else np.median(dose_mg))]
            eta, w = fit.posterior_draws(TWIN_DRAWS)
            grid = now + np.arange(1.0, 169.0)
            sims = simulate_inr(fit.params(eta), times, doses, grid, clearance)
            p_over[j] = float(w @ (sims.max(axis=1) >= OVER_INR))
            order = np.argsort(sims[:, 71])
            inr_3d[j] = float(sims[order, 71][np.searchsorted(np.cumsum(w[order]), 0.5)])
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
    return p_over, inr_3d


def twin_baseline(model_p: np.ndarray, test: OutcomeDataset, seed: int = 0, n: int = TWIN_SAMPLES) -> dict:
    """The twin's AUROC for `inr_ge4_7d` and MAE for `inr_3d` on a subsample of `test`, with the model's AUROC
    (`model_p`: its probabilities on all of `test`) on the same subsample."""
    y = test.labels["inr_ge4_7d"]
    labelled = np.flatnonzero(~np.isnan(y))
    rng = np.random.default_rng(seed)
    # positives kept at least a quarter of the subsample, so its AUROC rests on more than a handful
    pos, neg = labelled[y[labelled] == 1], labelled[y[labelled] == 0]
    k_pos = min(len(pos), max(n // 4, int(round(n * len(pos) / max(1, len(labelled))))))
    index = np.r_[rng.choice(pos, k_pos, replace=False), rng.choice(neg, min(len(neg), n - k_pos), replace=False)]
    p_over, inr_3d = twin_forecast(test, index)
    ok = ~np.isnan(p_over)
    y3 = test.labels["inr_3d"][index]
    return {"samples": int(ok.sum()), "twin_auroc_inr_ge4_7d": _auroc(y[index][ok], p_over[ok]),
            "model_auroc_same_samples": _auroc(y[index][ok], model_p[index][ok]),
            "twin_mae_inr_3d": round(float(np.nanmean(np.abs(inr_3d - y3))), 4)}
