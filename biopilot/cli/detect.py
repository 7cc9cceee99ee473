"""`biopilot detect`: score the user's own time series (a historian export) with the project's detectors."""

from __future__ import annotations

import argparse

from biopilot.cli.errors import user_errors
from biopilot.cli.options import command, conditioning_options, detect_options, positive


def add_detect(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "detect", cmd_detect, "score your own CSV/Parquet time series")
    p.add_argument("--input", required=True, help="a .csv or .parquet file")
    p.add_argument("--time-col", required=True, help="the time column (kept as is)")
    p.add_argument("--sep", default=",", help="CSV separator (default ,)")
    p.add_argument("--label-col", default=None, help="0/1 anomaly labels, for metrics")
    p.add_argument("--ignore-cols", default="", help="comma-separated columns that are not signals")
    p.add_argument("--train-rows", type=positive("--train-rows", int), default=400,
                   help="the first N rows are normal operation (default 400)")
    p.add_argument("--train-file", default=None, help="normal-operation data in a separate file instead")
    p.add_argument("--detectors", default="pca,zscore", help="comma-separated (default pca,zscore)")
    conditioning_options(p)
    p.add_argument("--out", required=True, help="output .parquet")


def cmd_detect(args: argparse.Namespace) -> int:
    """Score a multivariate time series (e.g. a historian export): the output keeps the time column and
    adds one score column per detector, the fused score and is_alarm. Detectors learn in time order;
    thresholds and reference models come from the training rows. With --label-col, prints F1, FAR and MAR."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from detectors import external

    with user_errors(external.InputError):
        table = external.read_table(args.input, args.sep)
        train_rows = args.train_rows
        if args.train_file:
            train = external.read_table(args.train_file, args.sep)
            try:
                table = pa.concat_tables([train.select(table.column_names), table])
            except (KeyError, pa.ArrowInvalid) as err:
                raise external.InputError(f"--train-file columns do not match the input: {err}") from None
            train_rows = train.num_rows
        result = external.score(table, args.time_col, args.detectors.split(","), train_rows, args.label_col,
                                set(args.ignore_cols.split(",")) if args.ignore_cols else set(), detect_options(args))
    out = result.table.slice(train_rows) if args.train_file else result.table  # the user's rows only
    pq.write_table(out, args.out)
    if result.left_out:
        print(f"left out {len(result.left_out)} signal(s) whose level wanders on the training rows "
              f"(roughness < {args.min_roughness}): {', '.join(result.left_out)}; keep them with --min-roughness 0")
    alarms = int(pa.compute.sum(out["is_alarm"]).as_py() or 0)
    print(f"scored {out.num_rows:,} rows with {args.detectors} -> {args.out} ({alarms:,} alarm rows)")
    if result.metrics:
        m = result.metrics
        print(f"F1 {m['f1']:.3f}  FAR {m['far_pct']:.2f} %  MAR {m['mar_pct']:.2f} %  (rows after the training part)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    add_detect(subparsers)
