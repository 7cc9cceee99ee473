"""Publishing ticks, assays and watermarks to NATS JetStream (shared by the plant feed, replay and tests)."""

from __future__ import annotations

import asyncio
import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
from nats.js import JetStreamContext

from core.codec import ARROW_CONTENT_TYPE, encode_arrow
from sources.backpressure import Backpressure
from sources.telemetry import KIND_HEADER

log = logging.getLogger(__name__)
ARROW_HEADERS = {"Content-Type": ARROW_CONTENT_TYPE}


async def publish_retrying(js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str] | None = None,
                           attempts: int = 300) -> None:
    """Publish and wait for the JetStream ack; a broker restart is waited out (up to ~30 s)."""
    for attempt in range(attempts):
        try:
            await js.publish(subject, data, headers=headers, timeout=2)
            return
        except Exception as err:  # noqa: BLE001 - every failure is retried; the last one is raised
            if attempt == attempts - 1:
                raise
            log.debug("publish to %s failed (%s), retrying", subject, err)
            await asyncio.sleep(0.1)


def split_by_reactor(ticks: pa.Table | pa.RecordBatch, column: str = "reactor_id") -> dict[str, pa.Table]:
    """The rows of each unit (`column`: the unit's id column, `PlantVocabulary.unit_column`)."""
    table = ticks if isinstance(ticks, pa.Table) else pa.Table.from_batches([ticks])
    reactors = table[column]
    ids = pc.unique(reactors).to_pylist()
    if len(ids) == 1:
        return {ids[0]: table}
    return {r: table.filter(pc.equal(reactors, r)) for r in ids}


async def publish_ticks(js: JetStreamContext, reactor_id: str, ticks: pa.Table, max_rows: int = 20_000,
                        backpressure: Backpressure | None = None) -> None:
    """Ticks as Arrow IPC messages of at most `max_rows`; with `backpressure`, held while the flow is behind."""
    for offset in range(0, ticks.num_rows, max_rows):
        payload = encode_arrow(ticks.slice(offset, max_rows))
        await publish_retrying(js, f"biopilot.telemetry.{reactor_id}", payload, ARROW_HEADERS)
        if backpressure is not None:
            await backpressure.published(len(payload))


async def publish_assays(js: JetStreamContext, reactor_id: str, assays: pa.Table, kind: str | None = None) -> None:
    """Lab results on `biopilot.assays.<unit>`; `kind` (header `BioPilot-Kind`) names other rows sent there
    (a patient's `doses`)."""
    if assays.num_rows:
        headers = ARROW_HEADERS if kind is None else {**ARROW_HEADERS, KIND_HEADER: kind}
        await publish_retrying(js, f"biopilot.assays.{reactor_id}", encode_arrow(assays), headers)


async def publish_watermark(js: JetStreamContext, reactor_id: str, ts_us: int) -> None:
    """Tell the flow that no tick at or before `ts_us` (event time) is still coming for this reactor."""
    await publish_retrying(js, f"biopilot.telemetry.{reactor_id}", json.dumps({"ts": ts_us / 1e6}).encode(),
                           {KIND_HEADER: "watermark"})
