"""`biopilot train`: train the learned detectors and the patient outcome model on simulated runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biopilot.cli.options import command, group, positive, progress


def add_scorer(models: argparse._SubParsersAction) -> None:
    p = command(models, "scorer", cmd_train_scorer,
                "the windowed Transformer/BiLSTM scorer on simulated runs")
    p.add_argument("--runs-per-fault", type=positive("--runs-per-fault", int), default=4)
    p.add_argument("--normal-runs", type=positive("--normal-runs", int), default=12)
    p.add_argument("--val-runs", type=positive("--val-runs", int), default=1, help="held-out runs per scenario")
    p.add_argument("--epochs", type=positive("--epochs", int), default=6)
    p.add_argument("--stride", type=positive("--stride", int), default=16, help="window spacing outside faults")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="checkpoint path (default: the one the package ships)")


def cmd_train_scorer(args: argparse.Namespace) -> int:
    """Simulate labelled runs (every archetype, the composite, normal runs), train the windowed scorer,
    print held-out metrics, write the checkpoint the `transformer` detector loads."""
    from detectors.scorer_model import CHECKPOINT
    from detectors.train_scorer import train

    metrics = train(args.runs_per_fault, args.normal_runs, args.val_runs, args.epochs, args.stride,
                    device=args.device, out=Path(args.out) if args.out else CHECKPOINT, seed=args.seed,
                    progress=progress(args))
    print(json.dumps(metrics, indent=2))
    return 0


def add_outcome(models: argparse._SubParsersAction) -> None:
    p = command(models, "outcome", cmd_train_outcome,
                "the patient outcome model (risks, calibrated, conformal) on simulated cohorts")
    p.add_argument("--patients", type=positive("--patients", int), default=1000,
                   help="virtual patients, split 60/20/20 by patient into train, calibration and test (at least 5; "
                        "default 1000, a few minutes; its ~200 test patients hold about 13 who bleed, so the bleeding "
                        "risk's AUROC moves by +-0.1 from one cohort to the next: 3000 measure it on ~600, "
                        "docs/OUTCOMES.md run E)")
    p.add_argument("--shift-patients", type=positive("--shift-patients", int), default=200,
                   help="patients of the held-out ancestry-shift set (mostly Asian and Black ancestry, 30 %% on "
                        "amiodarone; default 200)")
    p.add_argument("--days", type=positive("--days", int), default=112,
                   help="simulated days per patient, at least 9 (the 12-week TTR label needs samples 84 days before "
                        "the end; default 112)")
    p.add_argument("--samples-per-patient", type=positive("--samples-per-patient", int), default=12,
                   help="samples per patient at random hours (day 2-28 at the default length; default 12)")
    p.add_argument("--epochs", type=positive("--epochs", int), default=10,
                   help="passes over the training samples (default 10)")
    p.add_argument("--twin-samples", type=int, default=100,
                   help="test samples the mechanistic twin baseline is refitted on (0: skip it; default 100)")
    p.add_argument("--seed", type=int, default=0,
                   help="the cohorts, the split and the network's initialisation (default 0)")
    p.add_argument("--out", default="outcome-models",
                   help="directory the versioned model is written to (<version>.pt; default ./outcome-models)")
    p.add_argument("--ship", action="store_true",
                   help="also write it as the checkpoint the package ships, only if it beats the shipped one on "
                        "this run's test patients (AUROC on every risk; ECE <= 0.05 and coverage in 0.88-0.92)")
    p.add_argument("--force-ship", action="store_true", help="with --ship: ship even if it does not beat it")
    p.add_argument("--choose-heads", action="store_true",
                   help="per risk, serve logistic regression (bagged over the training patients) where it ranks "
                        "the validation patients better than the hybrid by more than the hybrid's standard error "
                        "(default: the hybrid on every risk; worth it from ~3000 patients: docs/OUTCOMES.md runs D, E)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_train_outcome(args: argparse.Namespace) -> int:
    """Simulate virtual patients (split by patient into train, calibration and test, plus a held-out
    ancestry-shift set), train the outcome model (Transformer + BiLSTM hybrid, MC dropout, temperature scaling,
    Mondrian conformal by genotype group) and the baselines in the same run (logistic regression, gradient
    boosting, the mechanistic twin's forecast), print AUROC, AUPRC, Brier, ECE and conformal coverage overall
    and per genotype / ancestry group, write the versioned model to --out."""
    import shutil

    import torch

    from biopilot.cli.errors import UsageError
    from outcomes.model import CHECKPOINT, load_model
    from outcomes.report import format_report, jsonable, train_and_report

    if args.days < 9:
        raise UsageError(f"--days {args.days} must be >= 9 (a sample needs 2 days of history and 7 ahead)")
    if args.patients < 5:
        raise UsageError(f"--patients {args.patients} must be >= 5 (train, calibration and test need patients)")
    torch.set_num_threads(1)  # the model is small: one thread beats two fighting over a loaded CPU
    previous = load_model() if CHECKPOINT.exists() else None
    report, model = train_and_report(args.patients, args.shift_patients, args.days, args.samples_per_patient,
                                     args.epochs, args.twin_samples, args.seed, progress=not args.json,
                                     previous=previous, choose_heads=args.choose_heads)
    path = model.save(Path(args.out))
    report["path"] = str(path)
    if args.ship and (args.force_ship or report.get("previous", {}).get("ship_ok", True)):
        shutil.copyfile(path, CHECKPOINT)
        report["shipped"] = str(CHECKPOINT)
    elif args.ship:
        report["shipped"] = None  # `previous` says why: the shipped model stays
    if args.json:
        print(json.dumps(jsonable(report), indent=2))
        return 0
    print(format_report(report))
    # the report's figures alone do not say where the model went, nor whether --ship replaced the shipped one
    print(f"model written to {path}")
    if args.ship:
        print(f"shipped as {CHECKPOINT}" if report["shipped"] else
              "not shipped: it does not beat the shipped model (see above; --force-ship ships it anyway)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    models = group(subparsers, "train", help="train the learned detectors and the outcome model",
                   description="Train the learned detectors and the patient outcome model.", metavar="MODEL")
    add_scorer(models)
    add_outcome(models)
