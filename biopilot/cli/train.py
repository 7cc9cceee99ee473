"""`biopilot train`: train the learned detectors on simulated runs."""

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


def register(subparsers: argparse._SubParsersAction) -> None:
    models = group(subparsers, "train", help="train the learned detectors",
                   description="Train the learned detectors.", metavar="MODEL")
    add_scorer(models)
