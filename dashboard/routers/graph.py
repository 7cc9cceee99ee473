"""The process knowledge graph (agents/knowledge_graph.py): its nodes and edges with their evidence, and what
raises or lowers a node, read from the lake's newest build."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query

from agents.knowledge_graph import load_or_catalogue
from dashboard.deps import Runtime, runtime, viewer
from dashboard.models import CauseOut, CausesOut, GraphOut

router = APIRouter(prefix="/api/graph", tags=["agents"], dependencies=[viewer])


@router.get("", response_model=GraphOut)
def get_graph(rt: Runtime = Depends(runtime)) -> GraphOut:
    """Every node (parameter, anomaly, process state, quality attribute) and edge, each edge's sign and
    evidence."""
    return GraphOut(**load_or_catalogue(rt.settings.lake).as_json())


@router.get("/causes", response_model=CausesOut)
def get_causes(target: str = Query(min_length=1, max_length=64, pattern=r"^[a-z0-9_.]+$"),
               direction: int = Query(0, ge=-1, le=1, description="+1 what raises it, -1 what lowers it, 0 either"),
               day: float | None = Query(None, ge=0, le=365, description="the day of the run"),
               rt: Runtime = Depends(runtime)) -> CausesOut:
    graph = load_or_catalogue(rt.settings.lake)
    if target not in graph.graph:
        raise HTTPException(404, f"no node {target!r} in the knowledge graph")
    causes = [CauseOut(origin=c.origin, path=list(c.path), sign=c.sign, applies=c.applies,
                       evidence=[[e.text for e in edge] for edge in c.evidence])
              for c in graph.causes(target, direction, day)]
    return CausesOut(build_id=graph.build_id, target=target, direction=direction, day=day, causes=causes)
