"""What a deployment runs once before its long-lived processes (deploy/: a Kubernetes Job and init container,
the compose file's init services): `streams` creates the broker's JetStream streams, `flow-prepare` a flow
process's share of the recovery store and the lake's table properties."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from biopilot.cli.errors import UsageError
from biopilot.cli.options import check_folder, command, in_range, lake_of, lake_option, positive, settings_for


def add_streams(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "streams", cmd_streams, "create or update the broker's JetStream streams")
    p.add_argument("--replicas", type=positive("--replicas", int), default=None,
                   help="copies of each stream (default: 3 on a JetStream cluster of 3 nodes or more, else 1)")
    p.add_argument("--wait-s", type=in_range("--wait-s", float, 0, 3600, unit=" s"), default=60.0,
                   help="how long to wait for a node of the broker to listen, e.g. while the deployment starts it "
                        "(default 60)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_streams(args: argparse.Namespace) -> int:
    """Create (or update) TELEMETRY, ALERTS and DEADLETTER on the broker in BIOPILOT_NATS_URL (one URL or a
    cluster's comma-separated list; a user allowed to manage streams, e.g. `admin`). Safe to run again: a
    deployment runs it as a Job before the flow starts."""
    from core.services import STREAMS, ensure_streams, wait_nats, without_credentials

    settings = settings_for(args)
    if not settings.nats_url:
        raise UsageError("no broker: set BIOPILOT_NATS_URL (its nodes, comma-separated)")
    try:  # else the client retries for minutes and ends in a traceback
        wait_nats(settings.nats_url, args.wait_s)
    except TimeoutError as err:  # its message names the URL without credentials
        raise UsageError(f"{err}: is the broker running? (--wait-s waits longer)") from None
    replicas = asyncio.run(ensure_streams(settings.nats_url, args.replicas))
    if args.json:
        print(json.dumps({"streams": list(STREAMS), "replicas": replicas}))
    else:
        print(f"streams {', '.join(STREAMS)} on {without_credentials(settings.nats_url)}: {replicas} replica(s)")
    return 0


def add_flow_prepare(subparsers: argparse._SubParsersAction) -> None:
    p = command(subparsers, "flow-prepare", cmd_flow_prepare,
                "before a flow process starts: its recovery partitions, the lake's tables")
    p.add_argument("--recovery", required=True, help="the process's recovery directory (its own volume)")
    p.add_argument("--process", type=int, default=0, help="this process's id, 0..N-1 (default 0)")
    p.add_argument("--processes", type=positive("--processes", int), default=1,
                   help="processes in the flow's cluster (default 1)")
    lake_option(p)


def cmd_flow_prepare(args: argparse.Namespace) -> int:
    """Make process I's share of the flow's recovery store in --recovery, once (partitions k with k mod N = I;
    Bytewax finds every partition on whichever process holds it: with one volume per process, each holds its
    own), and give the lake's tables their properties before any process appends. A directory that already
    holds partitions is left as it is."""
    from bytewax.recovery import init_db_dir

    from flows.launch import RECOVERY_PARTITIONS, STATE_FORMAT, STATE_FORMAT_FILE, prepare_lake

    if not 0 <= args.process < args.processes:
        raise UsageError(f"--process must be 0..{args.processes - 1}, got {args.process}")
    if args.processes > RECOVERY_PARTITIONS:
        raise UsageError(f"--processes: at most {RECOVERY_PARTITIONS} (the recovery store's partitions)")
    if not args.recovery.strip():  # else "" is the working directory, filled with the store's partitions
        raise UsageError("--recovery: give the process's recovery directory")
    check_folder("--recovery", args.recovery, "a directory")
    recovery = Path(args.recovery)
    lake_of(args)  # a lake that is a file: refused before the recovery store is made, not silently passed
    recovery.mkdir(parents=True, exist_ok=True)
    if not any(recovery.glob("*.sqlite3")):
        with tempfile.TemporaryDirectory(dir=recovery) as made:
            init_db_dir(Path(made), RECOVERY_PARTITIONS)
            for k in range(RECOVERY_PARTITIONS):
                if k % args.processes == args.process:
                    (Path(made) / f"part-{k}.sqlite3").rename(recovery / f"part-{k}.sqlite3")
        (recovery / STATE_FORMAT_FILE).write_text(STATE_FORMAT)
    prepare_lake(settings_for(args).lake)
    held = sorted(int(p.stem.removeprefix("part-")) for p in recovery.glob("part-*.sqlite3"))
    print(f"flow process {args.process} of {args.processes}: recovery partitions {held} in {recovery}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    for add in (add_streams, add_flow_prepare):
        add(subparsers)
