"""What the outcome model must beat, trained in the same run on the same patients:
- logistic regression and gradient boosting (scikit-learn) per classification head on flattened features
  (`outcomes.linear_head.flatten`: per hourly series the mean of the last 24 h, of the whole window, the last
  hour, the 24-h min and max; the static covariates; the genotypes one-hot);
- the mechanistic twin's own forecast (`sources.patient.twin_fit`, as the flow refits it on every INR): the
  patient's twin fitted to the doses taken and INRs reported by `as_of`, the doses going on as the last one;
  P(INR >= 4 within 7 days) is the posterior's share of forecasts reaching 4, `inr_3d` its median 72 h ahead.
  A refit costs ~0.1-1 s, so the twin is scored on a subsample of the test patients (`TWIN_SAMPLES`), and the
  model's AUROC on that same subsample goes with it. For major bleeding, the twin's own bleeding forecast on
  every test sample (`twin_bleed_auroc`).

>>> import numpy as np
>>> _auroc(np.array([0.0, 1.0, 1.0, np.nan]), np.array([0.2, 0.9, 0.1, 0.5]))  # unlabelled samples skipped
0.5
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from outcomes.contract import CLASS_HEADS
from outcomes.dataset import OutcomeDataset
from outcomes.features import STATIC
from outcomes.linear_head import flatten, logistic_regression
from outcomes.performance_drift import labelled_auroc
from outcomes.twin_features import continued_doses, twin_inputs
from sources.patient.inr_events import OVER_INR
from sources.patient.twin_fit import fit_patient, simulate_inr

TWIN_SAMPLES = 120
TWIN_DRAWS = 100
TWIN_MAX_ITER = 40


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    return round(labelled_auroc(y, p), 4)


def tabular_baselines(train: OutcomeDataset, test: OutcomeDataset, seed: int = 0,
                      static_columns: int | None = None) -> dict[str, dict[str, float]]:
    """Per classification head: the test AUROC of logistic regression and of gradient boosting (on the first
    `static_columns` static inputs only, if given)."""
    xtr, xte = flatten(train.inputs, static_columns), flatten(test.inputs, static_columns)
    out = {}
    for h in CLASS_HEADS:
        y = train.labels[h]
        keep = ~np.isnan(y)
        res = {}
        if keep.any() and 0 < y[keep].sum() < keep.sum():
            models = {"logistic_regression": logistic_regression(),
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
        t = twin_inputs(arrays, row, ds.as_of_h[i])
        if t is None:
            continue
        try:
            fit = fit_patient(t.cov, t.dose_t_h, t.dose_mg, t.inr_t_h, t.inr, cl_factor_h=t.clearance,
                              max_iter=TWIN_MAX_ITER)
            times, doses = continued_doses(t)
            eta, w = fit.posterior_draws(TWIN_DRAWS)
            sims = simulate_inr(fit.params(eta), times, doses, t.now_h + np.arange(1.0, 169.0), t.clearance)
            p_over[j] = float(w @ (sims.max(axis=1) >= OVER_INR))
            order = np.argsort(sims[:, 71])
            inr_3d[j] = float(sims[order, 71][np.searchsorted(np.cumsum(w[order]), 0.5)])
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
    return p_over, inr_3d


def twin_bleed_auroc(test: OutcomeDataset) -> float:
    """The twin's own bleeding forecast ranking `major_bleed_14d` on every test sample: the posterior mean of
    ISCOAT's hazard along its 14-day INR forecast (`twin_features`: the grid, not a refit; no fit needed to rank)."""
    return _auroc(test.labels["major_bleed_14d"], test.inputs.static[:, STATIC.index("twin_bleed_log_rr_14d")])


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
