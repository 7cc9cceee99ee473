"""`biopilot detect`: score the user's own time series (a historian export) with the project's detectors."""

from __future__ import annotations

import argparse
from dataclasses import replace

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, conditioning_options, detect_options, positive
from core.config import DetectOptions, load_settings

MARGIN_DETECTORS = "pca,zscore"  # SKAB's measured default (docs/QUALITY.md)
# static and dynamic MSPC on the signals before their EWMA and each signal's variance, fused under the budget;
# the same MSPC on the smoothed signals beyond the margin, outside the budget: a few hundred training rows cannot
# set a smoothed statistic's tail where the plant wanders slowly, as the Tennessee Eastman process does
# (docs/DETECT.md)
BUDGET_DETECTORS = "pca:raw,dpca:raw,cva:raw,variance"
BEYOND_MARGIN_DETECTORS = "pca,dpca,cva"


def budget_options(parser: argparse.ArgumentParser) -> None:
    """The false-alarm budget (`detect`, `bench detect`)."""
    parser.add_argument("--wander", choices=("auto", "drop", "detrend"), default="auto",
                        help="signals whose level wanders on the training rows (--min-roughness): drop them, or "
                             "score their departure from their own slow baseline (a causal 100-row EWMA), which "
                             "keeps their drifts and short steps in view; when detrending, the roughness is taken "
                             "over a twentieth of the training rows, so a slow but stationary signal counts as "
                             "steady (default auto: drop with --margin, detrend with --far)")
    parser.add_argument("--margin-detectors", default=None,
                        help="with a budget: detectors that join the fusion only where their score passes --margin "
                             "x its largest out-of-fold score on the training rows, outside the budget: for those "
                             "on the smoothed signals, which vary too slowly for a few hundred training rows to set "
                             "their tail; '' = none (default: with the default --detectors, the same MSPC on the "
                             "smoothed signals; none when you name --detectors)")
    parser.add_argument("--persist", default=None,
                        help="with a budget: the persistence rule, k/n = alarm when k of the last n rows are above "
                             "threshold (default: the rule with the lowest threshold that keeps the budget on the "
                             "held-back normal rows)")
    parser.add_argument("--stat-smooth-rows", type=positive("--stat-smooth-rows", int),
                        default=DetectOptions().stat_smooth_rows,
                        help="with a budget: causal EWMA span over each detector's statistic before its threshold "
                             "(lambda = 2/(span+1)): a small persistent fault adds up; the thresholds are set on the "
                             "smoothed normal scores, so the budget holds, but the measured rate spreads more from "
                             f"run to run; 1 = none (default {DetectOptions().stat_smooth_rows}; docs/DETECT.md)")


def add_detect(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "detect", cmd_detect, "score your own CSV/Parquet time series")
    p.add_argument("--input", required=True, help="a .csv or .parquet file")
    p.add_argument("--time-col", required=True, help="the time column (kept as is)")
    p.add_argument("--sep", type=one_character, default=",", help="CSV separator (default ,)")
    p.add_argument("--label-col", default=None, help="0/1 anomaly labels, for metrics")
    p.add_argument("--ignore-cols", default="", help="comma-separated columns that are not signals")
    p.add_argument("--train-rows", type=positive("--train-rows", int), default=400,
                   help="the first N rows are normal operation (default 400)")
    p.add_argument("--train-file", default=None, help="normal-operation data in a separate file instead")
    p.add_argument("--detectors", default=None,
                   help=f"comma-separated (default {MARGIN_DETECTORS}, with --far {BUDGET_DETECTORS} and "
                        f"--margin-detectors {BEYOND_MARGIN_DETECTORS}; dynamic: dpca, cva, lagged_ae; a signal's "
                        "spread: variance; <name>:raw: on the signals before their EWMA)")
    conditioning_options(p)
    p.add_argument("--far", type=float, default=None,
                   help="false-alarm budget: the share of normal rows allowed to alarm (e.g. 0.01). Thresholds "
                        "and persistence come from out-of-fold scores of the training rows; the rate is checked on "
                        "10 blocks of them, each held back in turn, and printed with its 95 %% interval, with a "
                        "warning when it is over the budget, rises through the training rows, or when the rows "
                        "are too few for the budget (about 13/far rows). Replaces --margin (default: the "
                        "detect_far setting, else the margin; docs/DETECT.md)")
    budget_options(p)
    p.add_argument("--out", required=True, help="output .parquet")


def one_character(text: str) -> str:
    """An argparse type: the CSV reader takes a separator of exactly one character."""
    if len(text) != 1:
        raise argparse.ArgumentTypeError(f"--sep must be one character, got {text!r}")
    return text


def margin_detectors(args: argparse.Namespace, default: str) -> list[str]:
    """--margin-detectors: as given, else `default` with the default --detectors, else none."""
    given = args.margin_detectors if args.margin_detectors is not None else "" if args.detectors else default
    return [d.strip() for d in given.split(",") if d.strip()]


def check_out(path: str) -> None:
    """Before any scoring: --out must be a file that can be written (the scoring of a long export takes a while)."""
    from pathlib import Path

    out = Path(path)
    if out.is_dir():
        raise UsageError(f"--out {path} is a folder; give the .parquet file to write")
    if not out.parent.is_dir():
        raise UsageError(f"--out {path}: no folder {out.parent}")


def check_persist(text: str | None) -> None:
    from detectors.false_alarm_budget import Persistence

    if text is not None:
        try:
            Persistence.parse(text)
        except ValueError:
            raise UsageError(f"--persist must be k/n with 1 <= k <= n, got {text!r}") from None


