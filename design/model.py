"""Response-surface models (statsmodels OLS on the coded factors), with the statistics a DoE report shows:
coefficients and effects, the ANOVA table (type II), R², adjusted R², Q² (from PRESS), lack of fit against pure
error (from the replicated points), and predictions with their confidence and prediction intervals.

Terms are named after the factors' short names (`percent_of_volume`, `percent_of_volume:temp_shift_day`,
`I(percent_of_volume ** 2)`); the coded units make coefficients comparable: an effect is the change from a
factor's low to its high end (twice its coefficient).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats

from design.study import Factor, StudyError

ORDERS = ("linear", "interaction", "quadratic")


def factor_columns(factors: tuple[Factor, ...]) -> list[str]:
    """Formula-safe column names: the factors' short names, or their full names with dots replaced when two
    short names collide."""
    shorts = [f.short for f in factors]
    if len(set(shorts)) == len(shorts):
        return shorts
    return [f.name.replace(".", "_") for f in factors]


def model_terms(factors: tuple[Factor, ...], order: str) -> list[str]:
    cols = factor_columns(factors)
    terms = list(cols)
    if order in ("interaction", "quadratic"):
        terms += [f"{a}:{b}" for a, b in combinations(cols, 2)]
    if order == "quadratic":
        terms += [f"I({c} ** 2)" for c, f in zip(cols, factors, strict=True) if not f.categorical]
    return terms


def supported_order(factors: tuple[Factor, ...], coded: np.ndarray) -> str:
    """The richest model the runs can estimate (no more terms than distinct points) with some residual degrees of
    freedom left: quadratic where every numeric factor was run at 3 or more levels, else interactions, else main
    effects."""
    n_levels = [len(np.unique(np.round(coded[:, j], 6))) for j, f in enumerate(factors) if not f.categorical]
    n_distinct = len(np.unique(np.round(coded, 6), axis=0))
    for order in ("quadratic", "interaction", "linear"):
        if order == "quadratic" and min(n_levels, default=0) < 3:
            continue
        n_params = len(model_terms(factors, order)) + 1
        if n_params <= n_distinct and n_params < len(coded):
            return order
    return "linear"


@dataclass
class ResponseModel:
    response: str
    order: str
    factors: tuple[Factor, ...]
    fit: sm.regression.linear_model.RegressionResultsWrapper
    coefficients: pd.DataFrame  # term, coefficient, std_err, t, p (coded units)
    anova: pd.DataFrame  # source, sum_sq, df, mean_sq, F, p: the terms, model, residual, lack of fit, pure error
    r2: float
    r2_adj: float
    q2: float
    press: float
    rmse: float
    n: int
    lack_of_fit_p: float | None  # None without replicated points (no pure error to test against)

    def frame(self, coded: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(np.atleast_2d(coded), columns=factor_columns(self.factors))

    def predict(self, coded: np.ndarray) -> np.ndarray:
        """The fitted surface at coded points (the terms evaluated directly: patsy's per-call cost would
        dominate an optimiser's thousands of calls)."""
        x = np.atleast_2d(coded)
        col = {c: x[:, j] for j, c in enumerate(factor_columns(self.factors))}
        out = np.zeros(len(x))
        for term, coef in self.fit.params.items():
            if term == "Intercept":
                out += coef
            elif term.startswith("I("):
                out += coef * col[term[2:].split(" ", 1)[0]] ** 2
            else:
                out += coef * np.prod([col[c] for c in term.split(":")], axis=0)
        return out

    def intervals(self, coded: np.ndarray, alpha: float = 0.05) -> pd.DataFrame:
        """mean, mean_ci_lower/upper (the expected response) and obs_ci_lower/upper (one new run)."""
        return self.fit.get_prediction(self.frame(coded)).summary_frame(alpha=alpha)

    @property
    def effects(self) -> pd.DataFrame:
        """Each term's effect: low to high end (2 x coefficient) for main effects and interactions, the
        curvature's centre-to-end drop for squared terms, with its p-value, largest first."""
        c = self.coefficients[self.coefficients["term"] != "Intercept"].copy()
        c["effect"] = np.where(c["term"].str.startswith("I("), c["coefficient"], 2 * c["coefficient"])
        return c.reindex(c["effect"].abs().sort_values(ascending=False).index)[["term", "effect", "p"]]


def _lack_of_fit(coded: np.ndarray, y: np.ndarray, sse: float, df_resid: float) -> tuple[list[dict], float | None]:
    _, point = np.unique(np.round(coded, 6), axis=0, return_inverse=True)
    groups = pd.Series(y).groupby(point.ravel())
    ss_pe = float(groups.transform(lambda g: (g - g.mean()) ** 2).sum())
    df_pe = len(y) - groups.ngroups
    df_lof = df_resid - df_pe
    if df_pe <= 0 or df_lof <= 0:
        return [], None
    ss_lof = sse - ss_pe
    f_lof = (ss_lof / df_lof) / (ss_pe / df_pe) if ss_pe > 0 else np.inf
    p = float(stats.f.sf(f_lof, df_lof, df_pe))
    return [{"source": "lack of fit", "sum_sq": ss_lof, "df": df_lof, "mean_sq": ss_lof / df_lof, "F": f_lof, "p": p},
            {"source": "pure error", "sum_sq": ss_pe, "df": df_pe, "mean_sq": ss_pe / df_pe, "F": np.nan,
             "p": np.nan}], p


def fit_response(factors: tuple[Factor, ...], coded: np.ndarray, y: np.ndarray, response: str,
                 order: str | None = None) -> ResponseModel:
    """Least squares on the coded factors; `order` linear, interaction or quadratic (default: the richest the
    runs support). Runs whose response is missing (NaN) are left out."""
    keep = np.isfinite(y)
    coded, y = coded[keep], y[keep]
    order = order or supported_order(factors, coded)
    if order not in ORDERS:
        raise StudyError(f"unknown model order {order!r}; allowed: {', '.join(ORDERS)}")
    terms = model_terms(factors, order)
    if len(terms) + 1 >= len(y):
        raise StudyError(f"{response}: {len(y)} runs cannot fit a {order} model of {len(terms) + 1} terms")
    if np.ptp(y) == 0:  # nothing to fit: statsmodels would divide by zero and report R² = -inf
        raise StudyError(f"{response}: every run gave {y[0]:g}; a response that does not vary has no effects "
                         "to estimate")
    data = pd.DataFrame(coded, columns=factor_columns(factors)).assign(y=y)
    fit = smf.ols("y ~ " + " + ".join(terms), data).fit()
    coef = pd.DataFrame({"term": fit.params.index, "coefficient": fit.params.values, "std_err": fit.bse.values,
                         "t": fit.tvalues.values, "p": fit.pvalues.values})
    table = sm.stats.anova_lm(fit, typ=2).reset_index(names="source")
    table = table.rename(columns={"PR(>F)": "p"})
    table["mean_sq"] = table["sum_sq"] / table["df"]
    ss_tot = float(((y - y.mean()) ** 2).sum())
    model_row = {"source": "model", "sum_sq": ss_tot - fit.ssr, "df": fit.df_model,
                 "mean_sq": (ss_tot - fit.ssr) / fit.df_model, "F": fit.fvalue, "p": fit.f_pvalue}
    lof_rows, lof_p = _lack_of_fit(coded, y, fit.ssr, fit.df_resid)
    anova = pd.concat([pd.DataFrame([model_row]), table.replace({"source": {"Residual": "residual"}}),
                       pd.DataFrame(lof_rows)], ignore_index=True)[["source", "sum_sq", "df", "mean_sq", "F", "p"]]
    hat = fit.get_influence().hat_matrix_diag
    press = float(np.sum((fit.resid / (1.0 - np.minimum(hat, 1 - 1e-12))) ** 2))
    return ResponseModel(response, order, factors, fit, coef, anova, float(fit.rsquared), float(fit.rsquared_adj),
                         1.0 - press / ss_tot if ss_tot > 0 else float("nan"), press, float(np.sqrt(fit.mse_resid)),
                         len(y), lof_p)
