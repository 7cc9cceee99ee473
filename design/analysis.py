"""A run sheet's results analysed: a response-surface model per response, the constrained optimum of the
models, and the confirmation runs at it with the prediction interval they should fall in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from design.designs import RunSheet
from design.model import ResponseModel, fit_response
from design.optimize import Optimum, confirmation_sheet, constrained_optimum
from design.study import Study


@dataclass
class Analysis:
    sheet: RunSheet
    observed: dict[str, np.ndarray]
    models: dict[str, ResponseModel]
    optimum: Optimum
    goal_interval: dict[str, float]  # the goal's 95 % CI of the mean and PI of one run at the optimum
    confirmation: RunSheet

    @property
    def study(self) -> Study:
        return self.sheet.study


def analyse(sheet: RunSheet, observed: dict[str, np.ndarray], order: str | None = None,
            confirmation_runs: int = 3, seed: int = 0) -> Analysis:
    study = sheet.study
    models = {r.name: fit_response(study.factors, sheet.coded, observed[r.name], r.name, order)
              for r in study.responses}
    predictors = {name: m.predict for name, m in models.items()}
    optimum = constrained_optimum(study, predictors, seed)
    frame = models[study.goal].intervals(optimum.coded)
    interval = {key: float(frame[key].iloc[0]) for key in ("mean", "mean_ci_lower", "mean_ci_upper", "obs_ci_lower",
                                                          "obs_ci_upper")}
    return Analysis(sheet, observed, models, optimum, interval,
                    confirmation_sheet(study, optimum, confirmation_runs, seed + 1))


def confirmation_verdict(analysis: Analysis, observed_goal: np.ndarray) -> dict[str, float | bool]:
    """The confirmation runs' mean beside the model's interval for the mean of that many runs: confirmed when
    it falls inside (each run alone should fall in the prediction interval 95 % of the time)."""
    model = analysis.models[analysis.study.goal]
    n = len(observed_goal)
    mean_se = float(np.sqrt(model.fit.mse_resid / n + (analysis.goal_interval["mean_ci_upper"]
                                                       - analysis.goal_interval["mean"]) ** 2 / 1.96 ** 2))
    lo, hi = analysis.goal_interval["mean"] - 1.96 * mean_se, analysis.goal_interval["mean"] + 1.96 * mean_se
    mean = float(np.mean(observed_goal))
    return {"runs": n, "observed_mean": mean, "expected_lo": lo, "expected_hi": hi, "confirmed": bool(lo <= mean <= hi),
            "runs_in_prediction_interval": int(np.sum((observed_goal >= analysis.goal_interval["obs_ci_lower"])
                                                      & (observed_goal <= analysis.goal_interval["obs_ci_upper"])))}
