"""Run reports (the reporting agent) over HTTP."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from agents import patient_report, report
from agents.diagnose import RunNotFound
from dashboard.deps import Runtime, runtime, viewer
from dashboard.models import IdPath
from dashboard.security import REPORT_POLICY

router = APIRouter(prefix="/api/reports", tags=["agents"], dependencies=[viewer])
MEDIA = {"md": "text/markdown; charset=utf-8", "html": "text/html; charset=utf-8", "pdf": "application/pdf"}


@router.get("/{run_id}")
def get_report(run_id: IdPath, format: Literal["html", "md", "pdf"] = "html",  # noqa: A002 - the public parameter
               rt: Runtime = Depends(runtime)) -> FileResponse:
    # a report is made for this response and read by nothing else: beside a local lake, or in a local scratch
    # folder when the lake is on object storage (the lake holds tables only)
    lake = rt.settings.lake
    out_dir = Path(tempfile.gettempdir()) / "biopilot-reports" if "://" in lake else Path(lake) / "reports"
    try:
        out = patient_report.write_run(lake, run_id, format, out_dir)
    except RunNotFound as err:
        raise HTTPException(404, err.for_api) from None
    except report.UnsafeRunId as err:  # the id passed the pattern, so a link in the report folder points out
        raise HTTPException(409, str(err)) from None
    # the HTML report is self-contained (inline style, inlined plot) and has no script: its own, tighter policy
    return FileResponse(out, media_type=MEDIA[format], filename=out.name if format == "pdf" else None,
                        headers={"Content-Security-Policy": REPORT_POLICY})
