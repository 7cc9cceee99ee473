"""`biopilot reference`: the golden reference a recipe's runs are judged against (`detectors.recipe`): built by
the twin from a scenario, or learned from the plant's own first normal batches in the lake."""

from __future__ import annotations

import argparse
import json
import sys
import time

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, group, lake_of, lake_option


def add_build(reference: argparse._SubParsersAction) -> None:
    p = command(reference, "build", cmd_reference_build, "build and cache a recipe's reference")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scenario", help="a built-in scenario's name or a TOML file: its recipe's reference, "
                                           "simulated by the twin")
    source.add_argument("--runs", help="comma-separated run ids of normal batches in the lake: the reference "
                                       "learned from them, for a recipe the twin cannot represent")
    p.add_argument("--include-faulted", action="store_true",
                   help="with --runs: learn from runs that carry fault labels too (refused by default: a "
                        "reference learns what normal is, and a fault learned as normal hides the next one)")
    lake_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _recipe_of_runs(lake: str, run_ids: list[str]) -> object:
    """The one recipe the runs share: from the lake's `recipes` (the latest row of each run), else the
    scenario in `runs`."""
    from detectors.recipe import Recipe
    from sinks import delta
    from sources.scenarios import ScenarioError, parse_scenario

    found: dict[str, Recipe] = {}
    recipes = delta.read(lake, "recipes", run_ids=run_ids)
    if recipes is not None and recipes.num_rows:
        for row in sorted(recipes.to_pylist(), key=lambda r: r["ts"]):
            found[row["run_id"]] = Recipe.from_json(row["recipe_json"])
    runs = delta.read(lake, "runs", run_ids=run_ids)
    for row in [] if runs is None else runs.to_pylist():
        if row["run_id"] not in found and row["config_json"]:
            with user_errors(ScenarioError):
                found[row["run_id"]] = Recipe.from_scenario(parse_scenario(json.loads(row["config_json"]),
                                                                           row["run_id"]))
    missing = [r for r in run_ids if r not in found]
    if missing:
        raise UsageError(f"no recipe in {lake} for run(s) {', '.join(missing)} (tables recipes, runs)")
    if len({r.hash for r in found.values()}) > 1:
        raise UsageError("the runs follow different recipes: "
                         + ", ".join(f"{run} {r.hash}" for run, r in found.items()))
    return next(iter(found.values()))


def cmd_reference_build(args: argparse.Namespace) -> int:
    """Build a recipe's golden reference (per culture-age bin median and robust spread of each signal, plus the
    drift limits) and cache it where the monitor looks (BIOPILOT_REFERENCE_CACHE, default
    ~/.cache/biopilot/references). With --scenario the twin simulates 30 normal runs of the scenario's recipe;
    with --runs it is learned from those normal batches of the plant in the lake, for a recipe the twin cannot
    represent, and from then on the monitor says its reference was learned."""
    from detectors.recipe import REFERENCE_RUNS, Recipe, cached, learn_reference, reference_for
    from sinks import delta
    from sources.scenarios import ScenarioError, load_scenario

    started = time.perf_counter()
    if args.scenario:
        with user_errors(ScenarioError):
            recipe = Recipe.from_scenario(load_scenario(args.scenario))
        was_cached = cached(recipe)
        ref = reference_for(recipe)
        how, runs = f"simulated by the twin ({REFERENCE_RUNS} normal runs)", REFERENCE_RUNS
        path = str(ref.source) if ref.source else None
        if was_cached:
            how = "already built (cached)"
    else:
        lake = lake_of(args)
        run_ids = [r.strip() for r in args.runs.split(",") if r.strip()]
        if not run_ids:
            raise UsageError("--runs needs at least one run id")
        recipe = _recipe_of_runs(lake, run_ids)
        labels = delta.read(lake, "labels", run_ids=run_ids)
        if labels is not None and labels.num_rows and not args.include_faulted:
            faults = sorted({f"{row['run_id']} ({row['fault']})" for row in labels.to_pylist()})
            raise UsageError(f"run(s) {', '.join(faults)} carry fault labels: a reference is learned from normal "
                             "batches; leave them out, or pass --include-faulted if the label did not disturb "
                             "the batch")
        ticks = delta.read(lake, "ticks", run_ids=run_ids)
        if ticks is None or ticks.num_rows == 0:
            raise UsageError(f"no ticks of run(s) {', '.join(run_ids)} in {lake}")
        ref, stored = learn_reference(recipe, ticks)  # the learned arrays carry no file name: where they went
        path = str(stored)
        was_cached = False
        how, runs = f"learned from {len(run_ids)} normal batch(es) of the plant", len(run_ids)
        if len(run_ids) < 3:  # the spread per culture age and the alarm limits come from the runs' differences
            print(f"warning: a reference from {len(run_ids)} batch(es) knows little of how normal batches differ: "
                  "expect more alarms; learn it again from several normal batches", file=sys.stderr)
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps({"recipe_hash": recipe.hash, "source": "twin" if args.scenario else "learned",
                          "runs": runs, "bins": int(ref.median.shape[0]), "seconds": round(seconds, 2),
                          "cached": was_cached, "path": path}))
    else:
        print(f"reference of recipe {recipe.hash}: {how}, {ref.median.shape[0]} culture-age bins, "
              f"{seconds:.1f} s -> {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    reference = group(subparsers, "reference", "a recipe's golden reference (twin-built or learned)",
                      cmd_reference_build.__doc__ or "", "{build}")
    add_build(reference)
