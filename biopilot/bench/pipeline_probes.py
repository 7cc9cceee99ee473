"""What `biopilot bench pipeline` watches and stands on, shared by its phases: a fresh broker per phase, the
rows committed to a Delta table, the flow's consumer appearing on the broker."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType

import nats
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from core.services import ManagedServer, ensure_streams, start_nats
from sources.backpressure import flow_backlog

ROWS_PER_MESSAGE = 10_000  # the throughput and soak phases publish Arrow messages of this many rows


class FreshBrokers:
    """A new NATS server with the project's streams for each phase (`brokers(name)` returns its URL), under
    `root`; starting one stops the one before, and leaving the `with` block stops the last."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.server: ManagedServer | None = None

    def __call__(self, name: str) -> str:
        self.stop()
        self.server = start_nats(self.root / f"nats-{name}")
        asyncio.run(ensure_streams(self.server.url))
        return self.server.url

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    def __enter__(self) -> FreshBrokers:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


class CommittedRows:
    """Rows committed to a Delta table so far. The polling shares the machine's cores with what it measures, so
    it keeps the table open and reads only the new log entries: re-opening the table at every poll took a large
    share of the CPU of a short run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table: DeltaTable | None = None

    def __call__(self) -> int:
        try:
            if self.table is None:
                self.table = DeltaTable(str(self.path))
            else:
                self.table.update_incremental()
        except Exception:  # noqa: BLE001 - not created yet
            return 0
        return int(pc.sum(pa.table(self.table.get_add_actions(flatten=True))["num_records"]).as_py() or 0)


def wait_for_consumer(url: str, durable: str, timeout_s: float = 60.0) -> None:
    """Until the flow's durable consumers (one per partition of the stream) exist: they are created after the
    flow has loaded its models, so publishing before would time the start-up backlog, not the pipeline."""
    async def poll() -> None:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    if await flow_backlog(js, durable) is not None:
                        return
                except nats.js.errors.NotFoundError:  # the stream is not made yet
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the flow's consumer {durable} did not appear in {timeout_s:.0f} s")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
    asyncio.run(poll())
    time.sleep(0.5)  # its first pull is on its way
