"""`biopilot bench trial`: the in-silico trials' figures beside the published ones.

- One `eu_pact_twin` trial (standard, genotype-guided and twin-guided arms): mean TTR per arm (EU-PACT,
  Pirmohamed 2013: 60.3 % standard, 67.4 % genotype-guided; the twin arm is ours).
- Type I error: `trial power` on the `null_standard` design (both arms standard dosing), unadjusted and with
  PROCOVA, over `null_trials` trials of `patients_per_arm` per arm (target 0.04-0.06 at alpha 0.05; the rate's
  own standard error is 0.007 at 1,000 trials, 0.0034 at 4,000).
- The `eu_pact` design's own effect: genotype minus standard over the power simulations' pool (each patient under
  both arms; EU-PACT: +7.1 points).
- PROCOVA on `eu_pact`: the observed variance ratio beside 1 - rho^2, and the share of the sample size saved at
  80 % power (the simulated power curves' crossings; PROCOVA's claim: about rho^2).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trials import analysis, power
from trials.design import load_design
from trials.run import run_trial

CURVE_SIZES = (250, 500, 1000, 1500, 2000, 2500)  # patients per arm of the power curve, drawn from the pool


def run(patients_per_arm: int = 200, n_trials: int = 1000, null_trials: int = 4000, pool: int = 6000, seed: int = 0,
        curve_sizes: tuple[int, ...] = CURVE_SIZES, say: Callable[[str], None] = print) -> dict:
    t0 = time.perf_counter()
    say(f"eu_pact_twin: {patients_per_arm} patients per arm")
    trial = run_trial(load_design("eu_pact_twin"), patients_per_arm, seed)
    ttr = trial.results["endpoints"]["ttr"]
    arm, y = trial.course.arm, trial.endpoints.ttr * 100.0
    pair = (arm == 1) | (arm == 2)  # the twin arm against the genotype arm, the same test
    twin_vs_genotype = analysis.compare(y[pair], arm[pair] == 2).as_dict()
    twin_s = time.perf_counter() - t0
    say(f"null_standard: {null_trials} trials of {patients_per_arm} per arm")
    null = power.run(load_design("null_standard"), [patients_per_arm], null_trials, pool, seed, True)
    say(f"eu_pact power curve: {n_trials} trials at each of {list(curve_sizes)} per arm")
    curve = power.run(load_design("eu_pact"), list(curve_sizes), n_trials, pool, seed, True)
    return {
        "ttr_standard": round(ttr["per_arm"]["standard"]["mean"], 2),
        "ttr_genotype": round(ttr["per_arm"]["genotype"]["mean"], 2),
        "ttr_twin": round(ttr["per_arm"]["twin"]["mean"], 2),
        "ttr_genotype_minus_standard": ttr["vs_control"]["genotype"],
        "ttr_twin_minus_standard": ttr["vs_control"]["twin"], "ttr_twin_minus_genotype": twin_vs_genotype,
        "twin_refits": trial.results["twin"]["refits"], "twin_refit_s_mean": trial.results["twin"]["refit_s_mean"],
        "trial_s": round(twin_s, 1),
        "type1_error": null["power"][0], "type1_error_procova": null["power_procova"][0],
        "ttr_genotype_minus_standard_pool": curve["pool_effect"], "ttr_sd_pool": curve["pool_sd"],
        "variance_ratio": curve["observed_variance_ratio"], "expected_variance_ratio": curve["expected_variance_ratio"],
        "rho": curve["rho"], "rho_control": curve["rho_control"], "n_per_arm_80": curve["n_per_arm_80"],
        "n_per_arm_80_procova": curve["n_per_arm_80_procova"], "n_saved_share": curve["n_saved_share"],
        "power_curve": {"sizes": curve["sizes"], "power": curve["power"], "power_procova": curve["power_procova"]},
        "patients_per_arm": patients_per_arm, "n_trials": n_trials, "null_trials": null_trials, "pool": pool, "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
    }
