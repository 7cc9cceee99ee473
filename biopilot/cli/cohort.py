"""`biopilot cohort`: synthetic patient cohorts learned from a real (or simulated) one, and their quality gate
(`cohort synthesize`, `cohort gate`). docs/COHORTS.md describes the generator and the gate's metrics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, group, positive

if TYPE_CHECKING:
    import pandas as pd

    from cohorts.gate import GateSettings
    from cohorts.table import ColumnSpec

EXIT_GATE_FAILED = 1


def gate_options(p: argparse.ArgumentParser) -> None:
    """The pass thresholds (defaults: `cohorts.gate.GateSettings`)."""
    p.add_argument("--target", default=None, help="a column to predict for the utility check (TSTR vs TRTR)")
    p.add_argument("--min-shapes", type=float, default=0.90, help="column shapes at least (default 0.90)")
    p.add_argument("--min-pairs", type=float, default=0.85, help="pair trends at least (default 0.85)")
    p.add_argument("--max-detection-auc", type=float, default=0.70,
                   help="a classifier's AUC telling synthetic from real rows at most (default 0.70)")
    p.add_argument("--max-exact-copies", type=int, default=0, help="synthetic rows equal to a real row (default 0)")
    p.add_argument("--min-dcr-protection", type=float, default=0.80,
                   help="DCR overfitting protection against the real holdout at least (default 0.80)")
    p.add_argument("--max-utility-drop", type=float, default=0.10,
                   help="TSTR may fall this far below TRTR (default 0.10)")


def _settings(args: argparse.Namespace) -> GateSettings:
    from cohorts.gate import GateSettings

    return GateSettings(min_shapes=args.min_shapes, min_pairs=args.min_pairs,
                        max_detection_auc=args.max_detection_auc, max_exact_copies=args.max_exact_copies,
                        min_dcr_protection=args.min_dcr_protection, max_utility_drop=args.max_utility_drop)


def _read(path: str, spec: list[ColumnSpec] | None = None) -> tuple[pd.DataFrame, list[ColumnSpec]]:
    """A cohort file as a typed frame and its columns' spec (inferred, or the given one: a synthetic file is
    read in its real table's types)."""
    from biopilot.cli.options import read_table
    from cohorts.table import CohortInputError, infer_spec, to_frame

    table = read_table(path)
    with user_errors(CohortInputError, ValueError):
        if spec is None:
            spec = infer_spec(table)
        missing = [c.name for c in spec if c.name not in table.column_names]
        if missing:
            raise CohortInputError(f"{path} lacks the real table's columns {', '.join(missing)}")
        if table.num_rows == 0:
            raise CohortInputError(f"{path} has no rows")
        try:
            return to_frame(table, spec), spec
        except CohortInputError as err:  # which of the files (real, synthetic, holdout) it is
            raise CohortInputError(f"{path}: {err}") from None


def add_synthesize(cohort: argparse._SubParsersAction) -> None:
    p = command(cohort, "synthesize", cmd_cohort_synthesize, "learn a cohort and draw synthetic patients, gated")
    p.add_argument("--input", required=True, help="the real cohort, .csv or .parquet, one row per patient")
    p.add_argument("--n", type=positive("--n", int), required=True, help="synthetic records to draw")
    p.add_argument("--out", required=True, help="output .parquet or .csv (the gate's rounds go beside it as "
                   "<out>.gate.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=positive("--rounds", int), default=5,
                   help="the loop's budget: gate rounds before giving up (default 5)")
    p.add_argument("--epochs", type=positive("--epochs", int), default=60,
                   help="training epochs at most (early stopping usually ends sooner; default 60)")
    p.add_argument("--allow-failed", action="store_true",
                   help="write the cohort even when it fails the gate (with a warning)")
    gate_options(p)
    p.add_argument("--json", action="store_true", help="print the final gate report as one JSON object")


