"""Keep `biopilot up`'s child processes running: each one that dies is logged, restarted with exponential backoff
and counted, and every child's state is published to Redis for the dashboard's `/healthz`.

State per child, in the Redis hash `biopilot:processes` (a field per child, JSON): `state` is `running`, `down`
(dead, waiting out its backoff), `restarting` (started again, not yet up for `settle_s`) or `stopped` (on
purpose: it finished, or `up` is stopping); `pid`, `restarts`, `last_exit` (its exit code, -N for signal N) and
`since` (epoch seconds of the last change). The hash expires unless the supervisor refreshes it, so a supervisor
that died leaves no "running" behind. Restarts are also a Prometheus gauge (`biopilot_process_restarts`).

Children of one `group` (the processes of a Bytewax cluster, which cannot lose a member) die together: when one
dies, the others are stopped, and all of them restart together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from prometheus_client import REGISTRY, Gauge

from core.processes import spawn, stop_process_groups
from core.services import PROCESSES_KEY, redis_client

log = logging.getLogger(__name__)


def _gauge(name: str, doc: str) -> Gauge:
    existing = REGISTRY._names_to_collectors.get(name)  # one supervisor per process, but tests build several
    return existing if isinstance(existing, Gauge) else Gauge(name, doc, ["process"])


RESTARTS = _gauge("biopilot_process_restarts", "restarts of a supervised process since `biopilot up` started")
RUNNING = _gauge("biopilot_process_running", "1 while a supervised process runs, 0 while it is down")


@dataclass
class Child:
    """One supervised process. `finishes`: an exit with code 0, or by SIGTERM, means its work is done (the plant
    after its batches, or told to stop), not a crash: it is not restarted."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    finishes: bool = False
    group: str | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    state: str = "stopped"
    restarts: int = 0
    last_exit: int | None = None
    since: float = field(default_factory=time.time)
    started_mono: float = 0.0
    backoff_s: float = 0.0
    restart_at: float = 0.0  # monotonic; while `down`

    def as_json(self) -> str:
        pid = self.proc.pid if self.proc is not None and self.state in ("running", "restarting") else None
        return json.dumps({"state": self.state, "pid": pid, "restarts": self.restarts, "last_exit": self.last_exit,
                           "since": round(self.since, 3)})


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Supervisor:
    """Restart delays double from `first_delay_s` to `max_delay_s`, back to the first once a child stayed up
    `reset_after_s`. Log lines go to `out` (`biopilot up`'s own output) as well as to the logger."""

    def __init__(self, children: list[Child], redis_url: str, out: TextIO, first_delay_s: float = 1.0,
                 max_delay_s: float = 30.0, reset_after_s: float = 60.0, settle_s: float = 1.0,
                 poll_s: float = 0.1, ttl_s: int = 10) -> None:
        self.children = {c.name: c for c in children}
        self.redis = redis_client(redis_url, socket_timeout_s=2.0)
        self.out = out
        self.first_delay_s, self.max_delay_s, self.reset_after_s = first_delay_s, max_delay_s, reset_after_s
        self.settle_s, self.poll_s, self.ttl_s = settle_s, poll_s, ttl_s
        self.finished = asyncio.Event()  # a `finishes` child is done
        self.stopping = False
        self.redis_failing = False

    def say(self, text: str) -> None:
        log.info(text)
        print(f"supervisor {text}", file=self.out, flush=True)

    def _set(self, child: Child, state: str) -> None:
        child.state, child.since = state, time.time()
        RUNNING.labels(child.name).set(1 if state in ("running", "restarting") else 0)

    def _start(self, child: Child) -> None:
        child.proc = spawn(child.command, child.log_path, child.env)
        child.started_mono = time.monotonic()
        self._set(child, "restarting" if child.restarts else "running")

    def start(self) -> None:
        for child in self.children.values():
            RESTARTS.labels(child.name).set(0)
            self._start(child)

    def _check(self, child: Child, now: float) -> bool:
        """Advance one child's state; whether it changed."""
        if child.state in ("running", "restarting"):
            code = child.proc.poll()
            if code is None:
                if child.state == "restarting" and now - child.started_mono >= self.settle_s:
                    self._set(child, "running")
                    return True
                return False
            child.last_exit = code
            # SIGTERM asks a process to stop: one that took it before it set up its handler (while importing,
            # seconds on a loaded machine) is done, not crashed
            if child.finishes and code in (0, -signal.SIGTERM):
                self._set(child, "stopped")
                self.say(f"{child.name} (pid {child.proc.pid}) finished" + (" (SIGTERM)" if code else ""))
                self.finished.set()
                return True
            up_s = now - child.started_mono
            child.backoff_s = self.first_delay_s if up_s >= self.reset_after_s or not child.backoff_s \
                else min(2 * child.backoff_s, self.max_delay_s)
            child.restart_at = now + child.backoff_s
            self._set(child, "down")
            self.say(f"{child.name} (pid {child.proc.pid}) died after {up_s:.1f} s: {_describe(code)}; restarting "
                     f"in {child.backoff_s:g} s (restart {child.restarts + 1}, log {child.log_path})")
            self._stop_group(child)
            return True
        if child.state == "down" and now >= child.restart_at:
            child.restarts += 1
            RESTARTS.labels(child.name).set(child.restarts)
            self._start(child)
            self.say(f"{child.name} restarted: pid {child.proc.pid} (restart {child.restarts})")
            return True
        return False

    def _stop_group(self, dead: Child) -> None:
        """The rest of `dead`'s group is stopped, to restart with it."""
        siblings = [c for c in self.children.values()
                    if dead.group is not None and c is not dead and c.group == dead.group and c.state != "down"]
        if not siblings:
            return
        stop_process_groups([c.proc for c in siblings], 2.0)
        for sibling in siblings:
            sibling.last_exit = sibling.proc.returncode
            sibling.backoff_s, sibling.restart_at = dead.backoff_s, dead.restart_at
            self._set(sibling, "down")
        self.say(f"{', '.join(c.name for c in siblings)} stopped with {dead.name} (group {dead.group}): a "
                 "cluster restarts as a whole")

    async def _publish(self) -> None:
        """Every child's state to Redis, the hash's expiry renewed. Redis away: said once, tried again later."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(PROCESSES_KEY, mapping={c.name: c.as_json() for c in self.children.values()})
                pipe.expire(PROCESSES_KEY, self.ttl_s)
                await pipe.execute()
        except Exception as err:  # noqa: BLE001 - the children matter more than their report
            if not self.redis_failing:
                self.say(f"cannot publish the process states to Redis ({err.__class__.__name__}: {err})")
            self.redis_failing = True
        else:
            self.redis_failing = False

    async def run(self) -> None:
        """Watch the children until `stop`; state changes are published at once, and all every `ttl_s / 3`."""
        published = 0.0
        await self._publish()
        while not self.stopping:
            now = time.monotonic()
            changed = [self._check(child, now) for child in self.children.values()]
            if any(changed) or now - published >= self.ttl_s / 3:
                await self._publish()
                published = now
            await asyncio.sleep(self.poll_s)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop restarting, then stop every child (SIGTERM to its process group, SIGKILL after `grace_s`)."""
        self.stopping = True
        running = [c.proc for c in self.children.values() if c.proc is not None]
        await asyncio.to_thread(stop_process_groups, running, grace_s)
        for child in self.children.values():
            self._set(child, "stopped")
        await self._publish()
        await self.redis.aclose()
