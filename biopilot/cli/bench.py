"""`biopilot bench`: the measured figures, each printed beside a baseline measured in the same run
(docs/PERFORMANCE.md and docs/quality/ hold the current ones)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import (
    IMAGE_SUFFIXES,
    MAX_REACTORS,
    check_folder,
    check_output,
    command,
    conditioning_options,
    detect_options,
    group,
    in_range,
    positive,
    progress,
    seed,
    seed_named,
)

# counts where 0 is meaningful (0 slow clients, 0 skips a part): a negative one ran on, or waited forever
COUNT_OR_NONE = {name: in_range(name, int, 0, 10**6, high_text="1,000,000")
                 for name in ("--latency-alerts", "--slow", "--lake-misses")}


def _known_detectors(specs: list[str]) -> None:
    """Before any work: every detector named exists (else a KeyError, or a refusal after the suite is written)."""
    from detectors import external

    with user_errors(external.InputError):
        external.check_detectors(specs)


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def sweep_options(parser: argparse.ArgumentParser) -> None:
    """The recipe sweep (issue 24), shared by `bench detectors` and `bench agents`."""
    parser.add_argument("--sweep", type=positive("--sweep", int), default=None, metavar="RECIPES",
                        help="instead of the built-in suite, a recipe sweep: RECIPES off-default recipes drawn from "
                             "the scenario model's ranges (DO 25-60 %%, pH 6.85-7.15, bolus or continuous feed, "
                             "shift day 4-8 or none, 1-2,000 L, seeding 0.25-0.7 e6/mL), each with 2 normal runs, "
                             "every archetype at its built-in and at half its magnitude, and 2 composites (20 runs "
                             "per recipe); writes <name>-sweep.md/json (-sweep-blind with --recipe-blind)")
    parser.add_argument("--sweep-seed", type=seed_named("--sweep-seed"), default=24,
                        help="draws the recipes and the runs (default 24, the reported one; tune on others)")
    parser.add_argument("--recipe-blind", action="store_true",
                        help="with --sweep: judge every run against the default recipe's reference (the baseline "
                             "before per-recipe references)")


def _check_sweep(args: argparse.Namespace) -> None:
    if args.sweep and args.plant != "bioreactor":
        raise UsageError("--sweep draws reactor recipes: it needs --plant bioreactor")
    if args.recipe_blind and not args.sweep:
        raise UsageError("--recipe-blind goes with --sweep RECIPES")


def _sweep_name(bench: str, args: argparse.Namespace) -> str:
    return f"{bench}-sweep" + ("-blind" if args.recipe_blind else "")


def add_simulate(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "simulate", cmd_bench_simulate,
                "fleet (or cohort) simulation into Delta vs a per-unit solve_ivp loop")
    p.add_argument("--plant", choices=["bioreactor", "patient"], default="bioreactor")
    p.add_argument("--reactors", type=in_range("--reactors", int, 1, MAX_REACTORS), default=1000,
                   help=f"reactors simulated at once (default 1000, at most {MAX_REACTORS:,})")
    p.add_argument("--patients", type=positive("--patients", int), default=1000, help="--plant patient (default 1000)")
    p.add_argument("--days", type=positive("--days"), default=None, help="default 14 (bioreactor), 84 (patient)")
    p.add_argument("--seed", type=seed, default=7)
    p.add_argument("--lake", default=None, help="keep the tables here (default: a temporary directory)")
    p.add_argument("--baseline-reactors", type=positive("--baseline-reactors", int), default=2)
    p.add_argument("--baseline-days", type=positive("--baseline-days"), default=None,
                   help="default 1 (bioreactor), 28 (patient)")
    p.add_argument("--baseline-patients", type=positive("--baseline-patients", int), default=8,
                   help="--plant patient (default 8: with 28 days, a sample long enough for a stable rate)")
    json_option(p)


def cmd_bench_simulate(args: argparse.Namespace) -> int:
    """Simulate a fleet (noise, assays, faults) into Delta and time a per-reactor scipy solve_ivp loop of
    the same model on a sample."""
    check_folder("--lake", args.lake)
    from biopilot.bench import simulate as bench

    if args.plant == "patient":
        result = bench.run_patient(patients=args.patients, days=args.days or 84.0, seed=args.seed, lake=args.lake,
                                   baseline_patients=args.baseline_patients, baseline_days=args.baseline_days or 28.0,
                                   progress=not args.json and sys.stderr.isatty())
        print(json.dumps(bench.as_json(result)) if args.json else bench.format_patient_report(result))
        return 0
    result = bench.run(reactors=args.reactors, days=args.days or 14.0, seed=args.seed, lake=args.lake,
                       baseline_reactors=args.baseline_reactors, baseline_days=args.baseline_days or 1.0,
                       progress=not args.json and sys.stderr.isatty())
    print(json.dumps(bench.as_json(result)) if args.json else bench.format_report(result))
    return 0


def add_pipeline(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "pipeline", cmd_bench_pipeline,
                "streaming throughput and latency vs a bare copy and a naive flow")
    p.add_argument("--ticks", type=positive("--ticks", int), default=2_000_000,
                   help="ticks published for the floor and for our flow (default 2,000,000)")
    p.add_argument("--naive-ticks", type=positive("--naive-ticks", int), default=20_000,
                   help="ticks for the naive flow, which is much slower (default 20,000)")
    p.add_argument("--live-rate", type=positive("--live-rate"), default=10_000.0,
                   help="ticks/s for the latency phase (default 10,000)")
    p.add_argument("--live-s", type=positive("--live-s"), default=60.0,
                   help="seconds of each latency phase (default 60; each reactor's three faults are spread "
                        "over it)")
    p.add_argument("--soak-s", type=positive("--soak-s"), default=300.0,
                   help="seconds of the memory soak at full rate (default 300)")
    p.add_argument("--detector", choices=["fusion", "zscore"], default="fusion",
                   help="what our flow runs: the calibrated fusion (default, what `biopilot up` runs) or the "
                        "streaming z-score alone")
    p.add_argument("--repeats", type=positive("--repeats", int), default=3,
                   help="throughput runs of the floor and of our flow, in turns; their medians are reported, as "
                        "single runs on a shared machine vary (default 3)")
    p.add_argument("--keep", default=None, help="keep brokers' data, lakes and logs in this directory")
    json_option(p)


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    """Throughput of (a) a bare NATS->Delta copy, (b) our flow, (c) a naive per-event JSON + River HST
    flow; latency at a live rate; flow memory over a soak at full rate."""
    check_folder("--keep", args.keep)
    from biopilot.bench import pipeline as bench

    result = bench.run(ticks=args.ticks, naive_ticks=args.naive_ticks, live_rate=args.live_rate,
                       live_s=args.live_s, soak_s=args.soak_s, keep=args.keep, detector=args.detector,
                       repeats=args.repeats)
    print(json.dumps(bench.as_json(result)) if args.json else bench.format_report(result))
    return 0


def add_detectors(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "detectors", cmd_bench_detectors,
                "detection quality of every detector on a labelled twin suite")
    p.add_argument("--seeds", type=positive("--seeds", int), default=5)
    p.add_argument("--normal-runs", type=positive("--normal-runs", int), default=20)
    p.add_argument("--calibration-runs", type=positive("--calibration-runs", int), default=10)
    p.add_argument("--grace-h", type=in_range("--grace-h", float, 0, 8760), default=None,
                   help="hours after a fault's end still counted as inside (default 2; patient 96: labs are days apart)")
    p.add_argument("--plant", choices=("bioreactor", "patient"), default="bioreactor",
                   help="patient: the patient monitor on every adverse event (--seeds patients each) and normal "
                        "patients (--normal-runs per normal scenario, --normal-days long)")
    p.add_argument("--normal-days", type=positive("--normal-days", float), default=28.0,
                   help="days of each normal patient (--plant patient)")
    p.add_argument("--speed", action="store_true", help="also each detector's ticks/s at 12 signals")
    p.add_argument("--only", default=None, help="comma-separated detectors to evaluate (default: all)")
    p.add_argument("--out", default="docs/quality", help="where to write detectors.md/.json/.png")
    sweep_options(p)
    json_option(p)


def cmd_bench_detectors(args: argparse.Namespace) -> int:
    """Every fault archetype x seeds, composites and normal runs from the twin; thresholds calibrated on
    separate normal runs. Writes Markdown, JSON and a PNG chart, and the fusion calibration the flow uses."""
    from detectors import benchmark as bench

    say = progress(args)
    _check_sweep(args)
    check_folder("--out", args.out)
    if args.only:
        _known_detectors(args.only.split(","))
    if args.plant == "patient":
        return _bench_patient_detectors(args, say)
    if args.sweep:  # the shipped fusion through the flow's monitor, each run with its recipe; no recalibration
        sweep = bench.run_sweep(args.sweep, args.sweep_seed, 2.0 if args.grace_h is None else args.grace_h,
                                args.recipe_blind, progress=say)
        return _report(args, sweep.as_json(), _sweep_name("detectors", args), bench.sweep_markdown(sweep))
    results = bench.run(seeds=args.seeds, normal_runs=args.normal_runs, calibration_runs=args.calibration_runs,
                        grace_h=2.0 if args.grace_h is None else args.grace_h, with_speed=args.speed,
                        only=args.only.split(",") if args.only else None, progress=say)
    _report(args, bench.as_json(results), "detectors", bench.markdown(results))
    bench.chart(results, Path(args.out) / "detectors.png")
    say(f"written: detectors.md, .json and .png in {args.out}")
    return 0


def _bench_patient_detectors(args: argparse.Namespace, say) -> int:  # noqa: ANN001 - the progress printer
    """The patient monitor on labelled virtual patients: detection rate and delay per adverse event, false
    alarms per patient-day. Writes detectors-patient.md/.json."""
    from detectors import patient_benchmark as bench

    result = bench.run(patients=args.seeds, normal_patients=args.normal_runs, normal_days=args.normal_days,
                       grace_h=bench.GRACE_H if args.grace_h is None else args.grace_h, progress=say)
    _report(args, result, "detectors-patient", bench.markdown(result))
    say(f"written: detectors-patient.md and .json in {args.out}")
    return 0


def add_agents(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "agents", cmd_bench_agents, "root-cause accuracy and alert -> first chunk latency")
    p.add_argument("--seeds", type=positive("--seeds", int), default=5, help="runs per archetype (default 5)")
    p.add_argument("--normal-runs", type=positive("--normal-runs", int), default=None,
                   help="default 10 (bioreactor), 20 (patient)")
    p.add_argument("--latency-alerts", type=COUNT_OR_NONE["--latency-alerts"],
                   default=200, help="alerts for the latency part (0 skips it)")
    p.add_argument("--out", default="docs/quality", help="where agents.md/json go (default docs/quality)")
    p.add_argument("--plant", choices=("bioreactor", "patient"), default="bioreactor",
                   help="patient: every adverse event and composite x --seeds patients + --normal-runs normal "
                        "patients through the patient monitor and agents (writes agents-patient.md/json)")
    sweep_options(p)
    json_option(p)


def cmd_bench_agents(args: argparse.Namespace) -> int:
    """Monitoring + troubleshooting over a labelled twin suite (top-1/top-3 per archetype, abstentions,
    incidents on normal runs) and the live latency from an alert to the first explanation chunk."""
    _check_sweep(args)
    check_folder("--out", args.out)
    if args.plant == "patient":
        from agents import patient_benchmark as bench

        res = bench.run(args.seeds, args.normal_runs or 20, progress=progress(args))
        return _report(args, res.as_json(), "agents-patient", bench.markdown(res))
    from agents import benchmark as bench

    if args.sweep:
        res = bench.evaluate_sweep(args.sweep, args.sweep_seed, recipe_blind=args.recipe_blind,
                                   progress=progress(args))
        return _report(args, res.as_json(), _sweep_name("agents", args), bench.markdown(res))
    res = bench.run(args.seeds, args.normal_runs or 10, args.latency_alerts, progress=progress(args))
    return _report(args, res.as_json(), "agents", bench.markdown(res))


def _report(args: argparse.Namespace, result: dict, name: str | None = None, markdown: str | None = None) -> int:
    """Print a benchmark's figures: the JSON (`--json`), else the Markdown or a line per figure; given `name`, keep
    them as `<name>.json` (and `<name>.md`) under `--out` too."""
    if name:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if markdown is not None:
            (out / f"{name}.md").write_text(markdown + "\n")
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max([28, *map(len, result)])
    text = markdown if markdown is not None else "\n".join(f"{k:{width}s} {v}" for k, v in result.items())
    print(json.dumps(result) if args.json else text)
    return 0


def add_sse(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "sse", cmd_bench_sse, "the dashboard under 200 SSE clients, 20 slow")
    p.add_argument("--clients", type=positive("--clients", int), default=200)
    p.add_argument("--slow", type=COUNT_OR_NONE["--slow"],
                   default=20, help="how many of them read slowly (default 20)")
    p.add_argument("--duration-s", type=positive("--duration-s"), default=60.0)
    json_option(p)


def cmd_bench_sse(args: argparse.Namespace) -> int:
    """Clients hold telemetry and alert streams at live rate; measures events/s, alert latency on the fast
    clients (beside bare NATS), server RSS, errors."""
    if args.slow > args.clients:  # else the bench waits forever on clients it never starts
        raise UsageError(f"--slow {args.slow} is more than --clients {args.clients}")
    from biopilot.bench import sse

    res = sse.run(args.clients, args.slow, args.duration_s, say=progress(args))
    print(json.dumps(sse.as_json(res)) if args.json else sse.format_report(res))
    return 0


def add_skab(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "skab", cmd_bench_skab, "`biopilot detect` on SKAB with the leaderboard's protocol")
    p.add_argument("--data", default="../shared/data/skab", help="the SKAB folder (default ../shared/data/skab)")
    p.add_argument("--detectors", nargs="+", default=["pca", "pca,zscore", "pca,zscore,ewma", "iforest"],
                   help="detector sets to evaluate, each comma-separated")
    conditioning_options(p)
    p.add_argument("--cross-check", action="store_true",
                   help="also pick settings on half the files and score the other half with them (slower)")
    json_option(p)


def cmd_bench_skab(args: argparse.Namespace) -> int:
    """Every anomalous SKAB file: train on the first 400 rows, score the rest, F1/FAR/MAR over all test
    rows (the public leaderboard's protocol)."""
    for combo in args.detectors:
        _known_detectors(combo.split(","))
    from detectors import external

    with user_errors(external.InputError):
        files = external.skab_files(args.data)
    options = detect_options(args)
    rows = [{"detectors": combo, "files": len(files), **asdict(options),
             **external.skab(files, combo.split(","), options)} for combo in args.detectors]
    checks = []
    if args.cross_check:
        grid = {"smooth_rows": (5, 10, 20, 30), "min_roughness": (0.4, 0.5, 0.6), "margin": (1.5, 2.0, 2.5, 3.0)}
        checks = external.skab_cross_check(args.data, grid, ["pca"], progress=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(json.dumps({"results": rows, "cross_check": checks}))
        return 0
    print(f"{len(files)} files; smooth_rows {args.smooth_rows}, min_roughness {args.min_roughness}, "
          f"margin {args.margin}\n")
    print("| detectors | F1 | FAR % | MAR % |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['detectors']} | {r['f1']:.3f} | {r['far_pct']:.2f} | {r['mar_pct']:.2f} |")
    if checks:
        print("\n| settings chosen on | settings | F1 / FAR there | tested on | F1 | FAR % | MAR % |\n"
              "|---|---|---|---|---|---|---|")
        for c in checks:
            a, b = c["chosen_on_metrics"], c["tested_on_metrics"]
            settings = ", ".join(f"{k} {v}" for k, v in c["settings"].items())
            print(f"| {c['chosen_on']} | {settings} | {a['f1']:.3f} / {a['far_pct']:.1f} % | {c['tested_on']} "
                  f"| {b['f1']:.3f} | {b['far_pct']:.2f} | {b['mar_pct']:.2f} |")
    return 0


# `detect --far`'s defaults with the windowed autoencoder (too slow for `detect`'s default)
BENCH_BUDGET_DETECTORS = "pca:raw,dpca:raw,cva:raw,lagged_ae:raw,variance"
BENCH_BEYOND_MARGIN = "pca,dpca,cva,lagged_ae"


def add_detect(benches: argparse._SubParsersAction) -> None:
    from biopilot.cli.detect import budget_options, one_character

    p = command(benches, "detect", cmd_bench_detect, "`biopilot detect` under false-alarm budgets on a folder of "
                "labelled CSV runs (or make the twin's suite of them)")
    p.add_argument("--data", default=None, help="the folder: one normal training file (name contains 'train', or "
                   "--train) and test files with a label column")
    p.add_argument("--train", default=None, help="the training file's name in --data")
    p.add_argument("--time-col", default=None, help="the time column, not a signal (default: time_min if the "
                   "training file has it, else none: the rows are taken in file order)")
    p.add_argument("--label-col", default="label", help="above 0.5 = a fault is active, e.g. 0/1 or the fault's "
                   "number (default label)")
    p.add_argument("--ignore-cols", default="", help="comma-separated columns that are not signals (a run "
                   "number, a sample counter)")
    p.add_argument("--sep", type=one_character, default=",", help="CSV separator (default ,)")
    p.add_argument("--detectors", default=None,
                   help=f"comma-separated, under the budget; the fusion is added (default {BENCH_BUDGET_DETECTORS}, "
                        f"and --margin-detectors {BENCH_BEYOND_MARGIN}; <name>:raw: on the signals before their EWMA)")
    p.add_argument("--far", type=float, nargs="+", default=[0.01, 0.05], help="budgets (default 0.01 0.05)")
    budget_options(p)
    conditioning_options(p)
    p.add_argument("--make-suite", default=None, metavar="DIR",
                   help="instead: write the twin's suite into DIR (every fault archetype x --seeds, a normal "
                        "training file of --train-runs runs, a normal test run), then bench it")
    p.add_argument("--make-plant", default=None, metavar="DIR",
                   help="instead: write the generated continuous plant's suite into DIR (19 faults, a 500-row "
                        "normal training run, a normal test run; biopilot/bench/process_plant.py), then bench it")
    p.add_argument("--make-te", default=None, metavar="DIR",
                   help="instead: write a Tennessee Eastman suite into DIR (IDV 1-20 from row 160 of 960, a "
                        "500-row normal training run, a normal test run, a reading every 3 min; about 4 min on 2 "
                        "cores; biopilot/bench/te_plant.py), then bench it")
    p.add_argument("--plant-seed", type=seed_named("--plant-seed"), default=0,
                   help="with --make-plant: which plant; with --make-te: which noise seeds (default 0)")
    p.add_argument("--seeds", type=positive("--seeds", int), default=3, help="with --make-suite (default 3)")
    p.add_argument("--days", type=positive("--days"), default=2.5, help="with --make-suite: run length (default 2.5)")
    p.add_argument("--tick-s", type=positive("--tick-s"), default=300.0,
                   help="with --make-suite: seconds between readings (default 300)")
    p.add_argument("--train-runs", type=positive("--train-runs", int), default=3,
                   help="with --make-suite: normal runs in the training file (default 3)")
    p.add_argument("--png", default=None, help="also draw detection %% per fault file and detector, one panel per "
                   "budget (.png, .svg, .pdf)")
    json_option(p)


def cmd_bench_detect(args: argparse.Namespace) -> int:
    """Per labelled file: detection rate (fault rows that alarm), false-alarm rate (normal rows that alarm) and
    detection delay, for each detector and the fusion, each fitted on the normal training file under each
    false-alarm budget; then the means (docs/DETECT.md)."""
    from biopilot.bench import detect as bench
    from biopilot.cli.detect import check_persist, margin_detectors
    from detectors import external
    from detectors.false_alarm_budget import Persistence
    from sources.scenarios import FAULT_NAMES

    made = (("--make-suite", args.make_suite), ("--make-plant", args.make_plant), ("--make-te", args.make_te))
    given = [o for o, v in (("--data", args.data), *made) if v]
    if len(given) != 1:  # two of them: the one benched would silently be the last
        raise UsageError("give --data DIR, or --make-suite / --make-plant / --make-te DIR to write a suite first"
                         + (f"; one of them, not {' and '.join(given)}" if given else ""))
    for option, folder in made:
        check_folder(option, folder)
    detectors_ = (args.detectors or BENCH_BUDGET_DETECTORS).split(",")
    beyond = margin_detectors(args, BENCH_BEYOND_MARGIN)
    with user_errors(external.InputError):  # before any work: unknown names, or one in both lists
        external.with_beyond(detectors_, beyond)
    bad = [f for f in args.far if not 0 < f < 1]
    if bad:
        raise UsageError(f"--far must be between 0 and 1 (a share of rows), got {bad[0]}")
    check_persist(args.persist)
    check_output(args.png, "--png", IMAGE_SUFFIXES)
    if args.make_suite and args.days < bench.MIN_DAYS:  # else refused, or silently mislabelled, once written
        first, last = (100 * s for s in bench.ONSET_SHARES)
        raise UsageError(f"--days {args.days:g} is too short for the suite: its faults start {first:g}-{last:g} % "
                         f"into the run and its first {bench.SKIP_H:g} h are left out; give at least "
                         f"{bench.MIN_DAYS:g}")
    if args.make_suite and bench.run_rows(args.days, args.tick_s) < bench.MIN_RUN_ROWS:
        raise UsageError(f"--tick-s {args.tick_s:g} leaves {bench.run_rows(args.days, args.tick_s)} readings a run "
                         f"after its first {bench.SKIP_H:g} h; the suite needs at least {bench.MIN_RUN_ROWS}: a "
                         "shorter --tick-s or more --days")
    if args.make_te:
        from biopilot.bench import te_plant

        if missing := te_plant.needs_tep_studio():
            raise UsageError(missing)
        if args.plant_seed > te_plant.MAX_SEED:
            raise UsageError(f"--plant-seed must be at most {te_plant.MAX_SEED} with --make-te (its runs' noise "
                             "seeds must stay exact in the model's generator)")
    data = args.data
    if args.make_suite:
        bench.make_suite(args.make_suite, FAULT_NAMES, args.seeds, args.days, args.tick_s, args.train_runs,
                         progress=progress(args))
        data = args.make_suite
    if args.make_plant:
        from biopilot.bench import process_plant

        process_plant.make_suite(args.make_plant, args.plant_seed, progress=progress(args))
        data = args.make_plant
    if args.make_te:
        te_plant.make_suite(args.make_te, args.plant_seed, progress=progress(args))
        data = args.make_te
    with user_errors(external.InputError):
        options = replace(detect_options(args), wander=args.wander, stat_smooth_rows=args.stat_smooth_rows)
        res = bench.run(data, detectors_, args.far, args.train, args.time_col, args.label_col,
                        args.sep, options, Persistence.parse(args.persist) if args.persist else None,
                        progress=progress(args),
                        ignore=frozenset(c.strip() for c in args.ignore_cols.split(",") if c.strip()), beyond=beyond)
    if args.png:
        bench.plot(res, args.png)
    print(json.dumps(res) if args.json else bench.markdown(res))
    return 0


def add_twin(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "twin", cmd_bench_twin, "the patient twin's INR forecast and dose advice, beside the "
                "population model and IWPC")
    p.add_argument("--patients", type=positive("--patients", int), default=200,
                   help="simulated patients with known true parameters (default 200)")
    p.add_argument("--seed", type=seed, default=11)
    json_option(p)


def cmd_bench_twin(args: argparse.Namespace) -> int:
    """On simulated patients: INR at day 14 forecast from the readings of days 3, 5 and 7 by the fitted twin and
    by the population model (MAE), and the share in range at day 28 under the twin's dose advice and IWPC's."""
    from biopilot.bench import twin as bench

    res = bench.run(args.patients, args.seed)
    print(json.dumps(res) if args.json else "\n".join(f"{k:28s} {v:.3f}" for k, v in res.items()))
    return 0


def add_trial(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "trial", cmd_bench_trial, "in-silico trials: EU-PACT's TTRs with a twin arm, type I error, "
                "PROCOVA's variance and sample size")
    p.add_argument("--patients-per-arm", type=positive("--patients-per-arm", int), default=200)
    p.add_argument("--n-trials", type=positive("--n-trials", int), default=1000,
                   help="simulated trials at each point of the power curve (default 1000)")
    p.add_argument("--null-trials", type=positive("--null-trials", int), default=4000,
                   help="simulated null trials for the type I error (default 4000)")
    p.add_argument("--pool", type=positive("--pool", int), default=6000,
                   help="patients of the power simulations' pool, each simulated under both arms (default 6000)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", default="docs/quality", help="where trial.json and trial-power.png go")
    json_option(p)


def cmd_bench_trial(args: argparse.Namespace) -> int:
    """One eu_pact_twin trial (TTR per arm: standard, genotype-guided, twin-guided), the type I error of the
    null design over --n-trials trials with and without PROCOVA, and PROCOVA's observed variance ratio and
    sample size saved on eu_pact (power curves over the trial size)."""
    check_folder("--out", args.out)
    from biopilot.bench import trial as bench

    # the power curve draws two arms of its largest size from the pool (else a ValueError after the whole trial)
    need = 2 * max(args.patients_per_arm, *bench.CURVE_SIZES)
    if args.pool < need:
        raise UsageError(f"--pool {args.pool} is too small: two arms of {need // 2} need at least {need}")
    from core.codec import json_safe
    from trials.power import plot_curve

    res = json_safe(bench.run(args.patients_per_arm, args.n_trials, args.null_trials, args.pool, args.seed,
                              say=progress(args)))
    curve = res["power_curve"] | {"design": "eu_pact", "arms": ["standard", "genotype"], "alpha": 0.05,
                                  "n_trials": args.n_trials}
    plot_curve(curve, Path(args.out) / "trial-power.png")
    return _report(args, res, "trial")


def add_cohort(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "cohort", cmd_bench_cohort, "a synthetic cohort learned from a simulated one, gated")
    p.add_argument("--patients", type=positive("--patients", int), default=2000,
                   help="simulated real patients (default 2000; a fifth is held out)")
    p.add_argument("--seed", type=seed, default=5)
    p.add_argument("--epochs", type=positive("--epochs", int), default=60, help="at most (default 60)")
    p.add_argument("--rounds", type=positive("--rounds", int), default=5, help="gate rounds (default 5)")
    p.add_argument("--out", default="docs/quality", help="where cohort.json goes")
    json_option(p)


def cmd_bench_cohort(args: argparse.Namespace) -> int:
    """Draw a simulated cohort (its covariates, baseline vitals and true drug parameters), learn the generator
    from it, draw as many synthetic patients and report the quality gate's final scores (utility target:
    sex)."""
    from cohorts.table import MIN_ROWS

    check_folder("--out", args.out)
    if args.patients < MIN_ROWS:
        raise UsageError(f"--patients {args.patients}: at least {MIN_ROWS} are needed to learn from")
    from biopilot.bench import cohort as bench

    res = bench.run(args.patients, args.seed, args.epochs, args.rounds, say=progress(args))
    return _report(args, res, "cohort")


def add_predict(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "predict", cmd_bench_predict, "risk serving: cache hits and misses, batched predictions, "
                "stale answers, with live patients whose data keeps arriving")
    p.add_argument("--patients", type=positive("--patients", int), default=1000, help="live patients (default 1000)")
    p.add_argument("--days", type=positive("--days"), default=10.0,
                   help="simulated days per patient, the last --held-back-h hours arriving during the bench")
    p.add_argument("--held-back-h", type=positive("--held-back-h"), default=48.0)
    p.add_argument("--batch", type=positive("--batch", int), default=250, help="patients per batched prediction")
    p.add_argument("--reads", type=positive("--reads", int), default=2000, help="cache-hit requests timed")
    p.add_argument("--misses", type=positive("--misses", int), default=300,
                   help="requests timed right after new data of the patient (misses)")
    p.add_argument("--rounds", type=positive("--rounds", int), default=4000,
                   help="requests checked for staleness while data arrives")
    p.add_argument("--readers", type=positive("--readers", int), default=8, help="concurrent readers in that check")
    p.add_argument("--lake-misses", type=COUNT_OR_NONE["--lake-misses"], default=50,
                   help="first requests timed through the API's miss path (the record store over a Delta lake "
                        "of the patients: the lake at a patient's first request), then --misses more after new "
                        "data; 0: skip the lake and the API path")
    p.add_argument("--model", default=None, help="a checkpoint (.pt, or a directory: its newest); default the "
                                                 "shipped one")
    p.add_argument("--seed", type=seed, default=0)
    json_option(p)


def cmd_bench_predict(args: argparse.Namespace) -> int:
    """`outcomes.serving` on a real redis-server with the outcome model: hit and miss p50/p99, predictions/s
    batched, and answers older than the data that had arrived (`stale_served`, must be 0)."""
    from biopilot.bench import predict

    if args.readers > args.rounds:
        raise UsageError("--readers must not exceed --rounds")
    model = Path(args.model) if args.model else None
    if model and not (model.is_file() or (model.is_dir() and any(model.glob("*.pt")))):  # else an IndexError
        raise UsageError(f"--model {args.model}: no such checkpoint (a .pt file, or a folder holding one)")
    if args.held_back_h + 24 > args.days * 24:
        raise UsageError("--held-back-h must leave at least a day of --days arrived before the bench")
    res = predict.run(args.patients, args.days, args.held_back_h, args.batch, args.reads, args.misses, args.rounds,
                      args.readers, args.lake_misses, args.seed, args.model, say=progress(args))
    return _report(args, res)


def add_drift(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "drift", cmd_bench_drift, "a population shift: drift found, challenger trained, promoted")
    p.add_argument("--pre-patients", type=positive("--pre-patients", int), default=600,
                   help="patients admitted from the default population before the shift; the first two thirds are "
                        "the drift monitor's reference (default 600)")
    p.add_argument("--post-patients", type=positive("--post-patients", int), default=800,
                   help="patients from the shifted one: half train the challenger, a quarter is its shadow "
                        "window, a quarter the test (default 800)")
    p.add_argument("--admissions-per-h", type=positive("--admissions-per-h"), default=10.0,
                   help="new patients an hour, the drift monitor's traffic (default 10)")
    p.add_argument("--days", type=positive("--days", int), default=40, help="days simulated per patient (default 40)")
    p.add_argument("--epochs", type=positive("--epochs", int), default=3,
                   help="the challenger's epochs, from the champion's weights (default 3)")
    p.add_argument("--margin", type=in_range("--margin", float, -1, 1), default=0.01,
                   help="AUROC the challenger must gain over the champion in shadow to be promoted (default 0.01)")
    p.add_argument("--seed", type=seed, default=2601)
    p.add_argument("--lake", default=None, help="keep the registry, incidents and audit here (default: a temporary "
                                                "directory)")
    p.add_argument("--out", default="docs/quality", help="where drift.json goes")
    json_option(p)


def cmd_bench_drift(args: argparse.Namespace) -> int:
    """Admit patients from the default population, then from a shifted one (ancestry toward VKORC1 A/A, a
    share on amiodarone): the input drift monitor's delay in simulated hours, the drift incident in the agents'
    words, the champion's AUROC (INR >= 4 within 7 days) before and after the shift, the challenger trained on
    the shifted patients and evaluated in shadow, and the AUROC after its promotion (on held-out patients)."""
    check_folder("--out", args.out)
    check_folder("--lake", args.lake)
    if args.days < 9:
        raise UsageError(f"--days {args.days} must be >= 9 (a sample needs 2 days of history and 7 ahead)")
    from biopilot.bench import drift as bench

    res = bench.run(pre_patients=args.pre_patients, post_patients=args.post_patients,
                    admissions_per_h=args.admissions_per_h, days=args.days, seed=args.seed, epochs=args.epochs,
                    margin=args.margin, lake=args.lake, say=progress(args))
    return _report(args, res, "drift")


def add_design(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "design", cmd_bench_design,
                "a designed optimum against an exhaustive grid of the same factors on the twin")
    p.add_argument("--study", default="titer", help="a built-in study or a TOML file (default titer)")
    p.add_argument("--levels", type=positive("--levels", int), default=11,
                   help="grid levels per numeric factor (default 11: 1,331 settings for 3 factors)")
    p.add_argument("--budget-share", type=positive("--budget-share"), default=0.05,
                   help="the design's runs as a share of the grid's (default 0.05)")
    p.add_argument("--batch", type=positive("--batch", int), default=6, help="runs per batch (default 6)")
    p.add_argument("--repeats", type=positive("--repeats", int), default=7,
                   help="design seeds; the figures are the median one's (default 7)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--out", default="docs/quality", help="where design.json/.md go")
    json_option(p)


def cmd_bench_design(args: argparse.Namespace) -> int:
    """The ground truth first: every setting of a grid of the study's factors on the noise-free twin, the best
    whose constraints hold. Then the sequential design (Bayesian optimisation) on the twin as a lab sees it
    (run-to-run variability, assay errors), within the run budget; its recommendation's true response beside
    the grid's best, and the classical face-centred central composite design's."""
    check_folder("--out", args.out)
    if args.budget_share > 1:  # more runs than the grid it is compared with
        raise UsageError(f"--budget-share must be at most 1 (a share of the grid's runs), "
                         f"got {args.budget_share:g}")
    from biopilot.bench import design as bench
    from design.study import StudyError

    with user_errors(StudyError, ValueError):
        res = bench.run(args.study, args.levels, args.budget_share, args.batch, args.repeats, args.seed,
                        say=progress(args))
    return _report(args, res, "design", bench.markdown(res))


def add_scale(benches: argparse._SubParsersAction) -> None:
    p = command(benches, "scale", cmd_bench_scale,
                "the flow as a Bytewax cluster: throughput by processes, exactly-once under faults")
    p.add_argument("--ticks", type=positive("--ticks", int), default=3_000_000,
                   help="the backlog each flow drains (default 3,000,000)")
    p.add_argument("--processes", default="1,2,3", help="flow processes to measure, comma-separated (default 1,2,3)")
    p.add_argument("--partitions", type=positive("--partitions", int), default=8,
                   help="partitions of the TELEMETRY stream (default 8, as `biopilot up` makes it)")
    p.add_argument("--fault-ticks", type=positive("--fault-ticks", int), default=240_000,
                   help="ticks published during each fault (default 240,000)")
    p.add_argument("--repeats", type=positive("--repeats", int), default=2,
                   help="drains of each flow shape, in turns; their medians are reported (default 2)")
    p.add_argument("--no-faults", action="store_true", help="no faults")
    p.add_argument("--faults", default=None,
                   help="the faults to strike, comma-separated (default all: kill_mid_epoch, kill_during_commit, "
                        "rescale, kill_stream_leader, restart_object_store)")
    p.add_argument("--live-rate", type=positive("--live-rate"), default=10_000.0,
                   help="ticks/s of the live latency phase (default 10,000)")
    p.add_argument("--live-s", type=in_range("--live-s", float, 0, 86400), default=30.0,
                   help="seconds of it per flow shape (default 30; 0: none)")
    p.add_argument("--live-processes", default="1,2",
                   help="flow processes of the live latency phase, comma-separated (default 1,2)")
    p.add_argument("--keep", default=None, help="keep brokers' data, lakes and logs in this directory")
    p.add_argument("--out", default="docs/performance", help="where scale.json goes (default docs/performance)")
    json_option(p)


MAX_PROCESSES = 64


def _counts(option: str, value: str) -> tuple[int, ...]:
    """A comma-separated list of process counts, each at least 1."""
    try:
        counts = tuple(int(n) for n in value.split(","))
    except ValueError:
        raise UsageError(f"{option} takes numbers separated by commas, not {value!r}") from None
    if not counts or min(counts) < 1:
        raise UsageError(f"{option}: each at least 1")
    if max(counts) > MAX_PROCESSES:  # each is a flow process: 1000 of them swamp the machine
        raise UsageError(f"{option}: each at most {MAX_PROCESSES}, got {max(counts)}")
    return counts


def cmd_bench_scale(args: argparse.Namespace) -> int:
    """The monitoring flow as 1, 2, 3 processes draining one backlog beside today's single unpartitioned
    process; CPU-seconds per million ticks; kill -9 mid-epoch and during a commit, a rescale 2 -> 3 -> 2, a kill of
    the NATS node leading the stream and the object store restarted, each checked for exactly-once (ticks =
    published, no duplicate (run_id, seq), scores = ticks, alert ids unique); live publish -> alert latency with
    1 and 2 processes."""
    check_folder("--out", args.out)
    check_folder("--keep", args.keep)
    processes = _counts("--processes", args.processes)
    live_processes = _counts("--live-processes", args.live_processes)
    from biopilot.bench import scale as bench
    from biopilot.bench.results import as_json

    faults = {} if args.no_faults else bench.FAULTS
    if args.faults and not args.no_faults:
        unknown = set(args.faults.split(",")) - set(bench.FAULTS)
        if unknown:
            raise UsageError(f"--faults: no fault {', '.join(sorted(unknown))}; there are {', '.join(bench.FAULTS)}")
        faults = {name: bench.FAULTS[name] for name in args.faults.split(",")}
    result = bench.run(args.ticks, processes, args.partitions, args.fault_ticks, faults, args.keep, args.repeats,
                       live_processes, args.live_rate, args.live_s, say=progress(args))
    _report(args, as_json(result), "scale", bench.format_report(result))
    return 0 if result.exactly_once else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    benches = group(subparsers, "bench", help="measured figures, each beside its baseline",
                    description="Benchmarks; each prints ours beside a baseline measured in the same run.",
                    metavar="BENCH")
    for add in (add_simulate, add_pipeline, add_detectors, add_agents, add_sse, add_skab, add_detect, add_twin, add_trial,
                add_cohort, add_predict, add_drift, add_design, add_scale):
        add(benches)
