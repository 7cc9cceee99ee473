"""The outcome model registry: the `models` Delta table (one row per lifecycle event; a version's state is its
newest row) and each version's artefacts beside it, under `<lake>/model_artefacts/<version>/` (not inside the
table's folder, which Delta's vacuum owns).

Aliases: at most one `champion` (what serving loads: `load_champion`) and one `challenger` (trained, waiting for
its shadow evaluation). `promote` makes a version champion and demotes the one before; `rollback` hands the
alias back to the champion before it (promotions stack: each rollback pops one). Every change is one Delta
commit, made under a lake lock, and written to the audit trail (`sinks/audit.py`) before the call returns.

>>> import tempfile
>>> class Tiny:  # anything with a version and save(directory)
...     def __init__(self, version): self.version = version
...     def save(self, directory): directory.mkdir(parents=True, exist_ok=True); return directory
>>> lake = tempfile.mkdtemp()
>>> _ = register(lake, Tiny("m1"), data_snapshot="sim n=10 seed=0", metrics={}, actor="doc", alias=None)
>>> _ = register(lake, Tiny("m2"), data_snapshot="sim n=10 seed=1", metrics={}, actor="doc")
>>> promote(lake, "m1", actor="doc").alias, promote(lake, "m2", actor="doc").version
('champion', 'm2')
>>> rollback(lake, actor="doc").version, [(e.version, e.alias) for e in entries(lake)]
('m1', [('m2', None), ('m1', 'champion')])
"""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from core.events import MODELS
from sinks import delta
from sinks.audit import AuditLog, lake_lock
from sinks.objects import fetch_file, put_file

if TYPE_CHECKING:
    from outcomes.model import OutcomeModel

TABLE = "models"
ARTEFACTS = "model_artefacts"
CHAMPION, CHALLENGER = "champion", "challenger"
# the code a version was trained with: this package and the hybrid it reuses
_CODE = (Path(__file__).parent, Path(__file__).parent.parent / "detectors" / "scorer_model.py")


class RegistryError(ValueError):
    """An unknown version, nothing to roll back to, a version registered twice: one line for the user."""


class UnknownVersion(RegistryError):
    """A version the registry does not hold."""


class Savable(Protocol):
    version: str

    def save(self, directory: Path) -> Path: ...


@dataclass(frozen=True)
class ModelEntry:
    """A version's state: its newest row."""

    version: str
    alias: str | None
    data_snapshot: str
    code_hash: str
    metrics: dict
    artefact_uri: str
    created_ts: datetime
    created_by: str
    promoted_ts: datetime | None
    promoted_by: str | None
    last_event: str
    seq: int

    @property
    def mean_auroc(self) -> float | None:
        """The mean AUROC over the classification heads in its metrics (None if it has none)."""
        aurocs = [m["auroc"] for m in (self.metrics.get("heads") or self.metrics).values()
                  if isinstance(m, dict) and isinstance(m.get("auroc"), int | float)]
        return sum(aurocs) / len(aurocs) if aurocs else None

    def as_json(self) -> dict:
        return {"version": self.version, "alias": self.alias, "data_snapshot": self.data_snapshot,
                "code_hash": self.code_hash, "metrics": self.metrics, "artefact_uri": self.artefact_uri,
                "created_ts": self.created_ts.isoformat(), "created_by": self.created_by,
                "promoted_ts": self.promoted_ts.isoformat() if self.promoted_ts else None,
                "promoted_by": self.promoted_by, "last_event": self.last_event}


def code_hash() -> str:
    """sha256 over the sources of the outcome package and the hybrid (12 hex digits): equal hashes, equal code."""
    digest = hashlib.sha256()
    for root in _CODE:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cli_actor() -> str:
    """Who a command-line change is by (as the token commands write it to the audit trail)."""
    return f"cli:{getpass.getuser()}"


def _rows(lake: str) -> list[dict]:
    table = delta.read(lake, TABLE)
    return [] if table is None else sorted(table.to_pylist(), key=lambda r: r["seq"])


