"""The monitoring dataflow: NATS JetStream -> decode/validate -> per-reactor event time + detectors -> sinks.

Thin wiring only; the logic lives in `sources.telemetry` (routing, validation) and `detectors.monitor`.
Run it with `python -m bytewax.run "flows.monitor:build_flow()" -r RECOVERY_DIR -s 5 -b 30` (as `start_flow` does).
Settings from the environment: BIOPILOT_NATS_URL (required), BIOPILOT_LAKE, BIOPILOT_LATENESS_S (300),
BIOPILOT_DETECTOR (fusion, the default, | zscore), BIOPILOT_FLOW_DURABLE (consumer name), BIOPILOT_FLUSH_ROWS (250000),
BIOPILOT_FLUSH_S (1), BIOPILOT_EVENT_HORIZON_H (48: watermarks and ticks further ahead of their reactor's latest
event time are dead-lettered, not obeyed), BIOPILOT_FLOW_RECOVERY (1, the default: the run has a recovery store `-r`; 0: it has none,
so nothing keeps a snapshot: the monitors are not copied at each epoch and the Delta sink keeps no write-ahead
log), BIOPILOT_FLOW_WAL (the Delta sink's write-ahead log with a recovery store: a local directory beside the
store; `start_flow` puts it in the store's directory, the default is `<lake>/.flow-wal/<consumer>`).
"""

from __future__ import annotations

import ctypes
import gc
import os
from functools import partial

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow

from biopilot.config import load_settings
from biopilot.services import FLOW_DURABLE
from detectors.monitor import MonitorConfig, judged_step, warm_up
from sinks.lake_sink import MAX_ROWS, LakeSink, default_wal_dir
from sinks.nats_sink import NatsPublishSink, Publish, alert_json
from sources.jetstream import JetStreamSource
from sources.telemetry import REASON_HEADER, route


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse (whether it could: not on another C library). By default it hands
    every freed block of 128 kB-32 MB (numpy's arrays, the Delta writer's buffers) back to the kernel, and the next
    allocation faults the pages in again, zeroed: with the fusion that was a quarter of the flow's CPU (1.1 of
    4.3 CPU-s per 2M ticks, in the kernel). Blocks up to 256 MB now come from the heap, and up to 1 GB of free heap
    is kept. The flow's memory did not grow for it: 1,100 / 1,101 MB at most over a 300 s soak without / with."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 256 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def _dead_messages(dead: pa.Table, stage: str) -> list[Publish]:
    """Dead letters for `biopilot.deadletter`; the id (source sequence and stage: a message can be refused in
    part by routing and in part by the monitor) lets JetStream drop a republish after a restart."""
    return [("biopilot.deadletter", row["payload"], {REASON_HEADER: row["reason"][:1000],
                                                     "Nats-Msg-Id": f"dl-{row['stream_seq']}-{stage}"})
            for row in dead.to_pylist()]


def build_flow() -> Dataflow:
    settings = load_settings()
    if not settings.nats_url:
        raise RuntimeError("BIOPILOT_NATS_URL must point at the broker the flow reads")
    recovery = os.environ.get("BIOPILOT_FLOW_RECOVERY", "1") != "0"
    config = MonitorConfig.for_detector(os.environ.get("BIOPILOT_DETECTOR", "fusion"),
                                        float(os.environ.get("BIOPILOT_LATENESS_S", "300")), snapshots_kept=recovery)
    durable = os.environ.get("BIOPILOT_FLOW_DURABLE", FLOW_DURABLE)
    wal_dir = (os.environ.get("BIOPILOT_FLOW_WAL") or default_wal_dir(settings.lake, durable)) if recovery else None
    warm_up(config)
    # the modules, models and kernels loaded so far (~450k objects) never become garbage: a full collection
    # scanning them stopped the flow for ~260 ms, whenever one came; frozen, they are not scanned again
    gc.freeze()
    keep_freed_memory()

    flow = Dataflow("biopilot-monitor")
    messages = op.input("nats", flow, JetStreamSource(settings.nats_url, durable=durable))
    routed = op.map("route", messages, route)
    items = op.flat_map("items", routed, lambda r: r[0])
    dead = op.filter_map("dead", routed, lambda r: r[1])
    keyed = op.key_on("by_reactor", items, lambda item: item.reactor_id)
    horizon_us = settings.event_horizon_h * 3_600_000_000
    outputs = op.stateful_flat_map("monitor", keyed, partial(judged_step, config=config, horizon_us=horizon_us))
    tables = op.flat_map("tables", outputs, lambda kv: list(kv[1].tables.items()))
    dead_rows = op.map("dead_rows", dead, lambda t: ("deadletter", t))
    lake_items = op.key_on("to_lake", op.merge("lake_rows", tables, dead_rows), lambda _: "lake")
    max_rows = int(os.environ.get("BIOPILOT_FLUSH_ROWS", str(MAX_ROWS)))
    max_age_s = float(os.environ.get("BIOPILOT_FLUSH_S", "1"))
    op.output("lake", lake_items, LakeSink(settings.lake, max_rows, max_age_s, wal_dir=wal_dir))
    alerts = op.flat_map("alerts", outputs, lambda kv: [
        (f"biopilot.alerts.{a['reactor_id']}", alert_json(a), {"Nats-Msg-Id": a["alert_id"]}) for a in kv[1].alerts]
        + [(f"biopilot.alerts.{c['reactor_id']}", alert_json(c), {"Nats-Msg-Id": f"clear-{c['alert_id']}"})
           for c in kv[1].clears])
    dead_msgs = op.flat_map("dead_msgs", dead, lambda t: _dead_messages(t, "route"))
    refused = op.flat_map("refused", outputs, lambda kv: _dead_messages(kv[1].tables["deadletter"], "monitor")
                          if "deadletter" in kv[1].tables else [])
    nats_items = op.key_on("to_nats", op.merge("nats_msgs", alerts, dead_msgs, refused), lambda _: "nats")
    op.output("publish", nats_items, NatsPublishSink(settings.nats_url))
    return flow
