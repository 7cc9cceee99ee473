"""`biopilot lake`: maintenance of the Delta tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from biopilot.cli.errors import UsageError
from biopilot.cli.options import command, group, lake_of, lake_option


def add_optimize(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "optimize", cmd_lake_optimize, "compact small files")
    lake_option(p)


def cmd_lake_optimize(args: argparse.Namespace) -> int:
    """Compact every table's files into ~100 MB ones and delete the files no longer referenced, at once
    (stop readers first). Running writers (the flow, the agents) already merge their own tables' small
    files every 100 commits and delete what they replaced an hour later."""
    from core.events import SCHEMAS
    from sinks import delta

    lake = lake_of(args)
    # the tables written outside the event schemas too (knowledge_graph, trial_results...): else never compacted,
    # and a lake of only those said to hold no Delta tables
    found = sorted(p.parent.name for p in Path(lake).glob("*/_delta_log"))
    report = delta.optimize(lake, [*SCHEMAS, *(n for n in found if n not in SCHEMAS)])
    if not report:
        raise UsageError(f"no Delta tables in {lake}")
    for name, metrics in report.items():
        print(f"{name:12s} files removed {metrics.get('numFilesRemoved', 0):5d}, "
              f"added {metrics.get('numFilesAdded', 0):4d}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    actions = group(subparsers, "lake", help="Delta table maintenance",
                    description="Delta table maintenance.", metavar="ACTION")
    add_optimize(actions)