def _entry(row: dict) -> ModelEntry:
    return ModelEntry(version=row["version"], alias=row["alias"], data_snapshot=row["data_snapshot"] or "",
                      code_hash=row["code_hash"] or "", metrics=json.loads(row["metrics_json"] or "{}"),
                      artefact_uri=row["artefact_uri"] or "", created_ts=row["created_ts"],
                      created_by=row["created_by"] or "", promoted_ts=row["promoted_ts"],
                      promoted_by=row["promoted_by"], last_event=row["event"], seq=row["seq"])


def _state(rows: list[dict]) -> dict[str, dict]:
    """Each version's newest row, by version."""
    return {row["version"]: row for row in rows}  # rows are in seq order: the newest wins


def entries(lake: str | Path) -> list[ModelEntry]:
    """Every registered version's state, newest registration first."""
    state = _state(_rows(str(lake)))
    return sorted((_entry(r) for r in state.values()), key=lambda e: e.created_ts, reverse=True)


def _with_alias(lake: str | Path, alias: str) -> ModelEntry | None:
    return next((e for e in entries(lake) if e.alias == alias), None)


def champion(lake: str | Path) -> ModelEntry | None:
    return _with_alias(lake, CHAMPION)


def challenger(lake: str | Path) -> ModelEntry | None:
    return _with_alias(lake, CHALLENGER)


def _commit(lake: str, rows: list[dict], changes: list[tuple[dict, str, str | None]], actor: str, reason: str,
            now: datetime) -> list[dict]:
    """Append one row per (state row, event, new alias) after `rows` (the table as read under the lock), in one
    commit; returns the rows written."""
    seq = rows[-1]["seq"] + 1 if rows else 0
    written = []
    for k, (row, event, alias) in enumerate(changes):
        new = {**row, "seq": seq + k, "ts": now, "event": event, "alias": alias, "actor": actor, "reason": reason}
        if alias == CHAMPION and event in ("promote", "rollback"):
            new["promoted_ts"], new["promoted_by"] = now, actor
        written.append(new)
    delta.append(lake, TABLE, pa.Table.from_pylist(written, schema=MODELS), MODELS)
    return written


def _audit(lake: str, action: str, version: str, actor: str, role: str, payload: dict, result: str,
           now: datetime) -> None:
    AuditLog(lake).append({"ts": now, "actor": actor, "role": role, "token_id": None, "action": action,
                           "target": version, "payload_json": json.dumps(payload, sort_keys=True),
                           "request_id": None, "client": socket.gethostname(), "result": result})


def _demotions(state: dict[str, dict], alias: str, keep: str) -> list[tuple[dict, str, str | None]]:
    return [(row, "demote", None) for v, row in state.items() if row["alias"] == alias and v != keep]


def _keep_artefact(lake: str, model: Savable) -> str:
    """Save the model's artefact beside the table (on an `s3://` lake: into its object store, where every
    process serving the lake finds it); its URI."""
    if not delta.is_remote(lake):
        return str(Path(model.save(Path(lake) / ARTEFACTS / model.version)).resolve())
    with tempfile.TemporaryDirectory() as scratch:
        saved = Path(model.save(Path(scratch)))
        return put_file(saved, lake, f"{ARTEFACTS}/{model.version}/{saved.name}")


def _artefact(uri: str) -> Path:
    """A local copy of a version's artefact (downloaded once from an object store)."""
    return fetch_file(uri, Path(tempfile.gettempdir()) / "biopilot-models")


def register(lake: str | Path, model: Savable, *, data_snapshot: str, metrics: dict, actor: str,
             alias: str | None = CHALLENGER, role: str = "service") -> ModelEntry:
    """Save the model's artefacts beside the table and add its version (as the challenger by default, which
    demotes the challenger before it)."""
    lake = str(lake)
    if alias not in (None, CHALLENGER):
        raise RegistryError(f"a new version is registered as {CHALLENGER} or with no alias, not {alias!r}: "
                            "promote it to make it champion")
    now = datetime.now(UTC)
    with lake_lock(lake, "models"):
        rows = _rows(lake)
        state = _state(rows)
        if model.version in state:
            raise RegistryError(f"model version {model.version} is already registered")
        row = {"version": model.version, "data_snapshot": data_snapshot, "code_hash": code_hash(),
               "metrics_json": json.dumps(metrics, sort_keys=True, default=float),
               "artefact_uri": _keep_artefact(lake, model), "created_ts": now, "created_by": actor,
               "promoted_ts": None, "promoted_by": None}
        changes = [(row, "register", alias)] + (_demotions(state, CHALLENGER, model.version) if alias else [])
        written = _commit(lake, rows, changes, actor, "", now)
    _audit(lake, "model_register", model.version, actor, role, {"alias": alias, "data_snapshot": data_snapshot},
           alias or "registered", now)
    return _entry(written[0])


