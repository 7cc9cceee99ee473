"""Per-event logic of the naive baseline flow (`flows.naive`): JSON decode of one tick and River
HalfSpaceTrees (its defaults) learnt and scored one event at a time."""

from __future__ import annotations

import json
from datetime import datetime

import pyarrow as pa
from river.anomaly import HalfSpaceTrees

from core.events import TICKS
from detectors.base import DETECTOR_SIGNALS

LEVELS = [s for s in DETECTOR_SIGNALS if not s.endswith("_per_tick")]


def decode_json_tick(msg: object) -> dict | None:
    try:
        tick = json.loads(msg.data)  # type: ignore[attr-defined]
        tick["ts"] = datetime.fromisoformat(tick["ts"])
        return tick
    except (ValueError, KeyError, TypeError):
        return None


def hst_step(model: HalfSpaceTrees | None, tick: dict) -> tuple[HalfSpaceTrees, tuple[str, pa.Table]]:
    model = model or HalfSpaceTrees(seed=1, limits={s: (0.0, 300.0) for s in LEVELS})
    x = {s: tick.get(s) or 0.0 for s in LEVELS}
    tick["_score"] = model.score_one(x)
    model.learn_one(x)
    row = {k: tick.get(k) for k in TICKS.names}
    return model, ("ticks", pa.Table.from_pylist([row], schema=TICKS))
