"""`biopilot bench cohort`: the synthetic-cohort generator and its gate on a simulated cohort.

The real table is the `patients` table of `draw_cohort(patients, seed)` (covariates, baseline vitals and the
true warfarin and metoprolol parameters; ids left out of learning); the generator learns from four fifths of it,
draws as many records as the table has, and the gate scores them (utility target: `sex`, which height and
haemoglobin predict). The figures are the final round's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from cohorts.generator import GeneratorConfig
from cohorts.synthesize import synthesize
from cohorts.table import infer_spec, to_frame
from sources.patient.cohort import draw_cohort

TARGET = "sex"


def run(patients: int, seed: int, epochs: int, rounds: int, say: Callable[[str], None]) -> dict:
    cohort = draw_cohort(patients, np.random.default_rng(seed))
    table = cohort.patients_table([f"bench-{i:06d}" for i in range(patients)])
    spec = infer_spec(table)
    started = time.perf_counter()
    result = synthesize(to_frame(table, spec), spec, patients, seed=seed, target=TARGET,
                        config=GeneratorConfig(epochs=epochs), rounds=rounds,
                        on_round=lambda r: say(f"round {r.number}: {r.report.line()}"))
    s = result.final.scores
    return {"shapes": round(s["shapes"], 4), "pairs": round(s["pairs"], 4),
            "detection_auc": round(s["detection_auc"], 4), "exact_copies": s["exact_copies"],
            "tstr_auc": round(s["tstr"], 4), "trtr_auc": round(s["trtr"], 4),
            "adherence": round(s["adherence"], 4), "dcr_protection": round(s["dcr_protection"], 4),
            "passed": result.final.passed, "failed": result.final.failed, "rounds": len(result.rounds),
            "epochs": result.epochs, "patients": patients, "columns_learned": sum(c.kind != "id" for c in spec),
            "seconds": round(time.perf_counter() - started, 1)}
