"""`biopilot up` in a subprocess for the tests that run the whole stack as a user does."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

from tests.dashboard_helpers import wait_for

BIOPILOT = [sys.executable, "-m", "biopilot.cli"]


class Up:
    """`biopilot up` in a subprocess, its output gathered line by line."""

    def __init__(self, args: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BIOPILOT_")}
        self.proc = subprocess.Popen([*BIOPILOT, "up", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    def line(self, pattern: str, timeout_s: float = 60.0) -> re.Match | None:
        return wait_for(lambda: next((m for line in self.lines if (m := re.search(pattern, line))), None), timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