def promote(lake: str | Path, version: str, *, actor: str, reason: str = "", role: str = "admin") -> ModelEntry:
    """Make `version` the champion; the champion before it is demoted (and is what `rollback` returns to)."""
    lake = str(lake)
    now = datetime.now(UTC)
    with lake_lock(lake, "models"):
        rows = _rows(lake)
        state = _state(rows)
        if version not in state:
            known = f"registered: {', '.join(sorted(state))}" if state else "none registered"
            raise UnknownVersion(f"unknown model version {version!r} ({known})")
        if state[version]["alias"] == CHAMPION:
            raise RegistryError(f"model version {version} is already the champion")
        before = next((v for v, r in state.items() if r["alias"] == CHAMPION), None)
        written = _commit(lake, rows, [(state[version], "promote", CHAMPION)]
                          + _demotions(state, CHAMPION, version), actor, reason, now)
    _audit(lake, "model_promote", version, actor, role, {"previous_champion": before, "reason": reason},
           CHAMPION, now)
    return _entry(written[0])


def _champion_stack(rows: list[dict]) -> list[str]:
    """The champions in the order they were made so, less those rolled back: each promote pushes, each
    rollback pops."""
    stack: list[str] = []
    for row in rows:
        if row["event"] == "promote":
            stack.append(row["version"])
        elif row["event"] == "rollback":
            while stack and stack[-1] != row["version"]:
                stack.pop()
    return stack


def rollback(lake: str | Path, *, actor: str, to: str | None = None, reason: str = "",
             role: str = "admin") -> ModelEntry:
    """Give the champion alias back to the champion before the current one (or to `to`, an earlier champion
    still on the stack); the current champion keeps its artefacts and loses the alias."""
    lake = str(lake)
    now = datetime.now(UTC)
    with lake_lock(lake, "models"):
        rows = _rows(lake)
        state, stack = _state(rows), _champion_stack(rows)
        if not stack:
            raise RegistryError("nothing to roll back: no version has been champion")
        current, earlier = stack[-1], stack[:-1]
        if to is None:
            if not earlier:
                raise RegistryError(f"nothing to roll back to: no earlier champion than {current}")
            to = earlier[-1]
        elif to not in state:
            raise UnknownVersion(f"unknown model version {to!r} (registered: {', '.join(sorted(state))})")
        elif to == current:  # not "promote it instead": promote refuses the champion
            raise RegistryError(f"model version {to} is already the champion")
        elif to not in earlier:
            raise RegistryError(f"model version {to} was not a champion before {current}: promote it instead")
        changes = [(state[to], "rollback", CHAMPION)] + [(state[current], "rolled_back", None)]
        written = _commit(lake, rows, changes, actor, reason, now)
    _audit(lake, "model_rollback", to, actor, role, {"from": current, "reason": reason}, CHAMPION, now)
    return _entry(written[0])


def load(lake: str | Path, version: str) -> OutcomeModel:
    from outcomes.model import load_model

    state = _state(_rows(str(lake)))
    if version not in state:
        raise UnknownVersion(f"unknown model version {version!r}")
    return load_model(_artefact(state[version]["artefact_uri"]))


def load_champion(lake: str | Path) -> OutcomeModel:
    """The champion's model; the shipped checkpoint while no version is champion."""
    from outcomes.model import load_model

    entry = champion(lake)
    return load_model(_artefact(entry.artefact_uri) if entry else None)
