"""The plots a DoE report shows: main effects (the prediction profiler), an interaction, a contour of the goal
with the constraints' limits, predicted against observed, and a sequential design's progress. Each returns a
matplotlib figure; `save` writes one as PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file backend
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from design.study import Study  # noqa: E402

Predictor = Callable[[np.ndarray], np.ndarray]
STEPS = 41


def _axis_values(study: Study, j: int, coded: np.ndarray) -> np.ndarray:
    f = study.factors[j]
    return np.array([f.decode(c) if not f.categorical else c for c in coded], dtype=float)


def _label(study: Study, j: int) -> str:
    f = study.factors[j]
    return f"{f.name} ({f.levels[0]} / {f.levels[1]})" if f.categorical else f.name


def main_effects(study: Study, predict: Predictor, response: str, at: np.ndarray) -> Figure:
    """The response along each factor, the others held at `at` (coded): the prediction profiler."""
    k = len(study.factors)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.0), sharey=True, squeeze=False)
    for j, ax in enumerate(axes[0]):
        line = np.linspace(-1, 1, 2 if study.factors[j].categorical else STEPS)
        x = np.tile(at, (len(line), 1))
        x[:, j] = line
        ax.plot(_axis_values(study, j, line), predict(x), color="tab:blue")
        ax.axvline(_axis_values(study, j, at[j:j + 1])[0], color="grey", lw=0.8, ls=":")
        ax.set_xlabel(_label(study, j), fontsize=8)
    axes[0][0].set_ylabel(response)
    fig.suptitle(f"main effects on {response} (others at the optimum)", fontsize=10)
    fig.tight_layout()
    return fig


def interaction(study: Study, predict: Predictor, response: str, a: int, b: int, at: np.ndarray) -> Figure:
    """The response along factor `a` with factor `b` at its low and high ends: parallel lines, no interaction."""
    fig, ax = plt.subplots(figsize=(4.5, 3.3))
    line = np.linspace(-1, 1, STEPS)
    for level, color in ((-1.0, "tab:blue"), (1.0, "tab:red")):
        x = np.tile(at, (STEPS, 1))
        x[:, a], x[:, b] = line, level
        ax.plot(_axis_values(study, a, line), predict(x), color=color,
                label=f"{study.factors[b].short} = {study.factors[b].decode(level)}")
    ax.set_xlabel(_label(study, a))
    ax.set_ylabel(response)
    ax.legend(fontsize=8)
    ax.set_title(f"interaction {study.factors[a].short} x {study.factors[b].short}", fontsize=10)
    fig.tight_layout()
    return fig


def contour(study: Study, predictors: dict[str, Predictor], a: int, b: int, at: np.ndarray,
            runs: np.ndarray | None = None) -> Figure:
    """The goal over factors `a` and `b` (others at `at`), each constraint's limit drawn with its infeasible side
    hatched, the runs and the optimum marked."""
    g = np.linspace(-1, 1, STEPS)
    ga, gb = np.meshgrid(g, g)
    x = np.tile(at, (ga.size, 1))
    x[:, a], x[:, b] = ga.ravel(), gb.ravel()
    xa, xb = _axis_values(study, a, g), _axis_values(study, b, g)
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    cs = ax.contourf(xa, xb, predictors[study.goal](x).reshape(ga.shape), levels=14, cmap="viridis")
    fig.colorbar(cs, ax=ax, label=study.goal)
    for c in study.constraints:
        if c.response in predictors:
            value = predictors[c.response](x).reshape(ga.shape)
            ax.contour(xa, xb, value, levels=[c.limit], colors="white", linewidths=1.5)
            ax.contourf(xa, xb, -np.asarray(c.slack(value)), levels=[0, np.inf], colors="none", hatches=["//"])
    if runs is not None and len(runs):
        ax.scatter(_axis_values(study, a, runs[:, a]), _axis_values(study, b, runs[:, b]), s=12, c="black",
                   label="runs")
    ax.scatter(_axis_values(study, a, at[a:a + 1]), _axis_values(study, b, at[b:b + 1]), marker="*", s=160,
               c="red", label="optimum")
    ax.set_xlabel(_label(study, a))
    ax.set_ylabel(_label(study, b))
    ax.legend(fontsize=8, loc="lower right")
    limits = ", ".join(str(c) for c in study.constraints)
    ax.set_title(f"{study.goal}" + (f" (hatched: {limits} fails)" if limits else ""), fontsize=9)
    fig.tight_layout()
    return fig


def predicted_vs_observed(observed: np.ndarray, predicted: np.ndarray, response: str) -> Figure:
    fig, ax = plt.subplots(figsize=(4.0, 4.0))
    ax.scatter(observed, predicted, s=14)
    lo, hi = float(np.nanmin([observed, predicted])), float(np.nanmax([observed, predicted]))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlabel(f"observed {response}")
    ax.set_ylabel(f"predicted {response}")
    ax.set_title("predicted vs observed", fontsize=10)
    fig.tight_layout()
    return fig


def progress(goal: np.ndarray, batch_of_run: np.ndarray, response: str, maximize: bool = True) -> Figure:
    """Each run's goal by batch, and the best so far."""
    fig, ax = plt.subplots(figsize=(5.0, 3.2))
    ax.scatter(np.arange(1, len(goal) + 1), goal, c=batch_of_run, cmap="tab10", s=14)
    best = np.maximum.accumulate(goal) if maximize else np.minimum.accumulate(goal)
    ax.step(np.arange(1, len(goal) + 1), best, where="post", color="black", lw=1, label="best measured run so far (noise included)")
    ax.set_xlabel("run (colour: batch; 0 = space-filling start)")
    ax.set_ylabel(response)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
