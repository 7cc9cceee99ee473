"""`biopilot trial`: in-silico trials on virtual patients (`trial run`, `trial designs`, `trial power`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, group, lake_of, positive


def _design(name: str):  # noqa: ANN202 - trials.design.Design, imported lazily
    from trials.design import DesignError, load_design

    with user_errors(DesignError):
        return load_design(name)


def _population(design) -> tuple[object, str]:  # noqa: ANN001 - a Design
    """The design's cohort file, read (None if it draws its patients), and a note for the trial id."""
    from trials.design import DesignError
    from trials.simulate import read_population_file

    path = design.population.from_file
    if path is None:
        return None, ""
    if not Path(path).is_file():
        raise UsageError(f"population.from: {path}: no such file")
    with user_errors(DesignError):
        return read_population_file(path), f"{path}:{Path(path).stat().st_size}"


def add_run(trials: argparse._SubParsersAction) -> None:
    p = command(trials, "run", cmd_trial_run, "simulate one randomised trial and analyse its endpoints")
    p.add_argument("--design", required=True, help="a built-in design (see `biopilot trial designs`) or a TOML file")
    p.add_argument("--patients-per-arm", type=positive("--patients-per-arm", int), default=200,
                   help="patients planned for the smallest arm of the ratio (default 200); the trial enrols that "
                        "times the ratio's sum over its smallest share, and the stratified blocks leave each arm "
                        "a few patients either side")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same trial (default 0)")
    p.add_argument("--lake", default=None, help="write the Delta tables here (patients, labs, doses, labels, runs, "
                   "trial_arms, trial_results); default: none written")
    p.add_argument("--report", default=None, help="write a report, .html or .pdf")
    p.add_argument("--procova", action="store_true", help="also analyse the primary endpoint by ANCOVA on a "
                   "prognostic score trained on a separate simulated historical control cohort")
    p.add_argument("--historical-patients", type=positive("--historical-patients", int), default=2000,
                   help="size of that historical control cohort (default 2000)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_trial_run(args: argparse.Namespace) -> int:
    """Screen virtual patients against the design's criteria, randomise them (stratified permuted blocks), simulate
    every arm's dosing, INR draws, missed doses, dropouts and major bleeds, and analyse the endpoints: time in
    therapeutic range (Rosendaal, primary), INRs >= 4, time to the first therapeutic INR, adverse events
    (Kaplan-Meier, Cox hazard ratio, log-rank). Prints per arm n, mean and SD, and each arm against the first with
    its 95 % CI and p-value."""
    from tqdm import tqdm

    from core.codec import json_safe
    from trials import report
    from trials.design import DesignError
    from trials.run import run_trial

    if args.report and not args.report.endswith((".html", ".pdf")):
        raise UsageError(f"--report must end in .html or .pdf, got {args.report}")
    design = _design(args.design)
    table, note = _population(design)
    twin_arms = sum(a.protocol == "twin" for a in design.arms)
    ratio = design.randomisation.ratio
    twin_patients = sum(args.patients_per_arm * r // min(ratio) for a, r in zip(design.arms, ratio, strict=True)
                        if a.protocol == "twin")
    with tqdm(total=twin_patients * len(design.lab_days) if twin_arms else 0, unit="refit", desc="twin refits",
              disable=args.json or not twin_arms or not sys.stderr.isatty()) as bar, user_errors(DesignError):
        trial = run_trial(design, args.patients_per_arm, args.seed, table, args.procova,
                          args.historical_patients, twin_progress=bar.update, population_note=note)
    written = []
    if args.lake:
        from trials.tables import write

        written = write(trial, lake_of(args))
    if args.report:
        report.write(trial, Path(args.report))
    if args.json:
        print(json.dumps(json_safe(trial.results | {"tables_written": written})))
        return 0
    print(report.text_summary(trial.results), flush=True)
    if args.lake:
        print(f"tables {'written to ' + args.lake if written else 'already in ' + args.lake}", file=sys.stderr)
    if args.report:
        print(f"report: {args.report}", file=sys.stderr)
    return 0


def add_designs(trials: argparse._SubParsersAction) -> None:
    command(trials, "designs", cmd_trial_designs, "list the built-in trial designs")


def cmd_trial_designs(args: argparse.Namespace) -> int:
    """List the built-in trial designs (trials/designs/*.toml), one line each: arms and description."""
    from trials.design import design_names, load_design

    for name in design_names():
        d = load_design(name)
        arms = " vs ".join(f"{a.name}" for a in d.arms)
        print(f"{name:16s} {arms:32s} {d.description}")
    return 0


def add_power(trials: argparse._SubParsersAction) -> None:
    p = command(trials, "power", cmd_trial_power, "power (or type I error) of a design over many simulated trials")
    p.add_argument("--design", required=True, help="a built-in design or a TOML file (a null design gives type I "
                   "error)")
    p.add_argument("--n-trials", type=positive("--n-trials", int), default=1000, help="trials per sample size "
                   "(default 1000)")
    p.add_argument("--patients-per-arm", default="200", help="comma-separated sizes per arm (default 200); "
                   "with --curve the sizes of the power curve")
    p.add_argument("--pool", type=positive("--pool", int), default=6000,
                   help="patients simulated (each under both arms) from which each trial draws its own; at least "
                        "twice the largest size (default 6000)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the pool and the draws (default 0)")
    p.add_argument("--procova", action="store_true", help="also the ANCOVA on a prognostic score")
    p.add_argument("--historical-patients", type=positive("--historical-patients", int), default=2000,
                   help="size of the prognostic model's historical control cohort (default 2000)")
    p.add_argument("--curve", default=None, help="write the power curve over the sizes as this PNG")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_trial_power(args: argparse.Namespace) -> int:
    """Simulate a pool of patients once under each of the design's first two arms, draw --n-trials trials of each
    size from it (each trial its own patients, without replacement), and analyse each by the pre-specified t-test (and with --procova the ANCOVA
    on the prognostic score), all trials at once: the share with p < alpha is the power, or the type I error
    when the design's arms do not differ."""
    from tqdm import tqdm

    from core.codec import json_safe
    from trials import power
    from trials.design import DesignError

    try:
        sizes = sorted({int(s) for s in args.patients_per_arm.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--patients-per-arm must be comma-separated integers, got {args.patients_per_arm!r}") from None
    if not sizes or min(sizes) < 3 or 2 * max(sizes) > args.pool:
        raise UsageError(f"--patients-per-arm must be 3 to half of --pool ({args.pool}), got "
                         f"{args.patients_per_arm}")
    if args.curve and not args.curve.endswith(".png"):
        raise UsageError(f"--curve must end in .png, got {args.curve}")
    design = _design(args.design)
    table, _ = _population(design)
    with tqdm(total=len(sizes) * args.n_trials, unit="trial", desc=f"power {design.name}",
              disable=args.json or not sys.stderr.isatty()) as bar, user_errors(DesignError, ValueError):
        res = power.run(design, sizes, args.n_trials, args.pool, args.seed, args.procova,
                        args.historical_patients, table, progress=bar.update)
    if args.curve:
        power.plot_curve(res, Path(args.curve))
    if args.json:
        print(json.dumps(json_safe(res)))
        return 0
    print(power.text_summary(res))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    trials = group(subparsers, "trial", help="in-silico randomised trials on virtual patients",
                   description="In-silico randomised trials on virtual patients: run one, list the designs, "
                               "estimate power and type I error.", metavar="TRIAL_COMMAND")
    for add in (add_run, add_designs, add_power):
        add(trials)
