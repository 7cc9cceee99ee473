"""Child processes in their own session: started with their output in a log, stopped as a whole group.

A child gets its own session (a Ctrl-C at the terminal reaches only its parent, which then stops it), so its
helpers (Bytewax's workers, a server's threads) are stopped with it by signalling the group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path


def spawn(cmd: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `cmd` in a new session with its output appended to `log_path`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process_groups(procs: Iterable[subprocess.Popen], grace_s: float = 10.0) -> None:
    """SIGTERM every still-running process's group, then SIGKILL the groups still alive after `grace_s`."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in running:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
        proc.wait()


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process's group, SIGKILL after `grace_s`; waits until it has exited."""
    stop_process_groups([proc], grace_s)


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL at once (a crash, as tests make one); waits until it has exited."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()
