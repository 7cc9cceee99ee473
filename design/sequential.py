"""Sequential design: Bayesian optimisation that spends a run budget batch by batch.

A space-filling start (Latin hypercube) is run first; then each batch is chosen by a Gaussian-process surrogate
per response (sklearn, Matérn 5/2 with a noise term, so replicates' scatter is learnt, not interpolated): the
expected improvement of the goal over the best feasible prediction so far, times the probability that every
constraint holds. A batch is made one run at a time, each chosen run added to the surrogates at its predicted
value with their hyperparameters held (the "kriging believer"), so the batch spreads instead of piling on one
point. The last batch is a star around the surrogates' optimum (the curvature where it matters). The
recommendation is the constrained optimum of the surrogates' means (`design.optimize`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm, qmc
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from design.optimize import Optimum, constrained_optimum
from design.study import Study, StudyError

Evaluate = Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]  # (coded runs, seeds) -> responses
CANDIDATES = 4096
STAR_STEP = 0.15  # coded: 7.5 % of a factor's range
LOCAL_CANDIDATES = 1024  # around the leading runs: the last percent of the goal is found there


@dataclass
class SequentialResult:
    coded: np.ndarray  # every run so far, in the order run
    responses: dict[str, np.ndarray]
    batch_of_run: np.ndarray  # 0 = the space-filling start
    optimum: Optimum
    surrogates: dict[str, GaussianProcessRegressor] = field(repr=False, default_factory=dict)


def _surrogate(x: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
    k = x.shape[1]
    kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.full(k, 0.7), (0.05, 20.0), nu=2.5)
              + WhiteKernel(0.05, (1e-6, 1.0)))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gp.fit(x, y)


def _believer(gp: GaussianProcessRegressor, x: np.ndarray, y: np.ndarray) -> GaussianProcessRegressor:
    """The surrogate refit on more points with its hyperparameters held."""
    held = GaussianProcessRegressor(gp.kernel_, normalize_y=True, optimizer=None)
    return held.fit(x, y)


def _snap(study: Study, x: np.ndarray) -> np.ndarray:
    """Categorical factors at their levels (-1, +1)."""
    for j, f in enumerate(study.factors):
        if f.categorical:
            x[:, j] = np.where(x[:, j] > 0, 1.0, -1.0)
    return x


def acquisition(study: Study, gps: dict[str, GaussianProcessRegressor], x: np.ndarray, best: float) -> np.ndarray:
    """Expected improvement of the goal over `best` times the probability that every constraint holds."""
    sign = 1.0 if study.maximize else -1.0
    mean, sd = gps[study.goal].predict(x, return_std=True)
    z = (sign * mean - best) / np.maximum(sd, 1e-12)
    ei = (sign * mean - best) * norm.cdf(z) + sd * norm.pdf(z)
    for c in study.constraints:
        m, s = gps[c.response].predict(x, return_std=True)
        ei *= norm.cdf(c.slack(m) / np.maximum(s, 1e-12))
    return ei


def _best_feasible(study: Study, gps: dict[str, GaussianProcessRegressor], x: np.ndarray) -> float:
    """The best goal prediction among the runs so far whose constraint predictions hold (the incumbent)."""
    sign = 1.0 if study.maximize else -1.0
    goal = sign * gps[study.goal].predict(x)
    ok = np.ones(len(x), bool)
    for c in study.constraints:
        ok &= c.slack(gps[c.response].predict(x)) >= 0
    return float(goal[ok].max()) if ok.any() else float(goal.min())


def _leaders(study: Study, gps: dict[str, GaussianProcessRegressor], x: np.ndarray, n: int = 3) -> np.ndarray:
    """The runs with the best goal predictions among those predicted feasible (all runs if none is): the local
    candidates are drawn around them, so a second promising region keeps being refined beside the first."""
    sign = 1.0 if study.maximize else -1.0
    goal = sign * gps[study.goal].predict(x)
    ok = np.ones(len(x), bool)
    for c in study.constraints:
        ok &= c.slack(gps[c.response].predict(x)) >= 0
    pool = np.flatnonzero(ok) if ok.any() else np.arange(len(x))
    return x[pool[np.argsort(-goal[pool])[:n]]]


def _expected_improvement_batch(study: Study, gps: dict[str, GaussianProcessRegressor], x: np.ndarray,
                                responses: dict[str, np.ndarray], names: list[str], size: int,
                                rng: np.random.Generator) -> np.ndarray:
    """`size` runs, each the candidate of highest constrained expected improvement once the ones before it
    are believed at their predictions."""
    k = x.shape[1]
    chosen = []
    believed_x, believed = x.copy(), {n: responses[n].copy() for n in names}
    held = gps
    for _ in range(size):
        best = _best_feasible(study, held, believed_x)
        leaders = _leaders(study, held, believed_x)
        local = leaders[rng.integers(0, len(leaders), LOCAL_CANDIDATES)]
        cands = np.vstack([qmc.Sobol(d=k, scramble=True, seed=rng).random(CANDIDATES) * 2 - 1,
                           np.clip(local + rng.normal(0, 0.15, (LOCAL_CANDIDATES, k)), -1, 1)])
        cands = _snap(study, cands)
        pick = cands[int(np.argmax(acquisition(study, held, cands, best)))]
        chosen.append(pick)
        believed_x = np.vstack([believed_x, pick])
        for n in names:
            believed[n] = np.append(believed[n], held[n].predict(pick[None])[0])
        held = {n: _believer(gps[n], believed_x, believed[n]) for n in names}
    return np.array(chosen)


def _star(study: Study, gps: dict[str, GaussianProcessRegressor], x: np.ndarray, size: int,
          seed: int) -> np.ndarray:
    """The last batch: a star around the surrogates' optimum (each numeric factor a step either side, then the
    optimum itself), which pins down the curvature where the recommendation is made, as a practitioner
    augments a design around its optimum before confirming it."""
    centre = constrained_optimum(study, {n: gp.predict for n, gp in gps.items()}, seed).coded
    points = []
    for j, f in enumerate(study.factors):
        if not f.categorical:
            for step in (-STAR_STEP, STAR_STEP):
                p = centre.copy()
                p[j] = np.clip(p[j] + step, -1.0, 1.0)
                points.append(p)
    points.append(centre)
    points += [centre] * max(0, size - len(points))
    return np.array(points[:size])


def start_runs(study: Study, budget: int, batch: int, initial: int | None = None) -> int:
    """The space-filling start's runs (`initial`, default max(4k, batch)); a StudyError if `budget` does not cover
    them (callers check it before their own work too)."""
    initial = initial or max(4 * len(study.factors), batch)
    if initial > budget:
        raise StudyError(f"the run budget ({budget}) must cover the space-filling start ({initial} runs)")
    return initial


def run_sequential(study: Study, evaluate: Evaluate, budget: int, batch: int, initial: int | None = None,
                   seed: int = 0, progress: Callable[[int, float], None] | None = None) -> SequentialResult:
    """Spend `budget` runs: `initial` space-filling ones (`start_runs`), then batches of `batch`, the last a star
    around the surrogates' optimum.
    `progress(runs_done, incumbent)` after each batch."""
    k = len(study.factors)
    initial = start_runs(study, budget, batch, initial)
    rng = np.random.default_rng([seed, 2803])
    x = _snap(study, qmc.LatinHypercube(d=k, seed=rng).random(initial) * 2 - 1)
    seeds = rng.choice(2**31 - 1, size=budget, replace=False)
    responses = evaluate(x, seeds[:initial])
    batches = np.zeros(initial, dtype=int)
    names = [study.goal, *dict.fromkeys(c.response for c in study.constraints)]
    number = 0
    while len(x) < budget:
        number += 1
        gps = {n: _surrogate(x, responses[n]) for n in names}
        size = min(batch, budget - len(x))
        if len(x) + size >= budget and size >= 2:
            new = _star(study, gps, x, size, seed)
        else:
            new = _expected_improvement_batch(study, gps, x, responses, names, size, rng)
        got = evaluate(new, seeds[len(x): len(x) + len(new)])
        x = np.vstack([x, new])
        responses = {n: np.concatenate([responses[n], got[n]]) for n in responses}
        batches = np.concatenate([batches, np.full(len(new), number)])
        if progress:
            progress(len(x), _best_feasible(study, gps, x))
    gps = {n: _surrogate(x, responses[n]) for n in names}
    predictors = {n: gp.predict for n, gp in gps.items()}
    return SequentialResult(x, responses, batches, constrained_optimum(study, predictors, seed), gps)
