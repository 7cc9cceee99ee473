"""The constrained optimum of fitted response models inside the factors' ranges (coded -1..+1), and the
confirmation runs that check it.

A Sobol set of candidates finds the best feasible region; SLSQP (scipy.optimize.minimize) polishes the best
few, each categorical factor held at each of its levels. Any model works: `predictors` maps a response to a
function of coded points (a fitted quadratic, a Gaussian process's mean).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import optimize
from scipy.stats import qmc

from design.designs import RunSheet
from design.study import Study

Predictor = Callable[[np.ndarray], np.ndarray]
CANDIDATES = 2048
POLISHED = 5


@dataclass(frozen=True)
class Optimum:
    coded: np.ndarray
    settings: dict[str, float | str]
    predicted: dict[str, float]  # every response's prediction at the optimum
    feasible: bool  # every constraint holds on the predictions


def _objective(study: Study, predictors: dict[str, Predictor], x: np.ndarray) -> np.ndarray:
    value = predictors[study.goal](x)
    return value if study.maximize else -value


def _slack(study: Study, predictors: dict[str, Predictor], x: np.ndarray) -> np.ndarray:
    """(points, constraints) slack of each constraint; >= 0 where it holds."""
    if not study.constraints:
        return np.zeros((len(np.atleast_2d(x)), 0))
    return np.column_stack([c.slack(predictors[c.response](x)) for c in study.constraints])


def constrained_optimum(study: Study, predictors: dict[str, Predictor], seed: int = 0) -> Optimum:
    """The settings that maximise (or minimise) the goal's prediction with every constraint's prediction
    holding; if none holds anywhere, the settings that come closest to holding them (`feasible` false)."""
    k = len(study.factors)
    categorical = [j for j, f in enumerate(study.factors) if f.categorical]
    numeric = [j for j in range(k) if j not in categorical]
    unit = qmc.Sobol(d=max(len(numeric), 1), scramble=True, seed=seed).random(CANDIDATES) * 2 - 1
    best: tuple[float, np.ndarray] | None = None
    for levels in product((-1.0, 1.0), repeat=len(categorical)):
        cands = np.zeros((CANDIDATES, k))
        cands[:, numeric] = unit[:, : len(numeric)]
        cands[:, categorical] = levels
        value = _objective(study, predictors, cands)
        worst = _slack(study, predictors, cands).min(axis=1, initial=0.0)
        # feasible candidates rank by the goal; infeasible ones after, by how far they miss
        score = np.where(worst >= 0, value, -1e12 + worst)
        for i in np.argsort(-score)[:POLISHED]:
            x = _polish(study, predictors, cands[i], numeric) if numeric else cands[i]
            worst_x = _slack(study, predictors, x[None]).min(initial=0.0)
            s = float(_objective(study, predictors, x[None])[0]) if worst_x >= -1e-9 else -1e12 + worst_x
            if best is None or s > best[0]:
                best = (s, x)
    assert best is not None
    x = best[1]
    predicted = {r.name: float(predictors[r.name](x[None])[0]) for r in study.responses if r.name in predictors}
    settings = {f.name: f.decode(v) for f, v in zip(study.factors, x, strict=True)}
    return Optimum(x, settings, predicted, best[0] > -1e11)


def _polish(study: Study, predictors: dict[str, Predictor], x0: np.ndarray, numeric: list[int]) -> np.ndarray:
    def full(z: np.ndarray) -> np.ndarray:
        x = x0.copy()
        x[numeric] = z
        return x[None]

    constraints = [{"type": "ineq", "fun": lambda z, j=j: _slack(study, predictors, full(z))[0, j]}
                   for j in range(len(study.constraints))]
    res = optimize.minimize(lambda z: -float(_objective(study, predictors, full(z))[0]), x0[numeric],
                            method="SLSQP", bounds=[(-1.0, 1.0)] * len(numeric), constraints=constraints,
                            options={"maxiter": 200, "ftol": 1e-9})
    x = full(np.clip(res.x, -1.0, 1.0))[0]
    # SLSQP can end on an infeasible point; keep the start then
    if _slack(study, predictors, x[None]).min(initial=0.0) < -1e-9 <= _slack(study, predictors, x0[None]).min(
            initial=0.0):
        return x0
    return x


def confirmation_sheet(study: Study, optimum: Optimum, runs: int = 3, seed: int = 1) -> RunSheet:
    """`runs` replicate runs at the optimum, each with its own seed: what a lab runs to confirm it."""
    seeds = np.random.default_rng([seed, 28]).choice(2**31 - 1, size=runs, replace=False)
    return RunSheet(study, "confirmation", np.tile(optimum.coded, (runs, 1)), np.full(runs, 1),
                    ["confirmation"] * runs, seeds)
