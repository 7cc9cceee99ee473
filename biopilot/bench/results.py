"""What the benchmarks' results share: their `--json` form."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def as_json(result: DataclassInstance) -> dict:
    """A benchmark's result dataclass as a dict for JSON, nested results as nested dicts."""
    return asdict(result)
