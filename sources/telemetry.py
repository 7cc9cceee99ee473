"""Turn NATS messages into typed items for the flow: ticks, assays, watermarks, or dead letters with a reason.

Subjects: `biopilot.telemetry.<reactor>` (ticks, or a watermark when the header `BioPilot-Kind: watermark`
is set and the body is `{"ts": <ISO-8601 or epoch seconds>}`) and `biopilot.assays.<reactor>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from biopilot.codec import PayloadError, decode_assays, decode_rows, validate_ticks
from biopilot.events import DEADLETTER, distinct
from sources.jetstream import Message

KIND_HEADER = "BioPilot-Kind"
REASON_HEADER = "BioPilot-Reason"


@dataclass(frozen=True)
class Item:
    kind: str  # "ticks" | "assays" | "watermark"
    reactor_id: str
    table: pa.Table | None = None
    ts_us: int = 0


def _dead(msg: Message, reason: str, payload: bytes | None = None) -> pa.Table:
    data = msg.data if payload is None else payload
    return pa.Table.from_pylist([{"received_at": datetime.now(UTC), "subject": msg.subject, "stream_seq": msg.stream_seq,
                                  "reason": reason, "size_bytes": len(data), "payload": data}], schema=DEADLETTER)


def _watermark_ts_us(data: bytes) -> int:
    body = json.loads(data)
    ts = body["ts"]
    if isinstance(ts, int | float):
        return int(round(float(ts) * 1e6))
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e6)


def route(msg: Message) -> tuple[list[Item], pa.Table | None]:
    """(items for the monitor, dead letters or None). Never raises on bad input."""
    parts = msg.subject.split(".")
    if len(parts) != 3 or parts[0] != "biopilot" or parts[1] not in ("telemetry", "assays") or not parts[2]:
        return [], _dead(msg, f"unexpected subject {msg.subject!r}")
    reactor = parts[2]
    try:
        if parts[1] == "assays":
            return [Item("assays", reactor, decode_assays(msg.data))], None
        if msg.headers.get(KIND_HEADER) == "watermark":
            return [Item("watermark", reactor, ts_us=_watermark_ts_us(msg.data))], None
        checked = validate_ticks(decode_rows(msg.data))
    except PayloadError as err:
        return [], _dead(msg, str(err))
    except (ValueError, KeyError, TypeError) as err:
        return [], _dead(msg, f"{err.__class__.__name__}: {err}")
    wrong_reactor = checked.good.num_rows and distinct(checked.good["reactor_id"]) != [reactor]
    if wrong_reactor:
        return [], _dead(msg, f"reactor_id in the rows does not match the subject's {reactor!r}")
    dead = None
    if checked.bad.num_rows:
        rows = checked.bad.to_pylist()
        for row, why in zip(rows, checked.reasons, strict=True):
            row["_reason"] = why
        payload = json.dumps(rows, default=str).encode()
        dead = _dead(msg, f"{len(rows)} row(s) rejected: {checked.reasons[0]}", payload)
    items = [Item("ticks", reactor, checked.good)] if checked.good.num_rows else []
    return items, dead
