"""Power and type I error of a design over many simulated trials, vectorised.

One pool of patients is simulated once under each of the first two arms (control and experimental; the same
patients and random streams: each patient's two potential outcomes), and every trial draws 2n distinct patients
from it, the first n observed under control and the others under the experimental arm. So K trials cost two
simulations of the pool and K analyses done at once in numpy (`analysis.batch_effects`, checked against
statsmodels in the tests), and the arms of a trial never differ by the pools' chance imbalance (under a null
design the two outcomes of a patient are equal). With a pool much larger than a trial the draws follow the
population's distribution (a bootstrap from a simulated super-population); the pool size is a setting. With
`procova`, each trial is also analysed by ANCOVA on the prognostic score (`procova.train`, fitted on a separate
historical cohort).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from agents.figures import save_figure
from trials import analysis, procova
from trials.design import Design
from trials.endpoints import patient_endpoints
from trials.simulate import screen, simulate_course

POOL_SEED = 7919  # the pool's seed is the run's plus this: other patients than `trial run`'s with the same seed
TRIAL_CHUNK = 250  # trials analysed together (memory: chunk x pool)
POWER_TARGET = 0.8


def pool(design: Design, pool_size: int, seed: int, population_table: object = None
         ) -> tuple[object, np.ndarray, np.ndarray]:
    """(cohort, the primary endpoint under the first arm, under the second) of one pool of patients, each simulated under
    both arms with the same random streams (its potential outcomes); the patients evaluable in both."""
    pool_seed = seed + POOL_SEED
    cohort, _ = screen(design, pool_size, pool_seed, population_table)
    ttr = [patient_endpoints(design, simulate_course(design, cohort, np.full(pool_size, a), pool_seed)).primary
           for a in range(2)]
    keep = np.flatnonzero(~np.isnan(ttr[0]) & ~np.isnan(ttr[1]))
    return cohort.subset(keep), ttr[0][keep], ttr[1][keep]


def _draw(rng: np.random.Generator, k: int, pool: int, n: int) -> np.ndarray:
    """(k, n) indices: each row n distinct patients of the pool."""
    return np.argsort(rng.random((k, pool)), axis=1)[:, :n]


def run(design: Design, sizes: list[int], n_trials: int, pool_size: int, seed: int, use_procova: bool,
        historical_patients: int = procova.HISTORICAL_PATIENTS, population_table: object = None,
        progress: Callable[[int], None] | None = None) -> dict:
    alpha = design.endpoints.alpha
    cohort, y0, y1 = pool(design, pool_size, seed, population_table)
    if len(y0) < 2 * max(sizes):
        raise ValueError(f"the pool holds {len(y0)} evaluable patients, fewer than two arms of {max(sizes)}: "
                         "raise --pool")
    effect = float(y1.mean() - y0.mean())
    sd = float(np.sqrt((y0.var(ddof=1) + y1.var(ddof=1)) / 2))
    res: dict = {"design": design.name, "arms": [a.name for a in design.arms[:2]], "n_trials": n_trials,
                 "pool": pool_size, "seed": seed, "alpha": alpha, "pool_effect": round(effect, 4),
                 "pool_sd": round(sd, 4), "sizes": sizes, "power": [], "ci_width": []}
    s0 = s1 = None
    if use_procova:
        model = procova.train(design, seed, historical_patients)
        s0 = s1 = model.score(cohort)
        # the ANCOVA's slope is common to both arms, so what it removes is the score's correlation with the
        # outcome within arms, pooled; under control alone (PROCOVA's rho) it can be higher: the genotype-guided
        # arm takes away much of the genotype-driven variation the score predicts
        rho = float(np.corrcoef(np.r_[s0, s1], np.r_[y0 - y0.mean(), y1 - y1.mean()])[0, 1])
        res |= {"historical_patients": model.n_train, "model_r2_held_out": round(model.train_r2_held_out, 4),
                "rho": round(rho, 4), "rho_control": round(float(np.corrcoef(s0, y0)[0, 1]), 4), "expected_variance_ratio": round(1 - rho**2, 4), "power_procova": [],
                "ci_width_procova": [], "variance_ratio": []}
    rng = np.random.default_rng([seed, 31337])
    from scipy import stats

    for n in sizes:
        hits, hits_adj, widths, widths_adj, ratios = 0, 0, [], [], []
        for start in range(0, n_trials, TRIAL_CHUNK):
            k = min(TRIAL_CHUNK, n_trials - start)
            drawn = _draw(rng, k, len(y0), 2 * n)
            i0, i1 = drawn[:, :n], drawn[:, n:]
            eff, se, dof = analysis.batch_effects(y0[i0], y1[i1])
            hits += int((analysis.two_sided_p(eff, se, dof) < alpha).sum())
            widths.append(2 * stats.t.ppf(1 - alpha / 2, dof) * se)
            if use_procova:
                eff_a, se_a, dof_a = analysis.batch_effects(y0[i0], y1[i1], s0[i0], s1[i1])
                hits_adj += int((analysis.two_sided_p(eff_a, se_a, dof_a) < alpha).sum())
                widths_adj.append(2 * stats.t.ppf(1 - alpha / 2, dof_a) * se_a)
                ratios.append((se_a / se) ** 2)
            if progress:
                progress(k)
        res["power"].append(hits / n_trials)
        res["ci_width"].append(float(np.mean(np.concatenate(widths))))
        if use_procova:
            res["power_procova"].append(hits_adj / n_trials)
            res["ci_width_procova"].append(float(np.mean(np.concatenate(widths_adj))))
            res["variance_ratio"].append(float(np.mean(np.concatenate(ratios))))
    res["n_per_arm_80"] = _n_for_power(sizes, res["power"])
    res["n_per_arm_80_formula"] = round(procova.required_n_per_arm(effect, sd, alpha), 1) if effect else None
    if use_procova:
        res["n_per_arm_80_procova"] = _n_for_power(sizes, res["power_procova"])
        ratio = float(np.mean(res["variance_ratio"]))
        res["observed_variance_ratio"] = round(ratio, 4)
        res["n_per_arm_80_procova_formula"] = (round(procova.required_n_per_arm(effect, sd * np.sqrt(ratio), alpha),
                                                     1) if effect else None)
        a, b = res["n_per_arm_80"], res["n_per_arm_80_procova"]
        res["n_saved_share"] = round(1 - b / a, 4) if a and b else None
    return res


def _n_for_power(sizes: list[int], power: list[float], target: float = POWER_TARGET) -> float | None:
    """The size per arm where the simulated power curve crosses `target` (linear interpolation; None if it
    does not within the sizes)."""
    points = list(zip(sizes, power, strict=True))
    for (n_a, p_a), (n_b, p_b) in zip(points, points[1:], strict=False):
        if p_a < target <= p_b:
            return round(n_a + (target - p_a) * (n_b - n_a) / (p_b - p_a), 1)
    return float(sizes[0]) if power and power[0] >= target else None


def text_summary(res: dict) -> str:
    lines = [f"{res['design']}: {res['arms'][1]} vs {res['arms'][0]}, {res['n_trials']} trials per size from a "
             f"pool of {res['pool']}; pool difference {res['pool_effect']:+.2f} points (SD "
             f"{res['pool_sd']:.1f})"]
    head = "n per arm   power (t-test)" + ("   power (PROCOVA)   variance ratio" if "power_procova" in res else "")
    lines.append(head)
    for i, n in enumerate(res["sizes"]):
        row = f"{n:9d}   {res['power'][i]:14.3f}"
        if "power_procova" in res:
            row += f"   {res['power_procova'][i]:15.3f}   {res['variance_ratio'][i]:14.3f}"
        lines.append(row)
    if "rho" in res:
        lines.append(f"rho {res['rho']:.3f}: expected variance ratio 1 - rho^2 = {res['expected_variance_ratio']:.3f}, "
                     f"observed {res['observed_variance_ratio']:.3f}")
        lines.append(f"n per arm for 80 % power: {res['n_per_arm_80']} unadjusted, {res['n_per_arm_80_procova']} "
                     f"with PROCOVA (saved {res['n_saved_share']})")
    else:
        lines.append(f"n per arm for 80 % power: {res['n_per_arm_80']} (formula {res['n_per_arm_80_formula']})")
    return "\n".join(lines)


def plot_curve(res: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(res["sizes"], res["power"], "o-", label="t-test")
    if "power_procova" in res:
        ax.plot(res["sizes"], res["power_procova"], "s-", label="PROCOVA (ANCOVA on the prognostic score)")
    ax.axhline(POWER_TARGET, color="grey", lw=0.7, ls="--")
    ax.axhline(res["alpha"], color="grey", lw=0.7, ls=":")
    ax.set_xlabel("patients per arm")
    ax.set_ylabel("share of trials with p < alpha")
    ax.set_title(f"{res['design']}: {res['arms'][1]} vs {res['arms'][0]} ({res['n_trials']} trials per size)",
                 fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)
