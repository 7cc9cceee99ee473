"""Start a dataflow of this folder as its own process (`python -m bytewax.run`): the one starter that `biopilot
up`, the benchmarks and the tests share.

The flow reads its settings through `core.config`; this sets the environment variables of those it is given
(broker, lake, lateness, consumer, recovery store, the sink's log, the plant kind it monitors), which override
`biopilot.toml`.

With a recovery store, an epoch lasts `snapshot_s`: each epoch's end pickles every reactor's monitor into the
store, which holds the dataflow thread up for a moment, and a crash replays at most one epoch of input from the
broker (docs/PERFORMANCE.md has the measured trade-off). Without a store, epochs of 1 s: the consumer's acks,
then the resume point, trail by one epoch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.processes import spawn
from core.services import FLOW_DURABLE

FLOWS = {"monitor": "flows.monitor:build_flow()", "naive": "flows.naive:build_flow()"}
# The recovery store holds the units' monitors pickled: bump this when their modules or classes move or change
# shape, so that a store written by an older version is set aside rather than failing the flow at every restart.
# 3: `MonitorState` moved to detectors.unit_monitor (the patient plant's monitor beside the reactor's).
STATE_FORMAT = "3"
STATE_FORMAT_FILE = "state-format"


def set_aside_stale_store(recovery_dir: Path) -> Path | None:
    """Move a recovery store of another state format aside (nothing is deleted); the new path, or None."""
    stamp = recovery_dir / STATE_FORMAT_FILE
    if not any(recovery_dir.glob("*.sqlite3")) or (stamp.exists() and stamp.read_text().strip() == STATE_FORMAT):
        return None
    found = stamp.read_text().strip() if stamp.exists() else "1"
    aside = recovery_dir.with_name(f"{recovery_dir.name}.format-{found}.{time.strftime('%Y%m%dT%H%M%S')}")
    recovery_dir.rename(aside)
    return aside


def flow_command(nats_url: str, lake: str, recovery_dir: Path | None = None, lateness_s: float = 300.0,
                 durable: str = FLOW_DURABLE, extra_env: dict[str, str] | None = None,
                 snapshot_s: float = 5.0, flow: str = "monitor", plant: str | None = None,
                 ) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run `flow` (the recovery store is made if missing); `plant`: the plant
    kind it monitors (default: the environment's `BIOPILOT_PLANT`, else the settings')."""
    env = {**os.environ, "BIOPILOT_NATS_URL": nats_url, "BIOPILOT_LAKE": lake,
           "BIOPILOT_LATENESS_S": str(lateness_s), "BIOPILOT_FLOW_DURABLE": durable,
           "BIOPILOT_FLOW_RECOVERY": "0" if recovery_dir is None else "1",
           **({} if plant is None else {"BIOPILOT_PLANT": plant}), **(extra_env or {})}
    cmd = [sys.executable, "-m", "bytewax.run", FLOWS[flow]]
    if recovery_dir is not None:
        env.setdefault("BIOPILOT_FLOW_WAL", str(recovery_dir / "lake-wal"))  # the sink's log, beside the store
        if not any(recovery_dir.glob("*.sqlite3")):
            recovery_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery_dir), "1"], check=True, env=env)
            (recovery_dir / STATE_FORMAT_FILE).write_text(STATE_FORMAT)
        cmd += ["-r", str(recovery_dir), "-s", f"{snapshot_s:g}", "-b", "30"]
    else:
        cmd += ["-s", "1"]
    return cmd, env


def start_flow(nats_url: str, lake: str, recovery_dir: Path | None = None, lateness_s: float = 300.0,
               durable: str = FLOW_DURABLE, log_path: Path | None = None,
               extra_env: dict[str, str] | None = None, snapshot_s: float = 5.0,
               flow: str = "monitor", plant: str | None = None) -> subprocess.Popen:
    """`flow` as its own process in its own session, its output appended to `log_path`."""
    cmd, env = flow_command(nats_url, lake, recovery_dir, lateness_s, durable, extra_env, snapshot_s, flow, plant)
    return spawn(cmd, log_path or Path(os.devnull), env)
