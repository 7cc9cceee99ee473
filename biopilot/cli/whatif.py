"""`biopilot whatif`: a stored run re-simulated with one thing changed, beside itself (design/whatif.py)."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import IMAGE_SUFFIXES, check_output, command, lake_of, lake_option

if TYPE_CHECKING:
    from design.whatif import WhatIf

PANELS = (("titer_g_l", "titer (g/L)"), ("vcd_e6_per_ml", "VCD (e6 cells/mL)"), ("lactate_g_l", "lactate (g/L)"),
          ("viability_pct", "viability (%)"), ("hcp_ng_ml", "HCP (ng/mL)"), ("osmolality_mosm_kg", "osmolality"))


def _timestamp(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--from must be an ISO timestamp (2026-01-10T08:00Z), got {text!r}") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def settings(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """--set pairs as a mapping; a key given twice is refused rather than the last one silently winning."""
    twice = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
    if twice:
        raise UsageError(f"--set {', '.join(twice)} given more than once; give each setting once")
    return dict(pairs)


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"--set takes KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "whatif", cmd_whatif, "a stored run re-simulated without a fault or with a change")
    p.add_argument("--run", required=True, help="the run id (see `biopilot overview`)")
    change = p.add_mutually_exclusive_group(required=True)
    change.add_argument("--without-fault", default=None, metavar="FAULT",
                        help="remove one of the run's faults (overfeed, do_limitation, ...) from --from on")
    change.add_argument("--set", type=_setting, action="append", default=None, metavar="KEY=VALUE",
                        help="change a setting (repeat): a control (do_setpoint_pct, ph_setpoint, temp_shift_c, "
                             "temp_shift_day...), a kinetic parameter, feed.percent_of_volume; from the run's start "
                             "any scenario setting (process.seed_vcd_e6_per_ml, feed.mode...)")
    p.add_argument("--from", dest="from_ts", type=_timestamp, default=None, metavar="TS",
                   help="when the change is made (default: the fault's onset, or the run's start)")
    lake_option(p)
    p.add_argument("--png", default=None, help="plot both trajectories (titer, VCD, lactate, quality)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_whatif(args: argparse.Namespace) -> int:
    """Re-simulate a stored run from its own state at --from (its scenario, seed and faults from the lake, the
    same random streams) with the change made, and compare the two runs: final titer, VCD, viability, HCP, peak
    lactate. The actual run is re-simulated too and checked against its stored assays."""
    from design.whatif import Change, WhatIfError, load_run, what_if

    check_output(args.png, "--png", IMAGE_SUFFIXES)  # before the re-simulation, not a traceback after it
    change = Change(args.without_fault, settings(args.set or []))
    with user_errors(WhatIfError):
        run = load_run(lake_of(args), args.run)
        res = what_if(run, change, args.from_ts)
    if args.png:
        plot(res, args.png)
    out = res.as_json()
    if args.json:
        print(json.dumps(out, default=str))
        return 0
    print(res.sentence())
    for key, value in out.items():
        if key.endswith("_actual"):
            name = key.removesuffix("_actual")
            cf = out[f"{name}_counterfactual"]
            print(f"  {name:24s} {value:10.4g} -> {cf:10.4g}" if not math.isnan(value) else f"  {name}: n/a")
    rep = out["reproduced"]
    print(f"re-simulated run matches its stored assays: {rep['match']} ({rep['assays_compared']} compared)")
    return 0


def plot(res: WhatIf, path: str) -> None:
    from design import plots

    fig, axes = plots.plt.subplots(2, 3, figsize=(12, 6), sharex=True)
    for ax, (name, label) in zip(axes.ravel(), PANELS, strict=True):
        ax.plot(res.days["actual"], res.actual[name], "o-", ms=3, color="tab:red", label="actual")
        ax.plot(res.days["counterfactual"], res.counterfactual[name], "o-", ms=3, color="tab:blue",
                label=res.change.describe())
        ax.axvline(res.from_h / 24.0, color="grey", ls=":", lw=1)
        ax.set_ylabel(label)
    for ax in axes[1]:
        ax.set_xlabel("culture day")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{res.run_id}: {res.sentence()}", fontsize=10)
    try:
        plots.save(fig, path)
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
