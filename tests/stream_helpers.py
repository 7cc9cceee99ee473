"""Helpers for the streaming tests: make ticks, publish them, wait for rows (the `run_flow` fixture starts the
flow process)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import nats
import pyarrow as pa
import pyarrow.compute as pc

from core.processes import kill_process_group, stop_process_group
from core.services import connect_nats
from sinks import delta
from sources.fleet import Fleet
from sources.publish import publish_retrying, publish_ticks, publish_watermark
from sources.scenarios import load_scenario


def make_ticks(scenario: str = "normal", reactors: int = 2, ticks: int = 1500, seed: int = 1) -> pa.Table:
    fleet = Fleet(load_scenario(scenario), reactors, seed=seed)
    return pa.Table.from_batches([fleet.step(ticks).ticks])


def by_reactor(table: pa.Table) -> dict[str, pa.Table]:
    return {r: table.filter(pc.equal(table["reactor_id"], r)) for r in pc.unique(table["reactor_id"]).to_pylist()}


async def _publish(url: str, table: pa.Table, chunk: int, watermark: bool, pace_s: float) -> None:
    nc = await connect_nats(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    js = nc.jetstream()
    for reactor, rows in by_reactor(table).items():
        for offset in range(0, rows.num_rows, chunk):
            await publish_ticks(js, reactor, rows.slice(offset, chunk))
            if pace_s:
                await asyncio.sleep(pace_s)
        if watermark:
            # just past the last tick: releases them all (one far ahead would be refused, beyond the horizon)
            await publish_watermark(js, reactor, int(rows["ts"].cast(pa.int64()).to_numpy().max()) + 1)
    await nc.close()


def publish(url: str, table: pa.Table, chunk: int = 250, watermark: bool = True, pace_s: float = 0.0) -> None:
    asyncio.run(_publish(url, table, chunk, watermark, pace_s))


async def _raw(url: str, items: list[tuple[str, bytes, dict | None]]) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for subject, data, headers in items:
        await publish_retrying(js, subject, data, headers)
    await nc.close()


def publish_raw(url: str, items: list[tuple[str, bytes, dict | None]]) -> None:
    asyncio.run(_raw(url, items))


@dataclass
class Flow:
    """A flow process the `run_flow` fixture started, and its log."""

    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        kill_process_group(self.proc)

    def stop(self) -> None:
        stop_process_group(self.proc)


def count(lake: Path, table: str) -> int:
    t = delta.read(lake, table, columns=None)
    return 0 if t is None else t.num_rows


def wait_rows(lake: Path, table: str, n: int, flow: Flow | None = None, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = 0
    while time.monotonic() < deadline:
        got = count(lake, table)
        if got >= n:
            time.sleep(0.3)  # anything extra would show up now
            return count(lake, table)
        if flow is not None and not flow.alive():
            raise AssertionError(f"flow died:\n{flow.log.read_text()[-3000:]}")
        time.sleep(0.2)
    log = flow.log.read_text()[-3000:] if flow else ""
    raise AssertionError(f"{table}: {got} rows after {timeout_s} s, expected {n}\n{log}")
