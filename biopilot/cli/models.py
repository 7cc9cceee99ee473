"""`biopilot models`: the outcome model registry (list, promote, rollback), each change audited in the lake."""

from __future__ import annotations

import argparse
import json

from biopilot.cli.bench import json_option
from biopilot.cli.options import command, group, lake_of, lake_option


def add_list(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "list", cmd_list, "every registered version, its alias and metrics")
    lake_option(p)
    json_option(p)


def cmd_list(args: argparse.Namespace) -> int:
    """List the registered outcome model versions, newest first: alias (champion, challenger), mean AUROC,
    training data snapshot, code hash, who created and promoted them, and when. Serving loads the champion
    (the shipped checkpoint while there is none)."""
    from outcomes import registry

    found = registry.entries(lake_of(args))
    if args.json:
        print(json.dumps({"models": [e.as_json() | {"mean_auroc": e.mean_auroc} for e in found]}))
        return 0
    if not found:
        print("no model registered: serving uses the shipped checkpoint")
        return 0
    print(f"{'version':34s} {'alias':10s} {'AUROC':>6s}  {'created':16s} {'by':16s} {'promoted':16s} data")
    for e in found:
        auroc = e.mean_auroc
        promoted = f"{e.promoted_ts:%Y-%m-%d %H:%M}" if e.promoted_ts and e.alias == "champion" else ""
        print(f"{e.version:34s} {e.alias or '-':10s} {f'{auroc:.3f}' if auroc is not None else '-':>6s}  "
              f"{e.created_ts:%Y-%m-%d %H:%M} {e.created_by:16s} {promoted:16s} {e.data_snapshot}")
    return 0


def _changed(args: argparse.Namespace, entry, what: str) -> int:  # noqa: ANN001 - a registry.ModelEntry
    print(json.dumps(entry.as_json()) if args.json else f"{entry.version} is now the champion ({what})")
    return 0


def add_promote(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "promote", cmd_promote, "make a version the champion")
    p.add_argument("version", help="a registered version (see `biopilot models list`)")
    p.add_argument("--reason", default="", help="why, written to the registry and the audit trail")
    lake_option(p)
    json_option(p)


def cmd_promote(args: argparse.Namespace) -> int:
    """Make VERSION the champion, the model serving loads; the champion before it is demoted and is what
    `biopilot models rollback` returns to. Written to the `models` table and the audit trail."""
    from biopilot.cli.errors import user_errors
    from outcomes import registry

    with user_errors(registry.RegistryError):
        entry = registry.promote(lake_of(args), args.version, actor=registry.cli_actor(), reason=args.reason)
    return _changed(args, entry, "promoted")


def add_rollback(actions: argparse._SubParsersAction) -> None:
    p = command(actions, "rollback", cmd_rollback, "give the champion alias back to the one before")
    p.add_argument("--to", default=None, metavar="VERSION",
                   help="an earlier champion to return to (default: the champion before the current one)")
    p.add_argument("--reason", default="", help="why, written to the registry and the audit trail")
    lake_option(p)
    json_option(p)


def cmd_rollback(args: argparse.Namespace) -> int:
    """Return the champion alias to the champion before the current one (each rollback goes one further back),
    or to --to VERSION. The current champion keeps its artefacts and can be promoted again. Audited."""
    from biopilot.cli.errors import user_errors
    from outcomes import registry

    with user_errors(registry.RegistryError):
        entry = registry.rollback(lake_of(args), actor=registry.cli_actor(), to=args.to, reason=args.reason)
    return _changed(args, entry, "rolled back")


def register(subparsers: argparse._SubParsersAction) -> None:
    actions = group(subparsers, "models", help="the outcome model registry: list, promote, rollback",
                    description="The outcome model registry (the `models` Delta table, artefacts beside it). "
                                "Promotions and rollbacks are audited.", metavar="ACTION")
    for add in (add_list, add_promote, add_rollback):
        add(actions)