def options_of(args: argparse.Namespace) -> DetectOptions:
    """DetectOptions from the command line; --far falls back to the detect_far setting."""
    far = args.far if args.far is not None else load_settings().detect_far
    if far is not None and not 0 < far < 1:
        raise UsageError(f"--far must be between 0 and 1 (a share of rows), got {far}")
    check_persist(args.persist)
    return replace(detect_options(args), far=far, persist=args.persist, wander=args.wander,
                   stat_smooth_rows=args.stat_smooth_rows)


def cmd_detect(args: argparse.Namespace) -> int:
    """Score a multivariate time series (e.g. a historian export): the output keeps the time column and
    adds one score column per detector, the fused score, is_alarm and the signals that drove each alarm row.
    Detectors learn in time order; thresholds and reference models come from the training rows, with a margin
    or a false-alarm budget (--far). With --label-col, prints F1, FAR and MAR."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detectors import external

    options = options_of(args)
    check_out(args.out)
    detectors_ = args.detectors or (BUDGET_DETECTORS if options.far is not None else MARGIN_DETECTORS)
    if args.margin_detectors and options.far is None:  # else silently ignored: the margin mode has no budget
        raise UsageError("--margin-detectors go with a budget (--far); without one every detector is at --margin")
    beyond = margin_detectors(args, BEYOND_MARGIN_DETECTORS) if options.far is not None else []
    ignore = {c for c in args.ignore_cols.split(",") if c}
    with user_errors(external.InputError):
        table = external.read_table(args.input, args.sep)
        train_rows = args.train_rows
        if args.train_file:
            train = external.read_table(args.train_file, args.sep)
            not_signals = ignore | {args.label_col}
            for name in [c for c in table.column_names if c in not_signals and c not in train.column_names]:
                # normal operation needs no label (nor an ignored column) to train on
                train = train.append_column(name, pa.nulls(train.num_rows, table[name].type))
            try:
                table = pa.concat_tables([train.select(table.column_names), table])
            except (KeyError, pa.ArrowInvalid) as err:
                raise external.InputError(f"--train-file columns do not match the input: {err}") from None
            train_rows = train.num_rows
        every = external.with_beyond(detectors_.split(","), beyond)
        result = external.score(table, args.time_col, every, train_rows, args.label_col, ignore, options, beyond)
    out = result.table.slice(train_rows) if args.train_file else result.table  # the user's rows only
    try:
        pq.write_table(out, args.out)
    except OSError as err:
        raise UsageError(f"cannot write {args.out}: {str(err).splitlines()[0]}") from None
    wander = result.conditioning.wander
    if wander and result.conditioning.detrend:
        print(f"{len(wander)} signal(s) whose level wanders on the training rows (roughness < {args.min_roughness}) "
              f"scored as their departure from their own slow baseline: {', '.join(wander)}")
    elif wander:
        print(f"left out {len(wander)} signal(s) whose level wanders on the training rows "
              f"(roughness < {args.min_roughness}): {', '.join(wander)}; keep them with --min-roughness 0 or "
              "--wander detrend")
    if result.budget and result.union:
        print_budget(result.budget, result.union.share, options.far, train_rows)
    alarms = int(pa.compute.sum(out["is_alarm"]).as_py() or 0)
    print(f"scored {out.num_rows:,} rows with {','.join(every)} -> {args.out} ({alarms:,} alarm rows)")
    named = [d for d in out["drivers"].to_pylist() if d]
    if named:
        from collections import Counter

        lead = Counter(d.split(",")[0] for d in named).most_common(3)
        print("alarm rows led by: " + ", ".join(f"{name} ({n:,})" for name, n in lead))
    if result.metrics:
        m = result.metrics
        print(f"F1 {m['f1']:.3f}  FAR {m['far_pct']:.2f} %  MAR {m['mar_pct']:.2f} %  (rows after the training part)")
    return 0


def print_budget(budget: dict, share: float, far: float, train_rows: int) -> None:
    from detectors.false_alarm_budget import rows_needed

    print(f"false-alarm budget {100 * far:g} %: threshold, persistence rule (k of n rows), alarm rate on the "
          "calibration rows / on normal blocks held back in turn (mean ± 95 % interval)")
    fused = budget["fusion"]
    for name, fit in budget.items():
        if fit is not fused:
            print(f"  {name:10s} {fit.threshold:10.4g}  {fit.rule!s:5s}  {100 * fit.calibration_rate:5.2f} % / "
                  f"{fit.check or 'beyond the margin, outside the budget'}")
    check = fused.check
    beyond = " (those beyond the margin past it)" if any(f.check is None for f in budget.values()) else ""
    print(f"  fusion     any detector, each at {100 * share:.2g} % under its own rule{beyond}  "
          f"{100 * fused.calibration_rate:5.2f} % / {check}")
    if check.over(far):
        print(f"warning: the held-back normal blocks alarm on {check}, over the {100 * far:g} % budget: expect more "
              "false alarms; train on a longer, steadier stretch")
    elif check.moved(far):
        print(f"warning: the later held-back normal blocks alarm more (Kendall trend p = {check.trend_p:.2f}), over "
              f"the {100 * far:g} % budget: the plant moved during the training data, so expect more false alarms if "
              "it stays where it went; train on a steadier stretch")
    if any(fit.short_of_rows for fit in budget.values()):
        print(f"warning: {train_rows:,} training rows are too few to support a {100 * far:g} % budget: the threshold "
              f"rests on fewer than 10 alarm rows; give about {rows_needed(far) * 4 // 3:,} normal rows or a larger "
              "--far")


def register(subparsers: argparse._SubParsersAction) -> None:
    add_detect(subparsers)
