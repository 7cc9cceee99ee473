"""The pre-specified analyses: per arm n, mean and SD; each arm against the first (the control) as a difference
with its 95 % CI and p-value; time-to-event endpoints by Kaplan-Meier, hazard ratio (Cox) and log-rank test
(lifelines).

- Continuous endpoints (TTR, share of INRs >= 4): ordinary least squares of the outcome on the arm (the
  two-sample t-test with a pooled variance), or with `score` the ANCOVA on the prognostic score (PROCOVA:
  Schuler A et al., Int J Biostat 2022;18:329): `outcome ~ arm + score` (statsmodels).
- `batch_effects`: the same two estimates for many trials at once (numpy, closed form), for `trial power`.

>>> y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # pooled SD 1: SE sqrt(2/3), t 3.674 on 4 df
>>> r = compare(y, np.array([0, 0, 0, 1, 1, 1]))
>>> round(r.difference, 3), round(r.ci_low, 3), round(r.ci_high, 3), round(r.p_value, 4)
(3.0, 0.733, 5.267, 0.0213)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float
    residual_variance: float
    test: str

    def as_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(y: np.ndarray, treated: np.ndarray, score: np.ndarray | None = None, alpha: float = 0.05
            ) -> Comparison:
    """OLS of `y` on the treatment indicator (and the prognostic `score`): the treatment's coefficient with its
    (1 - alpha) CI and two-sided p-value. Rows with a missing outcome are left out (complete cases)."""
    import statsmodels.api as sm

    y, treated = np.asarray(y, float), np.asarray(treated, float)
    keep = ~np.isnan(y)
    cols = [np.ones(keep.sum()), treated[keep]] + ([] if score is None else [np.asarray(score, float)[keep]])
    test = "ANCOVA on the prognostic score" if score is not None else "t-test (OLS)"
    arms = treated[keep].astype(bool)
    if keep.sum() - len(cols) < 1 or arms.all() or not arms.any():
        # no residual degree of freedom (one patient per arm) or an empty arm: no interval, not a
        # divide-by-zero warning and a NaN from statsmodels
        difference = float(y[keep][arms].mean() - y[keep][~arms].mean()) if arms.any() and not arms.all() \
            else float("nan")
        return Comparison(difference, *[float("nan")] * 5, test)
    fit = sm.OLS(y[keep], np.column_stack(cols)).fit()
    lo, hi = fit.conf_int(alpha)[1]
    return Comparison(float(fit.params[1]), float(lo), float(hi), float(fit.pvalues[1]), float(fit.bse[1]),
                      float(fit.scale), test)


def describe(y: np.ndarray) -> dict:
    y = np.asarray(y, float)
    y = y[~np.isnan(y)]
    return {"n": int(len(y)), "mean": float(y.mean()) if len(y) else float("nan"),
            "sd": float(y.std(ddof=1)) if len(y) > 1 else float("nan")}


def proportions(events: np.ndarray, treated: np.ndarray, alpha: float = 0.05) -> Comparison:
    """Risk difference (treated - control) with a Wald CI and the two-proportion z-test's p-value."""
    e, t = np.asarray(events, bool), np.asarray(treated, bool)
    p1, p0, n1, n0 = e[t].mean(), e[~t].mean(), t.sum(), (~t).sum()
    se = float(np.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0))
    z = stats.norm.ppf(1 - alpha / 2)
    pooled = e.mean()
    se0 = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p = float(2 * stats.norm.sf(abs(p1 - p0) / se0)) if se0 > 0 else 1.0
    return Comparison(float(p1 - p0), float(p1 - p0 - z * se), float(p1 - p0 + z * se), p, se, float("nan"),
                      "two-proportion z-test")


@dataclass(frozen=True)
class SurvivalResult:
    median_days: dict[str, float]  # per arm (inf: not reached)
    events: dict[str, int]
    hazard_ratio: float
    hr_ci_low: float
    hr_ci_high: float
    p_value: float  # log-rank
    curves: dict[str, tuple[list[float], list[float]]]  # per arm (timeline, survival)


def survival(time_days: np.ndarray, event: np.ndarray, treated: np.ndarray, names: tuple[str, str],
             alpha: float = 0.05) -> SurvivalResult:
    """Kaplan-Meier per arm, the Cox hazard ratio of treated vs control and the log-rank p-value."""
    from lifelines import CoxPHFitter, KaplanMeierFitter
    from lifelines.statistics import logrank_test

    t, e, tr = np.asarray(time_days, float), np.asarray(event, bool), np.asarray(treated, bool)
    medians, counts, curves = {}, {}, {}
    for name, mask in ((names[0], ~tr), (names[1], tr)):
        km = KaplanMeierFitter().fit(t[mask], e[mask])
        medians[name] = float(km.median_survival_time_)
        counts[name] = int(e[mask].sum())
        sf = km.survival_function_.iloc[:, 0]
        curves[name] = (sf.index.to_numpy(float).tolist(), sf.to_numpy(float).tolist())
    hr = lo = hi = float("nan")
    if e[tr].any() and e[~tr].any():
        import pandas as pd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cox = CoxPHFitter().fit(pd.DataFrame({"t": t, "e": e, "treated": tr.astype(float)}), "t", "e")
        with np.errstate(over="ignore"):  # a few events: the bound is infinite, reported as such
            hr = float(np.exp(cox.params_["treated"]))
            lo, hi = (float(np.exp(v)) for v in cox.confidence_intervals_.loc["treated"])
    p = float(logrank_test(t[~tr], t[tr], e[~tr], e[tr]).p_value) if e.any() else 1.0
    return SurvivalResult(medians, counts, hr, lo, hi, p, curves)


def batch_effects(y_control: np.ndarray, y_treated: np.ndarray, s_control: np.ndarray | None = None,
                  s_treated: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For K trials at once (rows: (K, n0) and (K, n1) outcomes, complete cases): the treatment effect, its
    standard error and the residual degrees of freedom of the OLS (with scores: the ANCOVA) - the same numbers
    `compare` gives one trial at a time."""
    n0, n1 = y_control.shape[1], y_treated.shape[1]
    if s_control is None:
        diff = y_treated.mean(axis=1) - y_control.mean(axis=1)
        dof = n0 + n1 - 2
        pooled = (((y_control - y_control.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
                  + ((y_treated - y_treated.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)) / dof
        return diff, np.sqrt(pooled * (1 / n0 + 1 / n1)), np.full(len(diff), dof)
    y = np.hstack([y_control, y_treated])
    x = np.stack([np.ones_like(y), np.hstack([np.zeros_like(y_control), np.ones_like(y_treated)]),
                  np.hstack([s_control, s_treated])], axis=2)  # (K, n, 3)
    xtx = np.einsum("kni,knj->kij", x, x)
    xty = np.einsum("kni,kn->ki", x, y)
    beta = np.linalg.solve(xtx, xty[..., None])[..., 0]
    resid = y - np.einsum("kni,ki->kn", x, beta)
    dof = y.shape[1] - 3
    sigma2 = (resid ** 2).sum(axis=1) / dof
    se = np.sqrt(sigma2 * np.linalg.inv(xtx)[:, 1, 1])
    return beta[:, 1], se, np.full(len(se), dof)


def two_sided_p(effect: np.ndarray, se: np.ndarray, dof: np.ndarray) -> np.ndarray:
    return 2 * stats.t.sf(np.abs(effect / se), dof)
