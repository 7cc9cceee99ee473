"""The `biopilot` command. Every sub-command has `--help`; bad input prints one line and exits with 2.

One module per group of commands: plant (scenarios, simulate, overview, up, replay), lake, detect, agents
(diagnose, report, chat, agents), dashboard (dashboard, token, audit), bench, train, twin (dose), trial (run,
designs, power), reference (build), cohort (synthesize, gate), models (list, promote, rollback), design
(propose, run, analyse, sequential), whatif, graph (build, query), deploy (streams, flow-prepare).
Each declares a command's options next to its handler (whose docstring is the command's
description) and adds its commands to the parser in `register(subparsers)`.

Handlers import what they run inside their body, so that `biopilot --help` and a usage error load neither torch
nor the project's other heavy parts: only the handler of the command given pays for its imports.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence

from biopilot.cli import (
    agents,
    bench,
    cohort,
    dashboard,
    deploy,
    design,
    detect,
    graph,
    lake,
    models,
    plant,
    reference,
    train,
    trial,
    twin,
    whatif,
)
from biopilot.cli.errors import EXIT_USAGE, UsageError
from core.config import SettingsError

GROUPS = (plant, lake, detect, agents, dashboard, bench, train, twin, trial, reference, cohort, models, design,
          whatif, graph, deploy)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage block is one `--help` away)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="biopilot",
        description="BioPilot: a streaming digital twin for CHO fed-batch biomanufacturing. "
                    "Settings come from BIOPILOT_* variables, then biopilot.toml, then defaults.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for commands in GROUPS:
        commands.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, SettingsError) as err:  # SettingsError: also a bad signing key (dashboard.auth)
        print(f"biopilot: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except tomllib.TOMLDecodeError as err:
        print(f"biopilot: error: invalid TOML: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:  # Ctrl-C: one line, not a traceback
        print(f"biopilot: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
