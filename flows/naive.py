"""The naive baseline of `biopilot bench pipeline` (not for production): one JSON message per tick,
per-event Bytewax operators, River HalfSpaceTrees scored and learnt one event at a time, and the same
micro-batched Delta sink as the real flow.

Run with `python -m bytewax.run "flows.naive:build_flow()"`; the settings `nats_url`, `lake` and `flow_durable`
as for `flows.monitor`.
"""

from __future__ import annotations

from functools import partial

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from core.config import load_settings
from detectors.naive import decode_json_tick, hst_step
from sinks.lake_sink import LakeSink, part_name
from sources.jetstream import JetStreamSource


def build_flow() -> Dataflow:
    settings = load_settings()
    durable = settings.flow_durable or "biopilot-naive"
    flow = Dataflow("biopilot-naive")
    messages = op.input("nats", flow, JetStreamSource(settings.nats_url, durable=durable, batch=1))
    ticks = op.filter_map("decode", messages, decode_json_tick)
    keyed = op.key_on("by_reactor", ticks, lambda t: t["reactor_id"])
    scored = op.stateful_map("hst", keyed, partial(hst_step))
    rows = op.map("rows", scored, lambda kv: (part_name(0), kv[1]))  # one sink partition
    op.output("lake", rows, LakeSink(settings.lake, max_rows=1000))
    return flow
