"""The plant: `scenarios`, `simulate` a fleet into the lake, `overview` of stored runs, `up` (the whole stack
with a live plant) and `replay` of a stored run."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import (
    MAX_REACTORS,
    check_folder,
    command,
    in_range,
    lake_of,
    lake_option,
    port,
    positive,
    seed,
    settings_for,
    share,
)


def add_scenarios(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "scenarios", cmd_scenarios,
                "list the built-in scenarios, or propose composite ones")
    p.add_argument("action", nargs="?", choices=["list", "propose"], default="list")
    p.add_argument("--n", type=positive("--n", int), default=3, help="how many to propose (default 3)")
    p.add_argument("--out", default="scenarios", help="folder for proposed scenarios (default ./scenarios)")
    p.add_argument("--seed", type=seed, default=0, help="random seed of the proposals (default 0)")
    p.add_argument("--plant", choices=["bioreactor", "patient"], default="bioreactor",
                   help="whose scenarios (default bioreactor)")


def cmd_scenarios(args: argparse.Namespace) -> int:
    """`biopilot scenarios` lists the built-in scenarios, one line each. `biopilot scenarios propose` has
    the scenario agent write realistic composite fault scenarios (TOML for `biopilot simulate --scenario
    FILE`) with their expected labels."""
    from sources.scenarios import builtin_names, load_scenario

    if args.plant == "patient":
        from sources.patient.scenarios import load_patient_scenario, patient_scenario_names

        if args.action == "propose":
            raise UsageError("scenarios propose: only bioreactor scenarios can be proposed in this version")
        for name in patient_scenario_names():
            print(f"{name:28s} {load_patient_scenario(name).description}")
        return 0
    if args.action == "propose":
        from agents.scenario_agent import write

        check_folder("--out", args.out, "the folder the scenarios go in")
        for path in write(args.n, Path(args.out), args.seed):
            print(f"{path}  (labels: {path.with_suffix('.labels.json').name})")
        return 0
    for name in builtin_names():
        print(f"{name:28s} {load_scenario(name).description}")
    return 0


def add_simulate(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "simulate", cmd_simulate, "simulate a fleet or a cohort into Delta tables")
    p.add_argument("--plant", choices=["bioreactor", "patient"], default="bioreactor",
                   help="bioreactor fleet (default) or patient cohort")
    p.add_argument("--scenario", default=None,
                   help="built-in name (see `biopilot scenarios [--plant patient]`) or a TOML file "
                        "(default: normal; warfarin_fixed_5mg for patients)")
    p.add_argument("--reactors", type=in_range("--reactors", int, 1, MAX_REACTORS), default=None,
                   help=f"number of reactors (default 1, at most {MAX_REACTORS:,}; bioreactor)")
    p.add_argument("--patients", type=positive("--patients", int), default=None,
                   help="number of patients (default 10; --plant patient)")
    p.add_argument("--days", type=positive("--days"), default=None, help="run length (default: scenario's)")
    p.add_argument("--tick-s", type=positive("--tick-s"), default=None,
                   help="seconds of process time per tick, 1-3600 (default: scenario's, 60)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    lake_option(p)
    p.add_argument("--quiet", action="store_true", help="print only the run ids")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate N reactors of a scenario and write the Delta tables runs, ticks, assays and labels (or N
    patients: runs, patients, vitals, labs, doses, labels). Run ids are deterministic: a rerun adds nothing.
    Prints the run ids."""
    from tqdm import tqdm

    from agents.overview import format_table, summarize
    from biopilot.simulate import simulate_to_lake
    from sources.scenarios import ScenarioError, load_scenario

    if args.plant == "patient":
        return _simulate_patients(args)
    if args.patients is not None:
        raise UsageError("--patients is for --plant patient; a bioreactor fleet takes --reactors")
    args.scenario = args.scenario or "normal"
    args.reactors = args.reactors or 1
    _not_the_other_kind(args.scenario, "bioreactor")
    with user_errors(ScenarioError):
        scenario = load_scenario(args.scenario)
        if args.days is not None:
            scenario = scenario.with_overrides(days=args.days)
        if args.tick_s is not None:
            scenario = scenario.with_overrides(tick_s=args.tick_s)
    lake = lake_of(args)
    with tqdm(total=args.reactors * scenario.days, unit="reactor-day", desc=f"simulate {scenario.name}",
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        result = simulate_to_lake(scenario, args.reactors, args.seed, lake, progress=bar.update)
    for rid in result.run_ids:
        print(rid)
    if result.skipped:
        print(f"{len(result.skipped)} run(s) already in {lake}: skipped", file=sys.stderr)
    if result.written and not args.quiet:
        print(f"wrote {len(result.written)} run(s), {result.ticks:,} ticks to {lake} in {result.seconds:.1f} s",
              file=sys.stderr)
        if len(result.written) <= 20:
            print(format_table(summarize(lake, result.written)), file=sys.stderr)
    return 0


def _not_the_other_kind(name: str, plant: str) -> None:
    """A scenario of the other plant kind, named or given as a file, is one clear line, not a schema error. A
    name both kinds have (`sensor_drift`) is the given kind's."""
    from sources.patient.scenarios import is_patient_scenario_file, patient_scenario_names
    from sources.scenarios import builtin_names

    path = Path(name)
    both = set(patient_scenario_names()) & set(builtin_names())
    if name in both and not path.suffix:
        return
    if plant == "bioreactor" and (name in patient_scenario_names() and not path.suffix
                                  or path.suffix and path.is_file() and is_patient_scenario_file(path)):
        raise UsageError(f"{name!r} is a patient scenario: pass --plant patient (and --patients N)")
    if plant == "patient" and (name in builtin_names() and not path.suffix
                               or path.suffix and path.is_file() and _reads_as_toml(path)
                               and not is_patient_scenario_file(path)):
        raise UsageError(f"{name!r} is a bioreactor scenario, not a patient one: drop --plant patient, or see "
                         "`biopilot scenarios --plant patient`")


def _reads_as_toml(path: Path) -> bool:
    """Whether a file parses as TOML: one that does not is no scenario of either kind, and the loader says why."""
    import tomllib

    try:
        tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    return True


def _simulate_patients(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from biopilot.simulate import PATIENT, simulate_to_lake
    from sources.patient.scenarios import ScenarioError, load_patient_scenario

    if args.reactors is not None:
        raise UsageError("--reactors is for the bioreactor; a patient cohort takes --patients")
    if args.tick_s is not None:
        raise UsageError("--tick-s is for the bioreactor; a patient scenario sets vitals_every_min")
    name = args.scenario or "warfarin_fixed_5mg"
    patients = args.patients or 10
    _not_the_other_kind(name, "patient")
    with user_errors(ScenarioError):
        scenario = load_patient_scenario(name)
        if args.days is not None:
            scenario = scenario.with_overrides(days=args.days)
    lake = lake_of(args)
    with tqdm(total=patients * scenario.days, unit="patient-day", desc=f"simulate {scenario.name}",
              disable=args.quiet or not sys.stderr.isatty()) as bar:
        result = simulate_to_lake(scenario, patients, args.seed, lake, progress=bar.update, kind=PATIENT)
    for rid in result.run_ids:
        print(rid)
    if result.skipped:
        print(f"{len(result.skipped)} run(s) already in {lake}: skipped", file=sys.stderr)
    if result.written and not args.quiet:
        print(f"wrote {len(result.written)} patient run(s), {result.ticks:,} vitals rows to {lake} in "
              f"{result.seconds:.1f} s", file=sys.stderr)
    return 0


def add_overview(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "overview", cmd_overview, "summary table and picture of stored runs")
    lake_option(p)
    p.add_argument("--run", action="append", help="a run id (repeatable; default: all runs)")
    p.add_argument("--png", default=None, help="write the picture here")


def cmd_overview(args: argparse.Namespace) -> int:
    """Print peak VCD, final titer, HCP and faults per run; optionally draw the key signals with fault
    windows shaded."""
    from agents.overview import format_table, plot_overview, summarize

    lake = lake_of(args)
    summaries = summarize(lake, args.run or None)
    if not summaries:
        from sinks import delta

        # runs without assays (patients', trials'): "no runs" read as if the lake were empty
        stored = delta.read(lake, "runs", columns=["run_id"], run_ids=args.run or None)
        if stored is not None and stored.num_rows:
            raise UsageError(f"overview summarises bioreactor runs (VCD, titer, HCP from their assays); the "
                             f"{stored.num_rows} run(s) {'asked for' if args.run else 'in ' + str(lake)} have no "
                             "assays: a patient's or a trial patient's run has its own report, "
                             "`biopilot report RUN_ID`")
        if args.run:
            raise UsageError(f"no run {', '.join(args.run)} in {lake}")
        raise UsageError(f"no runs in {lake}: run `biopilot simulate` first")
    print(format_table(summaries))
    if args.png:
        path = plot_overview(lake, [s.run_id for s in summaries], args.png)
        print(f"overview picture: {path}")
    return 0


# per plant kind: units, speed and scenario of `biopilot up` (patients: a cohort titrated by the nomogram, at
# an hour a second: a first INR within minutes, the twin refitting as the labs come)
UP_DEFAULTS: dict[str, tuple[int, float, str]] = {"bioreactor": (4, 600.0, "normal"),
                                                   "patient": (8, 3600.0, "warfarin_standard")}
# --speed not given: the plant kind's default. Not None (that is what `max` parses to) and not a string (argparse
# would parse it): a number no --speed can be.
PLANT_SPEED = -1.0


def add_up(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "up", cmd_up, "start the whole stack (broker, flow, plant, agents, dashboard)")
    p.add_argument("--plant", choices=["bioreactor", "patient"], default=None,
                   help="bioreactor fleet or patient cohort (default: the plant setting, BIOPILOT_PLANT; bioreactor)")
    p.add_argument("--reactors", type=positive("--reactors", int), default=None,
                   help="number of reactors (default 4; bioreactor)")
    p.add_argument("--patients", type=positive("--patients", int), default=None,
                   help=f"patients in each cohort (default {UP_DEFAULTS['patient'][0]}; --plant patient)")
    p.add_argument("--speed", type=positive("--speed", allow_max=True), default=PLANT_SPEED,
                   help="simulated seconds per wall second, or max (default 600; 3600 for patients: an hour a "
                        "second; the plant waits while the flow is more than 1 GB behind)")
    p.add_argument("--scenario", default=None,
                   help="scenario of every batch or cohort (default normal; warfarin_standard for patients)")
    p.add_argument("--jitter", type=share("--jitter"), default=0.0,
                   help="share of ticks delivered out of order (0-1)")
    p.add_argument("--port", type=port, default=None,
                   help="dashboard port (default BIOPILOT_PORT or 8000)")
    p.add_argument("--lateness-s", type=positive("--lateness-s"), default=None,
                   help="allowed event-time lateness before a tick is late (default: the lateness_s setting, 300)")
    p.add_argument("--batches", type=positive("--batches", int), default=None,
                   help="stop after this many batches (default: run until Ctrl-C)")
    p.add_argument("--nats-cluster", type=positive("--nats-cluster", int), default=None, metavar="N",
                   help="the embedded broker as a cluster of N >= 3 nats-server nodes on loopback, streams with 3 "
                        "replicas: any one node may die (default: one node; an external cluster: its URLs, "
                        "comma-separated, in BIOPILOT_NATS_URL)")
    p.add_argument("--flow-processes", type=positive("--flow-processes", int), default=1, metavar="N",
                   help="the monitoring flow as a Bytewax cluster of N processes (one worker each) sharing the "
                        "stream's partitions; restarting with another N rescales from the same recovery store "
                        "(at most the store's 16 partitions; default 1; docs/SCALE-OUT.md)")
    p.add_argument("--s3", action="store_true",
                   help="the lake on an embedded S3-compatible object store (SeaweedFS, data under "
                        "<lake>/.services/s3): s3://biopilot/<the lake folder's name> (an external store: "
                        "BIOPILOT_LAKE=s3://bucket/prefix and the s3_* settings)")
    lake_option(p)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded broker and cache (unless BIOPILOT_NATS_URL / BIOPILOT_REDIS_URL are set), the
    monitoring flow, the plant feed (a bioreactor fleet, or with --plant patient a cohort of virtual patients
    whose doses, co-medications and adverse events the dashboard controls), the agent workers and the dashboard;
    prints a one-time admin login link. Ctrl-C stops everything."""
    from biopilot.stack import run_up
    from core.services import port_in_use
    from sources.patient.scenarios import load_patient_scenario
    from sources.scenarios import ScenarioError, load_scenario

    settings = settings_for(args)
    args.plant = args.plant or settings.plant
    units, speed, name = UP_DEFAULTS[args.plant]
    if args.plant == "bioreactor" and args.patients is not None:
        raise UsageError("--patients is for --plant patient; a bioreactor fleet takes --reactors")
    if args.plant == "patient" and args.reactors is not None:
        raise UsageError("--reactors is for the bioreactor; a patient cohort takes --patients")
    units = args.reactors or args.patients or units
    args.speed = speed if args.speed == PLANT_SPEED else args.speed
    name = args.scenario or name
    _not_the_other_kind(name, args.plant)
    with user_errors(ScenarioError):
        scenario = load_patient_scenario(name) if args.plant == "patient" else load_scenario(name)
    settings = replace(settings, plant=args.plant)
    if args.port is not None:
        settings = replace(settings, port=args.port)
    if port_in_use(settings.port, settings.host):
        raise UsageError(f"port {settings.port} on {settings.host} is in use: pass --port or set BIOPILOT_PORT")
    if args.nats_cluster is not None and args.nats_cluster < 3:
        raise UsageError("--nats-cluster needs 3 nodes or more (a stream's 3 replicas keep a quorum when one dies)")
    if args.nats_cluster and settings.nats_url:
        raise UsageError("--nats-cluster starts an embedded cluster, but BIOPILOT_NATS_URL names a broker: unset "
                         "it, or list the external cluster's nodes there (comma-separated)")
    from flows.launch import RECOVERY_PARTITIONS

    if args.flow_processes > RECOVERY_PARTITIONS:
        raise UsageError(f"--flow-processes is at most {RECOVERY_PARTITIONS} (the recovery store's partitions)")
    if args.s3 and "://" in settings.lake:
        raise UsageError(f"--s3 starts an embedded object store, but the lake is {settings.lake}: pass a local "
                         "--lake (its folder keeps the store's data) or drop --s3")
    return run_up(settings, scenario, units, args.speed, args.jitter,
                  settings.lateness_s if args.lateness_s is None else args.lateness_s, args.batches,
                  nats_nodes=args.nats_cluster or 1, object_store=args.s3, flow_processes=args.flow_processes)


def add_replay(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "replay", cmd_replay, "publish a stored run to NATS")
    p.add_argument("--run", required=True, help="run id (see `biopilot overview`)")
    p.add_argument("--speed", type=positive("--speed", allow_max=True), default=600.0,
                   help="speed factor or max (default 600)")
    p.add_argument("--as-run", default=None, help="publish under another run id (the lake keeps one copy per id)")
    lake_option(p)


def cmd_replay(args: argparse.Namespace) -> int:
    """Publish a stored run's ticks (event-time spacing divided by --speed) and assays to the broker in
    BIOPILOT_NATS_URL. While it runs, biopilot.control.<reactor> takes {"type": "pause"|"resume"|"stop"}.
    It waits while the monitoring flow is more than 1 GB behind, so the broker never drops what the flow
    has not read (not for a flow that has stopped)."""
    import asyncio

    import nats.errors
    from tqdm import tqdm

    from core.services import without_credentials
    from sinks import delta
    from sources.replay import Replay

    settings = settings_for(args)
    if not settings.nats_url:
        raise UsageError("no broker: set BIOPILOT_NATS_URL (the URL `biopilot up` prints)")
    ticks = delta.read(settings.lake, "ticks", run_ids=[args.run])
    if ticks is None or ticks.num_rows == 0:
        raise UsageError(f"run {args.run!r} has no ticks in {settings.lake}")
    assays = delta.read(settings.lake, "assays", run_ids=[args.run])
    replay = Replay(settings.nats_url, ticks, assays, speed=args.speed, as_run=args.as_run)
    try:
        asyncio.run(_reachable(settings.nats_url))
    except (OSError, nats.errors.Error) as err:  # a stack that has stopped leaves a stale URL behind
        raise UsageError(f"the broker at {without_credentials(settings.nats_url)}: {err or type(err).__name__} "
                         "(is `biopilot up` running? BIOPILOT_NATS_URL is the URL it prints)") from None
    with tqdm(total=ticks.num_rows, unit="tick", desc=f"replay {args.run}", disable=not sys.stderr.isatty()) as bar:
        n = asyncio.run(replay.run(progress=bar.update))
    held = replay.backpressure.held_text()
    print(f"published {n:,} ticks of {args.as_run or args.run}" + (f" ({held})" if held else ""))
    return 0


async def _reachable(nats_url: str) -> None:
    """Connect once (two tries per node) before the replay, whose own client retries for ever, as a live
    component should: run by hand against a broker that is gone it would hang, logging a traceback a try."""
    from core.services import connect_nats

    async def quiet(_err: Exception) -> None:
        return None

    nc = await connect_nats(nats_url, max_reconnect_attempts=1, reconnect_time_wait=0.5, connect_timeout=5,
                            error_cb=quiet)
    await nc.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    for add in (add_scenarios, add_simulate, add_overview, add_up, add_replay):
        add(subparsers)
