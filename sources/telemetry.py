"""Turn NATS messages into typed items for the flow: ticks, assays, doses, watermarks, or dead letters with a
reason.

Subjects, per unit (a reactor, a patient; `core.plants` names their tables and columns): `biopilot.telemetry.<unit>`
(ticks: a reactor's readings or a patient's vitals; or a watermark when the header `BioPilot-Kind: watermark` is
set and the body is `{"ts": <ISO-8601 or epoch seconds>}`) and `biopilot.assays.<unit>` (lab results; a
patient's doses when the header is `BioPilot-Kind: doses`, a reactor run's recipe when it is `recipe`).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

from core.codec import BIOREACTOR, PayloadError, decode_rows, validate_ticks
from core.events import DEADLETTER, DOSES, RECIPES, distinct
from core.plants import PlantVocabulary
from sources.jetstream import Message

log = logging.getLogger(__name__)

KIND_HEADER = "BioPilot-Kind"
REASON_HEADER = "BioPilot-Reason"
# what an Arrow timestamp[us] column and a datetime can both hold: years 1 to 9999
_EPOCH_S_RANGE = (datetime(1, 1, 1, tzinfo=UTC).timestamp(), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())


# the plant kinds whose units take doses, and their rows' schema (`biopilot.assays.<unit>`, kind "doses")
DOSES_BY_PLANT: dict[str, pa.Schema] = {"patient": DOSES}


@dataclass(frozen=True)
class Item:
    kind: str  # "ticks" | "assays" | "doses" | "recipe" | "watermark"
    unit_id: str  # the reactor's or the patient's id
    table: pa.Table | None = None
    ts_us: int = 0
    # the message it came from, so that a later stage can dead-letter it (held only while the item is in flight)
    source: Message | None = None

    @property
    def reactor_id(self) -> str:
        """The unit's id under its first name (the generic tables' column)."""
        return self.unit_id


def dead_letter(msg: Message, reason: str, payload: bytes | None = None) -> pa.Table:
    """One `deadletter` row: the message (or `payload`, e.g. only its rejected rows) and why it was refused."""
    data = msg.data if payload is None else payload
    return pa.Table.from_pylist([{"received_at": datetime.now(UTC), "subject": msg.subject, "stream_seq": msg.stream_seq,
                                  "reason": reason, "size_bytes": len(data), "payload": data}], schema=DEADLETTER)


def rows_payload(rows: pa.Table, reasons: list[str]) -> bytes:
    """Rejected rows as JSON, each with its `_reason`: what a dead letter keeps of a batch whose other rows went on."""
    listed = rows.to_pylist()
    for row, why in zip(listed, reasons, strict=True):
        row["_reason"] = why
    return json.dumps(listed, default=str).encode()


def _watermark_ts_us(data: bytes) -> int:
    body = json.loads(data)
    if not isinstance(body, dict) or "ts" not in body:
        raise PayloadError('a watermark is a JSON object {"ts": <ISO-8601 or epoch seconds>}')
    ts = body["ts"]
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        if not math.isfinite(ts) or not _EPOCH_S_RANGE[0] <= ts <= _EPOCH_S_RANGE[1]:
            raise PayloadError(f"watermark ts {ts!r}: not a time between the years 1 and 9999")
        return int(round(float(ts) * 1e6))
    if not isinstance(ts, str):
        raise PayloadError(f"watermark ts {ts!r}: expected ISO-8601 text or epoch seconds")
    when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    when = when if when.tzinfo else when.replace(tzinfo=UTC)  # naive: UTC, as every BioPilot time
    return int(when.timestamp() * 1e6)


def route(msg: Message, vocab: PlantVocabulary = BIOREACTOR) -> tuple[list[Item], pa.Table | None]:
    """(items for the monitor, dead letters or None), the payloads read as `vocab`'s tables. Never raises: a
    message that cannot be routed, for whatever reason, is dead-lettered with that reason and the flow goes on
    (and acks it, so it does not come back to fail again after a restart)."""
    try:
        return _route(msg, vocab)
    except Exception as err:  # noqa: BLE001 - one poison message must not stop the flow
        log.exception("dead-lettering message %s on %s", msg.stream_seq, msg.subject)
        return [], dead_letter(msg, f"{err.__class__.__name__}: {err}")


def _route(msg: Message, vocab: PlantVocabulary) -> tuple[list[Item], pa.Table | None]:
    parts = msg.subject.split(".")
    if len(parts) != 3 or parts[0] != "biopilot" or parts[1] not in ("telemetry", "assays") or not parts[2]:
        return [], dead_letter(msg, f"unexpected subject {msg.subject!r}")
    unit = parts[2]
    kind = msg.headers.get(KIND_HEADER)
    try:
        if parts[1] == "assays" and kind == "doses":
            if vocab.name not in DOSES_BY_PLANT:
                return [], dead_letter(msg, f"doses on {msg.subject!r}: a {vocab.unit} takes no doses")
            return [Item("doses", unit, decode_rows(msg.data, DOSES_BY_PLANT[vocab.name]), source=msg)], None
        if parts[1] == "assays" and kind == "recipe":  # a run's recipe (detectors.recipe), reactors only
            if vocab.name != "bioreactor":
                return [], dead_letter(msg, f"a recipe on {msg.subject!r}: a {vocab.unit} has none")
            return [Item("recipe", unit, decode_rows(msg.data, RECIPES), source=msg)], None
        if parts[1] == "assays":
            return [Item("assays", unit, decode_rows(msg.data, vocab.assays_schema), source=msg)], None
        if kind == "watermark":
            return [Item("watermark", unit, ts_us=_watermark_ts_us(msg.data), source=msg)], None
        checked = validate_ticks(decode_rows(msg.data, vocab.ticks_schema), vocab)
    except PayloadError as err:
        return [], dead_letter(msg, str(err))
    except (ValueError, KeyError, TypeError) as err:
        return [], dead_letter(msg, f"{err.__class__.__name__}: {err}")
    wrong_unit = checked.good.num_rows and distinct(checked.good[vocab.unit_column]) != [unit]
    if wrong_unit:
        return [], dead_letter(msg, f"{vocab.unit_column} in the rows does not match the subject's {unit!r}")
    dead = None
    if checked.bad.num_rows:
        dead = dead_letter(msg, f"{checked.bad.num_rows} row(s) rejected: {checked.reasons[0]}",
                           rows_payload(checked.bad, checked.reasons))
    items = [Item("ticks", unit, checked.good, source=msg)] if checked.good.num_rows else []
    return items, dead
