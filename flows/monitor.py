"""The monitoring dataflow: NATS JetStream -> decode/validate -> per-unit event time + detectors -> sinks.

Thin wiring only; the logic lives in `sources.telemetry` (routing, validation) and the plant kind's monitor
(`Settings.plant`): `detectors.reactor_monitor` for reactors, `detectors.patient_monitor` for patients (whose
twin refits are also published on `biopilot.twin.<patient>`); `detectors.unit_monitor` holds the shared steps.
Run it with `python -m bytewax.run "flows.monitor:build_flow()" -r RECOVERY_DIR -s 5 -b 30` (as a cluster of N
processes add `-i I -a "HOST:PORT;..."`: docs/SCALE-OUT.md), as `flows.launch` does; its settings come from `core.config` (README's Settings). Without a recovery store (`flow_recovery`
false) nothing keeps a snapshot: the monitors are not copied at each epoch, the Delta sink keeps no
write-ahead log.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable
from functools import partial

import bytewax.operators as op
import pyarrow as pa
from bytewax.dataflow import Dataflow

from core.config import load_settings
from core.plants import PLANTS
from core.services import FLOW_DURABLE
from detectors import patient_monitor, reactor_monitor
from detectors.unit_monitor import MonitorConfig, MonitorFactory, Outputs, judged_step
from sinks.lake_sink import EPOCH_ITEM, LakeSink, default_wal_dir, part_name
from sinks.nats_sink import NatsPublishSink, Publish, alert_json
from sources.jetstream import EPOCH_MARK, JetStreamSource, stream_partitions, unit_partition
from sources.telemetry import REASON_HEADER, route


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse (whether it could: not on another C library). By default it hands
    large freed blocks (numpy's arrays, the Delta writer's buffers) back to the kernel, and the next allocation
    faults the pages in again, zeroed: with the fusion a large share of the flow's CPU went there. Blocks up to
    256 MB now come from the heap, and up to 1 GB of free heap is kept; the flow's memory over a soak did not
    grow for it (docs/PERFORMANCE.md)."""
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


def _twin_messages(out: Outputs) -> list[Publish]:
    """A patient's twin refits for `biopilot.twin.<patient>`; the id lets JetStream drop a republished one."""
    messages = []
    for twin in out.twins:
        subject, headers = patient_monitor.twin_message(twin)
        messages.append((subject, alert_json(twin), headers))
    return messages


def monitor_for(plant: str, lake: str) -> tuple[MonitorFactory, Callable[[MonitorConfig], Outputs]]:
    """The plant kind's monitor (made per unit) and its warm-up."""
    if plant == "patient":  # the twin reads each patient's covariates from the lake the plant writes
        return partial(patient_monitor.PatientMonitor, lake=lake), partial(patient_monitor.warm_up, twin=True)
    return reactor_monitor.ReactorMonitor, reactor_monitor.warm_up


def build_flow() -> Dataflow:
    settings = load_settings()
    if not settings.nats_url:
        raise RuntimeError("BIOPILOT_NATS_URL must point at the broker the flow reads")
    recovery = settings.flow_recovery
    # a new recipe's reference is built beside the step, not in it: the step would block every reactor it keys
    config = MonitorConfig.for_detector(settings.detector, settings.lateness_s, snapshots_kept=recovery,
                                        reference_in_background=True)
    durable = settings.flow_durable or FLOW_DURABLE
    wal_dir = (settings.flow_wal or default_wal_dir(settings.lake, durable)) if recovery else None
    vocab = PLANTS[settings.plant]
    make, warm_up = monitor_for(settings.plant, settings.lake)
    warm_up(config)
    # the modules, models and kernels loaded so far never become garbage: a full collection scanning them all
    # stopped the flow for a long moment, whenever one came; frozen, they are not scanned again
    gc.freeze()
    keep_freed_memory()

    # one source partition per partition of the stream, and the lake's rows of a unit to its partition's sink:
    # the processes of a cluster share both (docs/SCALE-OUT.md)
    partitions = stream_partitions(settings.nats_url)

    def to_lake(unit_id: str) -> str:
        return part_name(unit_partition(unit_id, partitions))

    flow = Dataflow("biopilot-monitor")
    received = op.input("nats", flow, JetStreamSource(settings.nats_url, durable=durable, partitions=partitions))
    messages = op.filter("messages", received, lambda m: m is not EPOCH_MARK)
    epochs = op.flat_map("epochs", op.filter("epoch_marks", received, lambda m: m is EPOCH_MARK),
                         lambda _: [(part_name(k), EPOCH_ITEM) for k in range(max(1, partitions))])
    routed = op.map("route", messages, partial(route, vocab=vocab))
    items = op.flat_map("items", routed, lambda r: r[0])
    dead = op.filter_map("dead", routed, lambda r: r[1])
    keyed = op.key_on("by_reactor", items, lambda item: item.unit_id)
    horizon_us = settings.event_horizon_h * 3_600_000_000
    outputs = op.stateful_flat_map("monitor", keyed, partial(judged_step, config=config, horizon_us=horizon_us,
                                                             make=make))
    tables = op.flat_map("tables", outputs, lambda kv: [(to_lake(kv[0]), item) for item in kv[1].tables.items()])
    dead_rows = op.map("dead_rows", dead, lambda t: (part_name(0), ("deadletter", t)))
    lake_items = op.merge("lake_rows", tables, dead_rows, epochs)
    op.output("lake", lake_items, LakeSink(settings.lake, settings.flush_rows, settings.flush_s, wal_dir=wal_dir,
                                           partitions=partitions, app_id=durable))
    alerts = op.flat_map("alerts", outputs, lambda kv: [
        (f"biopilot.alerts.{a['reactor_id']}", alert_json(a), {"Nats-Msg-Id": a["alert_id"]}) for a in kv[1].alerts]
        + [(f"biopilot.alerts.{c['reactor_id']}", alert_json(c), {"Nats-Msg-Id": f"clear-{c['alert_id']}"})
           for c in kv[1].clears] + _twin_messages(kv[1]))
    dead_msgs = op.flat_map("dead_msgs", dead, lambda t: _dead_messages(t, "route"))
    refused = op.flat_map("refused", outputs, lambda kv: _dead_messages(kv[1].tables["deadletter"], "monitor")
                          if "deadletter" in kv[1].tables else [])
    nats_items = op.key_on("to_nats", op.merge("nats_msgs", alerts, dead_msgs, refused), lambda _: "nats")
    op.output("publish", nats_items, NatsPublishSink(settings.nats_url))
    return flow
