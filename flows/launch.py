"""Start a dataflow of this folder as its own process (`python -m bytewax.run`): the one starter that `biopilot
up`, the benchmarks and the tests share.

The flow reads its settings through `core.config`; this sets the environment variables of those it is given
(broker, lake, lateness, consumer, recovery store, the sink's log, the plant kind it monitors), which override
`biopilot.toml`.

With a recovery store, an epoch lasts `snapshot_s`: each epoch's end pickles every reactor's monitor into the
store, which holds the dataflow thread up for a moment, and a crash replays at most one epoch of input from the
broker (docs/PERFORMANCE.md has the measured trade-off). Without a store, epochs of 1 s: the consumer's acks,
then the resume point, trail by one epoch.

A flow of N processes is one Bytewax cluster (`-i I -a HOST:PORT;...`, one worker each: threads of one process
contend for the GIL) sharing the stream's partitions and one recovery store of `RECOVERY_PARTITIONS`
partitions, made once; a restart with another N rescales from it. A cluster cannot lose a member: when one
process dies, all of them are restarted (`biopilot.supervisor`). docs/SCALE-OUT.md has the figures and the form
for several machines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.processes import spawn
from core.services import FLOW_DURABLE, free_port
from sinks import delta
from sinks.lake_sink import FLOW_TABLES

FLOWS = {"monitor": "flows.monitor:build_flow()", "naive": "flows.naive:build_flow()"}
# The recovery store holds the units' monitors pickled: bump this when their modules or classes move or change
# shape, so that a store written by an older version is set aside rather than failing the flow at every restart.
# 3: `MonitorState` moved to detectors.unit_monitor (the patient plant's monitor beside the reactor's).
# 4: a source partition per stream partition, a sink partition (and write-ahead log) per unit partition, and
# RECOVERY_PARTITIONS partitions in the store.
STATE_FORMAT = "4"
STATE_FORMAT_FILE = "state-format"
# the recovery store's partitions: as many as the most processes a flow may run as (more cost nothing but files)
RECOVERY_PARTITIONS = 16


def set_aside_stale_store(recovery_dir: Path) -> Path | None:
    """Move a recovery store of another state format aside (nothing is deleted); the new path, or None."""
    stamp = recovery_dir / STATE_FORMAT_FILE
    if not any(recovery_dir.glob("*.sqlite3")) or (stamp.exists() and stamp.read_text().strip() == STATE_FORMAT):
        return None
    found = stamp.read_text().strip() if stamp.exists() else "1"
    aside = recovery_dir.with_name(f"{recovery_dir.name}.format-{found}.{time.strftime('%Y%m%dT%H%M%S')}")
    recovery_dir.rename(aside)
    return aside


def cluster_addresses(processes: int) -> list[str]:
    """Loopback addresses for a cluster of `processes` on this machine (one: none, a lone process)."""
    return [] if processes <= 1 else [f"127.0.0.1:{free_port()}" for _ in range(processes)]


def flow_command(nats_url: str, lake: str, recovery_dir: Path | None = None, lateness_s: float = 300.0,
                 durable: str = FLOW_DURABLE, extra_env: dict[str, str] | None = None,
                 snapshot_s: float = 5.0, flow: str = "monitor", plant: str | None = None,
                 process_id: int = 0, addresses: list[str] | None = None,
                 ) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `flow` (the recovery store is made if missing); `plant`: the plant
    kind it monitors (default: the environment's `BIOPILOT_PLANT`, else the settings'). With `addresses` (one
    per process, `cluster_addresses`): process `process_id` of that cluster."""
    env = {**os.environ, "BIOPILOT_NATS_URL": nats_url, "BIOPILOT_LAKE": lake,
           "BIOPILOT_LATENESS_S": str(lateness_s), "BIOPILOT_FLOW_DURABLE": durable,
           "BIOPILOT_FLOW_RECOVERY": "0" if recovery_dir is None else "1",
           **({} if plant is None else {"BIOPILOT_PLANT": plant}), **(extra_env or {})}
    cmd = [sys.executable, "-m", "bytewax.run", FLOWS[flow]]
    if recovery_dir is not None:
        env.setdefault("BIOPILOT_FLOW_WAL", str(recovery_dir / "lake-wal"))  # the sink's logs, beside the store
        if not any(recovery_dir.glob("*.sqlite3")):
            recovery_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery_dir), str(RECOVERY_PARTITIONS)],
                           check=True, env=env)
            (recovery_dir / STATE_FORMAT_FILE).write_text(STATE_FORMAT)
        cmd += ["-r", str(recovery_dir), "-s", f"{snapshot_s:g}", "-b", "30"]
    else:
        cmd += ["-s", "1"]
    if addresses and len(addresses) > 1:
        cmd += ["-i", str(process_id), "-a", ";".join(addresses)]
    return cmd, env


def prepare_lake(lake: str) -> None:
    """Before the flow's processes start: the lake's tables get their properties now (`delta.prepare_tables`),
    not from partitions committing beside each other."""
    delta.prepare_tables(lake, FLOW_TABLES)


def start_flow(nats_url: str, lake: str, recovery_dir: Path | None = None, lateness_s: float = 300.0,
               durable: str = FLOW_DURABLE, log_path: Path | None = None,
               extra_env: dict[str, str] | None = None, snapshot_s: float = 5.0,
               flow: str = "monitor", plant: str | None = None) -> subprocess.Popen:
    """`flow` as its own process in its own session, its output appended to `log_path`."""
    prepare_lake(lake)
    cmd, env = flow_command(nats_url, lake, recovery_dir, lateness_s, durable, extra_env, snapshot_s, flow, plant)
    return spawn(cmd, log_path or Path(os.devnull), env)


def cluster_commands(nats_url: str, lake: str, processes: int, recovery_dir: Path | None = None,
                     lateness_s: float = 300.0, durable: str = FLOW_DURABLE, extra_env: dict[str, str] | None = None,
                     snapshot_s: float = 5.0, plant: str | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """The command and environment of each process I of the monitoring flow as a cluster of `processes` on this
    machine (one: a lone process), the lake prepared for them."""
    prepare_lake(lake)
    addresses = cluster_addresses(processes)
    return [flow_command(nats_url, lake, recovery_dir, lateness_s, durable, extra_env, snapshot_s, plant=plant,
                         process_id=process_id, addresses=addresses) for process_id in range(processes)]


def start_cluster(nats_url: str, lake: str, processes: int, recovery_dir: Path | None = None,
                  lateness_s: float = 300.0, durable: str = FLOW_DURABLE, log_dir: Path | None = None,
                  extra_env: dict[str, str] | None = None, snapshot_s: float = 5.0, plant: str | None = None,
                  ) -> list[subprocess.Popen]:
    """The monitoring flow as a cluster of `processes` on this machine, process I's output appended to
    `log_dir/flow-I.log`."""
    commands = cluster_commands(nats_url, lake, processes, recovery_dir, lateness_s, durable, extra_env, snapshot_s,
                                plant)
    return [spawn(cmd, Path(os.devnull) if log_dir is None else log_dir / f"flow-{process_id}.log", env)
            for process_id, (cmd, env) in enumerate(commands)]
