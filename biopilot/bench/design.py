"""`biopilot bench design`: how close a designed optimum comes to the true best, and for how many runs.

Ground truth, computed in the same run: an exhaustive grid of the study's factors (`levels` per factor) on the
twin without run-to-run variability, read by a perfect assay (`design.twin`, `truth=True`); `grid_best` is the
best goal among the grid's settings whose constraints hold. The design: the sequential mode (a space-filling
start, then Bayesian-optimisation batches) spending at most `budget_share` of the grid's runs on the twin as a lab
would see it (variability, assay errors, a seed per run); its recommended settings are then run without noise:
`design_best_true`, with whether their true constraints hold. Repeated with `repeats` design seeds (the design
sees noisy runs, so its answer varies): the JSON's figures are the median repeat's, every repeat is listed.
Beside it, the classical baseline: a face-centred central composite design with 3 centre points, a quadratic
model per response and its constrained optimum (`rsm_best_true`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import numpy as np

from design.analysis import analyse
from design.designs import propose
from design.sequential import run_sequential, start_runs
from design.study import Study, load_study
from design.twin import run_settings

TARGET_RATIO = 0.97
TARGET_SHARE = 0.05


def _settings(study: Study, coded: np.ndarray) -> list[dict[str, float | str]]:
    return [{f.name: f.decode(v) for f, v in zip(study.factors, row, strict=True)} for row in coded]


def _true_at(study: Study, settings: dict[str, float | str]) -> dict[str, float]:
    return {name: float(v[0]) for name, v in run_settings(study, [settings], [0], truth=True).items()}


def _holds(study: Study, responses: dict[str, float | np.ndarray]) -> np.ndarray | bool:
    ok = np.ones_like(np.asarray(responses[study.goal], dtype=float), dtype=bool)
    for c in study.constraints:
        ok &= np.asarray(c.slack(np.asarray(responses[c.response])) >= 0)
    return ok


def _within(study: Study, ratio: float) -> bool:
    """Within 3 % of the grid's best: at least 97 % of a maximum, at most 103 % of a minimum."""
    return ratio >= TARGET_RATIO if study.maximize else ratio <= 2.0 - TARGET_RATIO


MAX_GRID = 2_000_000  # settings of the exhaustive grid (11 levels x 3 factors: 1,331)


def run(study: str = "titer", levels: int = 11, budget_share: float = TARGET_SHARE, batch: int = 6,
        repeats: int = 7, seed: int = 0, say: Callable[[str], None] = lambda _: None) -> dict:
    st = load_study(study)
    sign = 1.0 if st.maximize else -1.0
    started = time.perf_counter()
    size = math.prod(2 if f.categorical else levels for f in st.factors)
    if size > MAX_GRID:  # checked before the grid is built: a few hundred levels would fill the memory
        raise ValueError(f"--levels {levels} makes a grid of {size:,} settings; at most {MAX_GRID:,}")
    budget = int(budget_share * size)
    start_runs(st, budget, batch)  # before the grid: a budget short of the design's start would refuse after it
    axes = [np.array([-1.0, 1.0]) if f.categorical else np.linspace(-1, 1, levels) for f in st.factors]
    grid = np.array(list(itertools.product(*axes)))
    say(f"grid: {len(grid)} noise-free runs")
    truth = run_settings(st, _settings(st, grid), np.zeros(len(grid), int), truth=True,
                         progress=lambda n: say(f"  grid {n}/{len(grid)}"))
    ok = _holds(st, truth)
    if not ok.any():
        raise ValueError(f"no grid setting of study {st.name} meets its constraints")
    best_i = int(np.argmax(np.where(ok, sign * truth[st.goal], -np.inf)))
    grid_best = float(truth[st.goal][best_i])
    grid_s = time.perf_counter() - started

    def evaluate(coded: np.ndarray, seeds: np.ndarray) -> dict[str, np.ndarray]:
        return run_settings(st, _settings(st, coded), seeds)

    trials = []
    for r in range(repeats):
        say(f"sequential design {r + 1}/{repeats}: {budget} runs in batches of {batch}")
        t0 = time.perf_counter()
        res = run_sequential(st, evaluate, budget, batch, seed=seed + r)
        true = _true_at(st, res.optimum.settings)
        trials.append({"seed": seed + r, "runs_used": len(res.coded), "settings": res.optimum.settings,
                       "predicted": res.optimum.predicted[st.goal], "design_best_true": true[st.goal],
                       "ratio": true[st.goal] / grid_best, "constraints_hold_true": bool(_holds(st, true)),
                       "seconds": round(time.perf_counter() - t0, 1)})
    median = sorted(trials, key=lambda t: sign * t["design_best_true"])[len(trials) // 2]

    say("classical baseline: face-centred central composite design")
    sheet = propose(st, "ccf", centre_points=3, seed=seed)
    rsm = analyse(sheet, evaluate(sheet.coded, sheet.seeds), confirmation_runs=1, seed=seed)
    rsm_true = _true_at(st, rsm.optimum.settings)
    ratio = median["design_best_true"] / grid_best
    return {
        "study": st.name, "goal": st.goal, "constraints": [str(c) for c in st.constraints],
        "factors": {f.name: list(f.levels) if f.categorical else [f.low, f.high] for f in st.factors},
        "levels": levels, "grid_runs": len(grid), "grid_best": grid_best,
        "grid_best_settings": _settings(st, grid[best_i:best_i + 1])[0], "grid_feasible_share": float(ok.mean()),
        "design": f"sequential (Bayesian optimisation, batches of {batch})",
        "design_best_true": median["design_best_true"], "runs_used": median["runs_used"],
        "ratio": ratio, "runs_share": median["runs_used"] / len(grid),
        "constraints_hold_true": median["constraints_hold_true"],
        "goal_met": bool(_within(st, ratio) and median["runs_used"] <= TARGET_SHARE * len(grid)
                         and median["constraints_hold_true"]),
        "repeats": trials,
        "repeats_within_3pct": sum(_within(st, t["ratio"]) and t["constraints_hold_true"] for t in trials),
        "rsm_runs_used": len(sheet.coded), "rsm_best_true": rsm_true[st.goal],
        "rsm_ratio": rsm_true[st.goal] / grid_best, "rsm_constraints_hold_true": bool(_holds(st, rsm_true)),
        "rsm_settings": rsm.optimum.settings,
        "grid_seconds": round(grid_s, 1), "seconds": round(time.perf_counter() - started, 1),
    }


def markdown(res: dict) -> str:
    rows = "\n".join(f"| {t['seed']} | {t['runs_used']} | {t['design_best_true']:.3f} | {t['ratio']:.3f} | "
                     f"{'yes' if t['constraints_hold_true'] else 'no'} |" for t in res["repeats"])
    return (f"# bench design: {res['study']}\n\n"
            f"Grid: {res['grid_runs']} settings ({res['levels']} levels per factor), best {res['goal']} "
            f"{res['grid_best']:.3f} with {', '.join(res['constraints'])}.\n\n"
            f"Sequential design, median of {len(res['repeats'])} seeds: true {res['design_best_true']:.3f} "
            f"({res['ratio']:.1%} of the grid's best) with {res['runs_used']} runs "
            f"({res['runs_share']:.1%} of the grid's); goal met: {res['goal_met']}.\n\n"
            "| seed | runs | true goal at the recommendation | of grid best | constraints hold |\n"
            f"|---|---|---|---|---|\n{rows}\n\n"
            f"Classical baseline (face-centred CCD, quadratic models): true {res['rsm_best_true']:.3f} "
            f"({res['rsm_ratio']:.1%}) with {res['rsm_runs_used']} runs.")
