"""The outcome model registry over HTTP, as `biopilot models` has it (`outcomes/registry.py`): every version with
its alias, metrics and provenance (viewer); promotion and rollback (admin), written to the `models` table and
the audit trail under the token's subject. The risk service swaps to a new champion within
`outcomes.serving.CHAMPION_CHECK_S`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from dashboard.auth import Principal
from dashboard.deps import Runtime, is_admin, runtime, viewer
from outcomes import registry

router = APIRouter(prefix="/api/models", tags=["models"])
VERSION_PATTERN = r"^outcome-\d{8}T\d{6}Z-[0-9a-f]{8}$"
Version = Annotated[str, PathParam(pattern=VERSION_PATTERN, description="a model version, "
                                                                        "outcome-<created UTC>-<digest>")]
REFUSED = {404: {"description": "no such version in the registry"},
           409: {"description": "the change does not apply (already champion, nothing to roll back to)"}}


class ModelVersion(BaseModel):
    version: str
    alias: str | None = Field(description="`champion` (served), `challenger` (in shadow) or none")
    mean_auroc: float | None = Field(description="the mean AUROC of its risks in its metrics")
    data_snapshot: str = Field(description="what it was trained on")
    code_hash: str
    metrics: dict
    created_ts: datetime
    created_by: str
    promoted_ts: datetime | None
    promoted_by: str | None
    last_event: str


class ModelList(BaseModel):
    models: list[ModelVersion] = Field(description="newest registration first; none: the shipped checkpoint serves")


class ModelChange(BaseModel):
    reason: str = Field("", max_length=500, description="why, written to the registry and the audit trail")


class Rollback(ModelChange):
    to: str | None = Field(None, pattern=VERSION_PATTERN,
                           description="an earlier champion to return to (default: the one before)")


def _version(entry: registry.ModelEntry) -> dict:
    return entry.as_json() | {"mean_auroc": entry.mean_auroc}


async def _change(change: Callable[..., registry.ModelEntry], *args: object, **kwargs: object) -> dict:
    """`registry.promote` or `registry.rollback` off the event loop, its refusals as 404 or 409."""
    try:
        return _version(await asyncio.to_thread(change, *args, **kwargs))
    except registry.UnknownVersion as err:
        raise HTTPException(404, str(err)) from None
    except registry.RegistryError as err:
        raise HTTPException(409, str(err)) from None


@router.get("", response_model=ModelList, dependencies=[viewer])
async def list_models(rt: Runtime = Depends(runtime)) -> dict:
    """Every registered outcome model version, newest first."""
    return {"models": [_version(e) for e in await asyncio.to_thread(registry.entries, rt.settings.lake)]}


@router.post("/{version}/promote", response_model=ModelVersion, responses=REFUSED)
async def promote(version: Version, change: ModelChange, rt: Runtime = Depends(runtime),
                  who: Principal = Depends(is_admin)) -> dict:
    """Make VERSION the champion; the champion before it is demoted and is what a rollback returns to."""
    return await _change(registry.promote, rt.settings.lake, version, actor=who.subject, reason=change.reason,
                         role=who.role)


@router.post("/rollback", response_model=ModelVersion, responses=REFUSED)
async def rollback(change: Rollback, rt: Runtime = Depends(runtime), who: Principal = Depends(is_admin)) -> dict:
    """Give the champion alias back to the champion before the current one (or to `to`)."""
    return await _change(registry.rollback, rt.settings.lake, actor=who.subject, to=change.to,
                         reason=change.reason, role=who.role)