def cmd_cohort_synthesize(args: argparse.Namespace) -> int:
    """Learn a generator of patient records from a cohort table (a small autoregressive transformer over its
    columns: numbers by quantile bins, categories, missing values kept), draw --n records and run the quality
    gate on them round by round, rejecting and redrawing what fails, until it passes or --rounds end. Writes
    the cohort only when it passed (or with --allow-failed), and every round's scores to <out>.gate.json."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from cohorts.generator import GeneratorConfig
    from cohorts.synthesize import synthesize
    from cohorts.table import CohortInputError, to_arrow

    if not args.out.endswith((".csv", ".parquet")):
        raise UsageError(f"--out must end in .csv or .parquet, got {args.out}")
    if not Path(args.out).absolute().parent.is_dir():  # before the training, not after it
        raise UsageError(f"cannot write {args.out}: no folder {Path(args.out).absolute().parent}")
    frame, spec = _read(args.input)
    say = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    bar = tqdm(total=args.epochs, unit="epoch", desc="train", disable=args.json or not sys.stderr.isatty())

    def on_epoch(epoch: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(validation_loss=f"{loss:.3f}")

    def on_round(r) -> None:  # noqa: ANN001 - a cohorts.synthesize.Round
        if r.number == 1:
            bar.close()
        say(f"round {r.number} (temperature {r.temperature:.2f}, rejected {r.rejected_copies} copies, "
            f"{r.rejected_by_detection} by detection): {r.report.line()}")

    with user_errors(CohortInputError):
        result = synthesize(frame, spec, args.n, seed=args.seed, target=args.target, settings=_settings(args),
                            config=GeneratorConfig(epochs=args.epochs), rounds=args.rounds, on_epoch=on_epoch,
                            on_round=on_round)
    bar.close()
    report_path = Path(args.out + ".gate.json")
    report = {"input": args.input, "out": args.out, "n": len(result.frame), "seed": args.seed, **result.as_json(),
              "written": result.final.passed or args.allow_failed}
    try:
        report_path.write_text(json.dumps(report, indent=2) + "\n")
        if report["written"]:
            table = to_arrow(result.frame, spec)
            pq.write_table(table, args.out) if args.out.endswith(".parquet") else pacsv.write_csv(table, args.out)
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {err}") from None
    final = result.final
    if args.json:
        print(json.dumps({"passed": final.passed, "written": report["written"], **final.scores}))
    elif final.passed:
        say(f"gate passed after {len(result.rounds)} round(s): {len(result.frame):,} records -> {args.out} "
            f"(rounds in {report_path})")
    else:
        state = f"written anyway to {args.out} (--allow-failed)" if args.allow_failed else "not written"
        say(f"warning: gate failed after {len(result.rounds)} round(s) on {', '.join(final.failed)}: cohort {state} "
            f"(rounds in {report_path})")
    return 0 if final.passed else EXIT_GATE_FAILED


def add_gate(cohort: argparse._SubParsersAction) -> None:
    p = command(cohort, "gate", cmd_cohort_gate, "score a synthetic cohort against the real one")
    p.add_argument("--real", required=True, help="the real cohort, .csv or .parquet")
    p.add_argument("--synthetic", required=True, help="the synthetic cohort, same columns")
    p.add_argument("--holdout", default=None, help="real rows the generator never saw (enables the DCR check "
                   "and tests the utility on them)")
    p.add_argument("--seed", type=int, default=0)
    gate_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_cohort_gate(args: argparse.Namespace) -> int:
    """Score a synthetic cohort against the real one: column shapes, pair trends, a classifier's detection AUC,
    boundary/category adherence, exact copies, DCR against a holdout (--holdout) and utility (TSTR vs TRTR on
    --target). Exit 0 when every check passes, 1 when one fails."""
    from cohorts.gate import evaluate
    from cohorts.table import CohortInputError

    real, spec = _read(args.real)
    synthetic, _ = _read(args.synthetic, spec)
    holdout = _read(args.holdout, spec)[0] if args.holdout else None
    with user_errors(CohortInputError):
        report = evaluate(real, synthetic, spec, holdout=holdout, target=args.target, settings=_settings(args),
                          seed=args.seed)
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print(("passed: " if report.passed else f"failed ({', '.join(report.failed)}): ") + report.line())
    return 0 if report.passed else EXIT_GATE_FAILED


def register(subparsers: argparse._SubParsersAction) -> None:
    cohort = group(subparsers, "cohort", help="synthetic patient cohorts and their quality gate",
                   description="Synthetic cohorts: learn a generator from a cohort table, draw records, and gate "
                               "them (SDMetrics shapes and pair trends, detection, privacy, utility).",
                   metavar="COHORT_COMMAND")
    add_synthesize(cohort)
    add_gate(cohort)
