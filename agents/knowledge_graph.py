"""The process knowledge graph: parameters -> process states -> anomalies -> product quality (docs/KNOWLEDGE-GRAPH.md).

Nodes are named by what they are: a parameter by its scenario path (`feed.percent_of_volume`), an anomaly by its
fault archetype (`do_limitation`), a process state or a quality attribute by its column (`do_pct`, `lactate_g_l`,
`titer_g_l`). Each edge is one piece of evidence, with a sign (+1 raises, -1 lowers, 0 moves without a stated
direction), a size and the days of the run it was seen on, from five sources:

- `signature`: the agents' knowledge base (`agents/knowledge.py`): how a fault moves the online signals;
- `catalogue`: the twin's fault catalogue (`sources/faults.py`): the signals and assays a fault moves;
- `labelled_runs`: the lake's labelled runs against its fault-free ones, in the fault's window (hourly means of
  the ticks, the assays, the final titer and HCP);
- `incidents`: the lake's incidents whose diagnosed top cause was the fault, and the signals that led them;
- `design` and `association`: a design's fitted main effects (`design.model`) and, across its runs, how a
  process state goes with a quality attribute (Spearman; an association, not a cause).

The graph is a networkx `MultiDiGraph` (one edge per evidence); it is stored as rows of the lake's
`knowledge_graph` Delta table, one build after another, and read back from the newest build. Queries walk it
with networkx (`ancestors`, `all_simple_paths`): what raises a node, what lowers it, on a given day of the run.

>>> g = KnowledgeGraph.from_evidence(catalogue_evidence())
>>> [c.origin for c in g.causes("do_pct", -1)][:2]
['do_limitation', 'contamination']
>>> parse_question("what could cause low DO on day 6?")
GraphQuestion(target='do_pct', direction=-1, day=6.0)
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import networkx as nx
import numpy as np
import pandas as pd
import pyarrow as pa
from scipy import stats

from agents.knowledge import SIGNATURES
from core.events import ASSAY_VALUES, TICK_SIGNALS, TS
from sinks import delta
from sources.faults import CATALOGUE, SENSOR_FAULTS

TABLE = "knowledge_graph"
SCHEMA = pa.schema([
    pa.field("build_id", pa.string(), False), pa.field("built_ts", TS, False),
    pa.field("source", pa.string(), False), pa.field("source_kind", pa.string(), False),
    pa.field("target", pa.string(), False), pa.field("target_kind", pa.string(), False),
    pa.field("kind", pa.string(), False), pa.field("sign", pa.int8(), False), pa.field("size", pa.float64()),
    pa.field("unit", pa.string()), pa.field("support", pa.int64()), pa.field("p_value", pa.float64()),
    pa.field("day_from", pa.float64()), pa.field("day_to", pa.float64()),
    pa.field("text", pa.string(), False), pa.field("ref", pa.string()),
])
QUALITY = ("titer_g_l", "hcp_ng_ml")  # the product's attributes: how much was made, how pure
STATES = TICK_SIGNALS + tuple(a for a in ASSAY_VALUES if a not in QUALITY)
# which sign wins on an edge with several: measured before stated
SIGN_ORDER = ("labelled_runs", "design", "signature", "incidents", "association", "catalogue")
MAX_P = 0.05  # a design's main effect, or labelled runs' shift, that counts
MIN_SHIFT = 0.02  # a labelled runs' shift smaller than this share of the normal range is not worth an edge
MIN_RHO = 0.6  # an association that counts (|Spearman rho|, p < 0.01)
RUNS_PER_FAULT = 20  # labelled runs read per fault (and normal runs): the ticks of a few runs tell the shift
ONSET_H = 24.0  # the ticks compared: a fault's first day
DAY_SLACK = 0.5  # a cause seen until day 5.6 still counts for "day 6"
# "day" and the number after it, whole ("day 1e400", "day -3", "day inf"), so that one which is not a day is
# refused, not read as another ("day 1") or dropped; "day-5" is day 5
DAY = re.compile(r"\bday(?:\s+|-)?([-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|\.\d+(?:e[-+]?\d+)?|nan\b|inf(?:inity)?\b))")

WORDS: dict[str, str] = {  # what a question may call a node
    "hcp": "hcp_ng_ml", "host cell protein": "hcp_ng_ml", "titer": "titer_g_l", "titre": "titer_g_l",
    "product": "titer_g_l", "do": "do_pct", "dissolved oxygen": "do_pct", "oxygen": "do_pct", "ph": "ph",
    "temperature": "temp_c", "temp": "temp_c", "lactate": "lactate_g_l", "ammonia": "ammonia_mm",
    "osmolality": "osmolality_mosm_kg", "glucose": "glucose_g_l", "glutamine": "glutamine_mm",
    "viability": "viability_pct", "vcd": "vcd_e6_per_ml", "cell density": "vcd_e6_per_ml", "growth": "vcd_e6_per_ml",
    "our": "our_mmol_l_h", "oxygen uptake": "our_mmol_l_h", "cer": "cer_mmol_l_h", "co2": "co2_sccm",
    "o2 flow": "o2_sccm", "base": "base_ml", "feed": "feed_ml", "volume": "volume_l", "agitation": "agitation_rpm",
    "capacitance": "capacitance_pf_cm",
}
LABELS = {v: k for k, v in reversed(WORDS.items())} | {"hcp_ng_ml": "HCP", "do_pct": "DO", "ph": "pH",
                                                        "our_mmol_l_h": "OUR", "cer_mmol_l_h": "CER", "vcd_e6_per_ml": "VCD"}
UP = {"raise", "raises", "increase", "increases", "high", "higher", "rise", "rises", "up", "elevated", "more"}
DOWN = {"lower", "lowers", "low", "decrease", "decreases", "reduce", "reduces", "drop", "drops", "fall", "falls",
        "less", "poor"}
RUN_WORDS = {"caused", "happened", "did", "was", "were", "this", "incident"}
CAUSAL = {"cause", "causes", "affect", "affects", "drive", "drives", "influence", "influences", "explain"}
UNITS = (("_pct", "%"), ("_g_l", "g/L"), ("_mosm_kg", "mOsm/kg"), ("_ng_ml", "ng/mL"), ("_e6_per_ml", "e6/mL"),
         ("_mmol_l_h", "mmol/L/h"), ("_mm", "mM"), ("_sccm", "sccm"), ("_rpm", "rpm"), ("_pf_cm", "pF/cm"),
         ("_ml", "mL"), ("_c", "°C"), ("_l", "L"))


def unit_of(column: str) -> str:
    return next((u for suffix, u in UNITS if column.endswith(suffix)), "")


def label(node: str) -> str:
    return LABELS.get(node, node)


def node_kind(node: str) -> str:
    if node in CATALOGUE:
        return "anomaly"
    if node in QUALITY:
        return "quality"
    return "parameter" if "." in node else "state"  # a parameter is a scenario setting's dotted path


@dataclass(frozen=True)
class Evidence:
    """One edge of the graph: `source` moves `target` (`sign`, `size` in `unit`), seen on `day_from`..`day_to`
    of the run (None: any time), supported by `support` runs or incidents; `text` says it, `ref` says where."""

    source: str
    target: str
    kind: str
    sign: int
    text: str
    size: float | None = None
    unit: str = ""
    support: int | None = None
    p_value: float | None = None
    day_from: float | None = None
    day_to: float | None = None
    ref: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.ref}"


def _days(a: float, b: float) -> str:
    return f"day {a:.1f}" if abs(b - a) < 0.05 else f"days {a:.1f}–{b:.1f}"


# ---- the evidence -------------------------------------------------------------------------------------------
def catalogue_evidence() -> list[Evidence]:
    """What the knowledge base and the fault catalogue state: no data needed."""
    out = []
    for fault, sig in SIGNATURES.items():
        for feature, weight in sig.expect.items():
            signal = feature.removesuffix("_per_tick")
            out.append(Evidence(fault, signal, "signature", int(np.sign(weight)),
                                f"signature: {feature} {weight:+.1f} σ against the golden batch", abs(weight), "σ",
                                ref="agents/knowledge.py"))
        stated = {f.removesuffix("_per_tick") for f in sig.expect}
        for signal in CATALOGUE[fault].signals:
            if signal not in stated:
                out.append(Evidence(fault, signal, "catalogue", 0,
                                    f"the fault catalogue lists {signal} among the signals it moves",
                                    ref="sources/faults.py"))
    return out


def _hourly(table: pa.Table, started: dict[str, datetime], time_col: str, columns: Iterable[str]) -> pd.DataFrame:
    """Per run and culture hour, the mean of each column."""
    frame = table.to_pandas()
    start = frame["run_id"].map(lambda r: pd.Timestamp(started[r]))
    frame["hour"] = ((frame[time_col] - start).dt.total_seconds() // 3600).astype(int)
    return frame.groupby(["run_id", "hour"])[list(columns)].mean()


def _shifts(frame: pd.DataFrame, normal: list[str], twin: dict[str, str], windows: list[tuple[str, float, float]],
            columns: list[str]) -> tuple[dict[str, list[float]], pd.Series]:
    """Per column, each labelled window's median shift, in the column's units: from the run's fault-free twin
    (the same seed and reactor: the same random streams) where the lake has it, else from the fault-free runs'
    hourly mean; and the columns' normal range (1st to 99th percentile)."""
    ref = frame.loc[frame.index.get_level_values("run_id").isin(normal)]
    mean = ref.groupby("hour").mean()
    out: dict[str, list[float]] = {c: [] for c in columns}
    for run_id, start_h, end_h in windows:
        if run_id not in frame.index.get_level_values("run_id"):
            continue
        rows = frame.loc[run_id]
        base = frame.loc[twin[run_id]] if run_id in twin else mean
        hours = rows.index[(rows.index >= math.floor(start_h)) & (rows.index < math.ceil(end_h))]
        hours = hours.intersection(base.index)
        for c in columns:
            diff = (rows.loc[hours, c] - base.loc[hours, c]).dropna()
            if len(diff):
                out[c].append(float(diff.median()))
    return out, ref[columns].quantile(0.99) - ref[columns].quantile(0.01)


def _shift_evidence(fault: str, column: str, diffs: list[float], span: float, paired: int, n_normal: int,
                    days: tuple[float, float], what: str) -> Evidence | None:
    """A candidate edge: the labelled runs' mean shift and its one-sample t-test's p-value (judged later, with the
    fault's other comparisons); None where it is negligible (under MIN_SHIFT of the normal range)."""
    if len(diffs) < 2:
        return None
    size = float(np.mean(diffs))
    p = float(stats.ttest_1samp(diffs, 0.0).pvalue) if np.std(diffs) > 0 else 0.0
    if abs(size) < MIN_SHIFT * span:
        return None
    sign = int(np.sign(size))
    unit = unit_of(column)
    against = ("each against its fault-free twin (same seed and reactor)" if paired == len(diffs)
               else f"against {n_normal} fault-free run(s)" + (f" ({paired} paired with their twin)" if paired else ""))
    text = (f"{len(diffs)} labelled {fault} runs {against}: {column} {size:+.3g} {unit} {what} (t-test p {p:.2g}, "
            f"{sum(np.sign(d) == sign for d in diffs)}/{len(diffs)} the same way), {_days(*days)}").replace("  ", " ")
    return Evidence(fault, column, "labelled_runs", sign, text, size, unit, len(diffs), p, days[0], days[1],
                    f"lake:labels:{fault}:{column}")


def labelled_run_evidence(lake: str | Path) -> list[Evidence]:
    """Each labelled fault (two runs or more) against the lake's fault-free runs: the ticks' hourly means in the
    fault's first day, the assays in its window and the day after, the final titer and HCP."""
    runs, labels = delta.read(lake, "runs", columns=["run_id", "plant", "seed", "reactor_id", "started_ts"]), \
        delta.read(lake, "labels")
    if runs is None or labels is None or labels.num_rows == 0:
        return []
    rows = [r for r in runs.to_pylist() if r["plant"] == "bioreactor"]
    started = {r["run_id"]: r["started_ts"] for r in rows}
    labelled = [lab for lab in labels.to_pylist() if lab["run_id"] in started]
    normal = sorted(set(started) - {lab["run_id"] for lab in labelled})[:RUNS_PER_FAULT]
    if not normal or not labelled:
        return []
    streams = {(r["seed"], r["reactor_id"], r["started_ts"]): r["run_id"] for r in rows if r["run_id"] in normal}
    twin = {r["run_id"]: streams[key] for r in rows
            if (key := (r["seed"], r["reactor_id"], r["started_ts"])) in streams and r["run_id"] not in normal}
    by_fault: dict[str, list[dict]] = {}
    for lab in labelled:
        by_fault.setdefault(lab["fault"], []).append(lab)
    by_fault = {f: labs[:RUNS_PER_FAULT] for f, labs in by_fault.items()}
    wanted = normal + sorted({lab["run_id"] for labs in by_fault.values() for lab in labs})
    ticks = delta.read(lake, "ticks", columns=["run_id", "ts", *TICK_SIGNALS], run_ids=wanted)
    assays = delta.read(lake, "assays", columns=["run_id", "sample_ts", *ASSAY_VALUES], run_ids=wanted)
    tick_frame = _hourly(ticks, started, "ts", TICK_SIGNALS)
    assay_frame = _hourly(assays, started, "sample_ts", ASSAY_VALUES)
    finals = assay_frame.groupby("run_id").last().assign(hour=0).set_index("hour", append=True)
    out: list[Evidence] = []
    for fault, labs in by_fault.items():
        hours = [(lab["run_id"], (lab["start_ts"] - started[lab["run_id"]]).total_seconds() / 3600,
                  (lab["end_ts"] - started[lab["run_id"]]).total_seconds() / 3600) for lab in labs]
        days = (min(h[1] for h in hours) / 24, max(h[2] for h in hours) / 24)
        paired = sum(r in twin for r, _, _ in hours)
        signals = list(TICK_SIGNALS)
        if fault in SENSOR_FAULTS:  # a reading fault moves its own reading only
            signals = sorted({s for lab in labs for s in (lab["signals"] or []) if s in TICK_SIGNALS})
        # the fault's first day: how it shows at onset (a long fault's later days show its aftermath: a dead
        # culture's DO climbs back)
        comparisons = [(tick_frame, [(r, a, min(max(b, a + 1), a + ONSET_H)) for r, a, b in hours], signals,
                        "in the fault's first day")]
        if fault not in SENSOR_FAULTS:  # assays are daily: the day after the window shows it
            comparisons += [(assay_frame, [(r, a, b + 24) for r, a, b in hours],
                             [a for a in ASSAY_VALUES if a not in QUALITY], "in the assays of the window"),
                            (finals, [(r, 0, 1) for r, _, _ in hours], list(QUALITY), "at the run's end")]
        candidates = []
        for frame, windows, columns, what in comparisons:
            shifts, span = _shifts(frame, normal, twin, windows, columns)
            candidates += [e for c, diffs in shifts.items()
                           if (e := _shift_evidence(fault, c, diffs, float(span[c]), paired, len(normal), days, what))]
        if candidates:  # a fault is compared on ~25 columns: false discoveries held at MAX_P (Benjamini-Hochberg)
            q = stats.false_discovery_control([e.p_value for e in candidates])
            out += [replace(e, text=e.text.replace(" (t-test p", f" (FDR q {qe:.2g} of {len(candidates)}, t-test p"))
                    for e, qe in zip(candidates, q, strict=True) if qe < MAX_P]
    return out


def incident_evidence(lake: str | Path) -> list[Evidence]:
    """The lake's incidents whose diagnosed top cause was a fault: that fault led by the incident's signals, on
    the day of the run the incident opened."""
    incidents, messages = delta.read(lake, "incidents"), delta.read(lake, "agent_messages")
    runs = delta.read(lake, "runs", columns=["run_id", "started_ts"])
    if incidents is None or messages is None or runs is None:
        return []
    started = dict(zip(runs["run_id"].to_pylist(), runs["started_ts"].to_pylist(), strict=True))
    first = {}
    for row in incidents.to_pylist():
        first.setdefault(row["incident_id"], row)
    seen: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for msg in messages.to_pylist():
        incident = first.get(msg["incident_id"])
        if not msg["done"] or not msg["findings_json"] or incident is None or incident["run_id"] not in started:
            continue
        finding = json.loads(msg["findings_json"])
        hyps = [h for h in finding.get("hypotheses", []) if h.get("match", 0) > 0]
        if finding.get("abstained") or not hyps or hyps[0].get("fault") not in CATALOGUE:
            continue
        day = (incident["start_ts"] - started[incident["run_id"]]).total_seconds() / 86400
        for signal in incident["signals"] or []:  # a lead feature (feed_ml_per_tick) is its signal's rate
            seen.setdefault((hyps[0]["fault"], signal.removesuffix("_per_tick")), []).append((incident["incident_id"],
                                                                                              day))
    out = []
    for (fault, signal), hits in sorted(seen.items()):
        ids = sorted({i for i, _ in hits})
        days = (min(d for _, d in hits), max(d for _, d in hits))
        text = (f"{len(ids)} incident(s) diagnosed as {fault}, led by {signal} ({', '.join(ids[:3])}"
                f"{', ...' if len(ids) > 3 else ''}), opened on {_days(*days)}")
        out.append(Evidence(fault, signal, "incidents", 0, text, None, "", len(ids), None, *days,
                            f"lake:incidents:{fault}:{signal}"))
    return out


def design_evidence(study_name: str, factors: tuple, responses: tuple, coded: np.ndarray,
                    observed: dict[str, np.ndarray], source: str) -> list[Evidence]:
    """A design's main effects on each response (p < 0.05), and each process state's association with each
    quality attribute across its runs."""
    from design.model import fit_response

    out = []
    n = len(coded)
    for response in responses:
        y = observed[response.name]
        model = fit_response(factors, coded, y, response.name)
        for term, effect, p in zip(model.effects["term"], model.effects["effect"], model.effects["p"], strict=True):
            factor = next((f for f in factors if f.short == term or f.name.replace(".", "_") == term), None)
            if factor is None or not p < MAX_P:
                continue
            unit = unit_of(response.column)
            ends = (f"{factor.levels[0]} to {factor.levels[1]}" if factor.categorical
                    else f"{factor.low:g} to {factor.high:g}")
            out.append(Evidence(
                factor.name, response.column, "design", int(np.sign(effect)),
                f"design '{study_name}' ({n} runs, {model.order} model, R² {model.r2:.2f}): {response.name} "
                f"{effect:+.3g} {unit} from {ends}, p {p:.2g}".replace("  ", " "),
                float(effect), unit, n, float(p), None, None, f"{source}:{response.name}"))
    for a in responses:
        for b in responses:
            if a.column in STATES and b.column in QUALITY:
                ya, yb = observed[a.name], observed[b.name]
                keep = np.isfinite(ya) & np.isfinite(yb)
                rho, p = stats.spearmanr(ya[keep], yb[keep])
                if abs(rho) >= MIN_RHO and p < 0.01:
                    out.append(Evidence(a.column, b.column, "association", int(np.sign(rho)),
                                        f"across the {int(keep.sum())} runs of design '{study_name}', higher "
                                        f"{a.name} goes with {'higher' if rho > 0 else 'lower'} {b.name} "
                                        f"(Spearman ρ {rho:+.2f}, p {p:.1g}): an association, not a cause",
                                        float(rho), "ρ", int(keep.sum()), float(p), None, None,
                                        f"{source}:{a.name}~{b.name}"))
    return out


def design_results_evidence(study: str, results_csv: str | Path) -> list[Evidence]:
    """`design_evidence` of a study's results sheet (the CSV `biopilot design run --results` writes)."""
    from design.designs import read_sheet
    from design.study import load_study

    spec = load_study(study)
    sheet = read_sheet(spec, results_csv)
    frame = pd.read_csv(results_csv)
    observed = {r.name: frame[r.name].to_numpy(float) for r in spec.responses if r.name in frame}
    responses = tuple(r for r in spec.responses if r.name in observed)
    return design_evidence(spec.name, spec.factors, responses, sheet.coded, observed, str(results_csv))


# ---- the graph ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cause:
    origin: str
    path: tuple[str, ...]  # origin ... target
    sign: int  # the path's sign: the product of its edges' (0 where one has no stated direction)
    applies: bool | None  # on the asked day: seen then (True), seen only at other times (False), no timing (None)
    evidence: tuple[tuple[Evidence, ...], ...]  # each edge's, in path order


@dataclass(frozen=True)
class GraphQuestion:
    target: str
    direction: int  # +1 what raises it, -1 what lowers it, 0 what moves it
    day: float | None = None


class KnowledgeGraph:
    def __init__(self, graph: nx.MultiDiGraph, build_id: str = "", built_ts: datetime | None = None) -> None:
        self.graph = graph
        self.build_id = build_id
        self.built_ts = built_ts

    @classmethod
    def from_evidence(cls, evidence: Iterable[Evidence], build_id: str = "",
                      built_ts: datetime | None = None) -> KnowledgeGraph:
        graph = nx.MultiDiGraph()
        for e in evidence:
            for node in (e.source, e.target):
                if node not in graph:
                    graph.add_node(node, kind=node_kind(node), label=label(node), **_node_detail(node))
            graph.add_edge(e.source, e.target, key=e.key, evidence=e)
        return cls(graph, build_id, built_ts)

    @property
    def evidence(self) -> list[Evidence]:
        return [d["evidence"] for _, _, d in self.graph.edges(data=True)]

    def edge_evidence(self, u: str, v: str) -> tuple[Evidence, ...]:
        items = [d["evidence"] for d in self.graph.get_edge_data(u, v, default={}).values()]
        return tuple(sorted(items, key=lambda e: SIGN_ORDER.index(e.kind)))

    def sign(self, u: str, v: str) -> int:
        """The edge's sign: its first directed evidence in `SIGN_ORDER` (measured before stated)."""
        return next((e.sign for e in self.edge_evidence(u, v) if e.sign), 0)

    def causes(self, target: str, direction: int, day: float | None = None, max_edges: int = 3) -> list[Cause]:
        """What moves `target` the asked way (`direction` +1 / -1; 0: either), from parameters and anomalies,
        directly or through process states; ranked: seen on `day` first, direct before indirect, then by the
        weight of the evidence."""
        if target not in self.graph:
            return []
        simple = nx.DiGraph(self.graph)  # one edge per pair for the path search
        found = []
        for origin in nx.ancestors(simple, target):
            if self.graph.nodes[origin]["kind"] not in ("parameter", "anomaly"):
                continue
            direct = self.sign(origin, target) if simple.has_edge(origin, target) else 0
            if direct and direction and direct != direction:
                continue  # measured or stated the other way: a path through an association does not overrule it
            applies = _applies(self.windows(origin), day)
            for path in nx.all_simple_paths(simple, origin, target, cutoff=1 if direct else max_edges):
                if any(self.graph.nodes[n]["kind"] in ("parameter", "anomaly") for n in path[1:]):
                    continue  # a path through another cause is that cause's
                sign = int(np.prod([self.sign(u, v) for u, v in zip(path, path[1:], strict=False)]))
                if direction and sign not in (direction, 0):
                    continue
                evidence = tuple(self.edge_evidence(u, v) for u, v in zip(path, path[1:], strict=False))
                found.append(Cause(origin, tuple(path), sign, applies, evidence))
        best: dict[str, Cause] = {}
        for c in sorted(found, key=_rank):
            best.setdefault(c.origin, c)
        return sorted(best.values(), key=_rank)

    def windows(self, node: str) -> list[tuple[float, float]]:
        """The days of the run a cause was seen on (its labelled runs and incidents); none for a parameter."""
        return sorted({(d["evidence"].day_from, d["evidence"].day_to) for _, _, d in self.graph.out_edges(node, data=True)
                       if d["evidence"].day_from is not None})

    def as_json(self) -> dict:
        nodes = [{"id": n, **d} for n, d in self.graph.nodes(data=True)]
        edges = [{"source": u, "target": v, "sign": self.sign(u, v),
                  "evidence": [{"kind": e.kind, "text": e.text, "ref": e.ref} for e in self.edge_evidence(u, v)]}
                 for u, v in nx.DiGraph(self.graph).edges]
        return {"build_id": self.build_id, "built_ts": self.built_ts.isoformat() if self.built_ts else None,
                "nodes": nodes, "edges": edges}


def _node_detail(node: str) -> dict[str, str]:
    if node in CATALOGUE:
        info = CATALOGUE[node]
        return {"detail": f"{info.root_cause}. Action: {info.action}", "layer": info.layer}
    if node_kind(node) in ("state", "quality"):
        return {"detail": f"{node} ({unit_of(node) or 'unitless'})"}
    return {"detail": f"scenario setting {node}"}


def _applies(windows: list[tuple[float, float]], day: float | None) -> bool | None:
    if day is None or not windows:
        return None
    return any(a - DAY_SLACK <= day <= b + DAY_SLACK for a, b in windows)


def _rank(c: Cause) -> tuple:
    timing = {True: 0, None: 1, False: 2}[c.applies]
    weight = sum(e.support or 1 for e in c.evidence[0]) + 3 * sum(bool(e.sign) for e in c.evidence[0])
    stated = max((e.size for e in c.evidence[0] if e.kind == "signature"), default=0.0)  # the signature's weight
    return timing, len(c.path), c.sign == 0, -weight, -stated, c.origin


def build(lake: str | Path, designs: Iterable[tuple[str, str | Path]] = ()) -> KnowledgeGraph:
    """The graph from the catalogue, the lake's labelled runs and incidents, and each (study, results CSV)."""
    evidence = catalogue_evidence() + labelled_run_evidence(lake) + incident_evidence(lake)
    for study, results in designs:
        evidence += design_results_evidence(study, results)
    return KnowledgeGraph.from_evidence(evidence, uuid.uuid4().hex[:12], datetime.now(UTC))


def store(lake: str | Path, graph: KnowledgeGraph) -> int:
    """Append the build to the lake's `knowledge_graph` table; the number of edges written."""
    rows = [{"build_id": graph.build_id, "built_ts": graph.built_ts, "source_kind": node_kind(e.source),
             "target_kind": node_kind(e.target), **asdict(e)} for e in graph.evidence]
    delta.append(lake, TABLE, pa.Table.from_pylist(rows, schema=SCHEMA), SCHEMA)
    return len(rows)


def load(lake: str | Path) -> KnowledgeGraph | None:
    """The newest build in the lake (None if none was stored)."""
    table = delta.read(lake, TABLE)
    if table is None or table.num_rows == 0:
        return None
    rows = table.to_pylist()
    newest = max(rows, key=lambda r: r["built_ts"])
    fields = set(Evidence.__dataclass_fields__)
    evidence = [Evidence(**{k: v for k, v in r.items() if k in fields}) for r in rows
                if r["build_id"] == newest["build_id"]]
    return KnowledgeGraph.from_evidence(evidence, newest["build_id"], newest["built_ts"])


def load_or_catalogue(lake: str | Path) -> KnowledgeGraph:
    """The stored graph, or, before any build, the one the catalogue alone gives."""
    return load(lake) or KnowledgeGraph.from_evidence(catalogue_evidence())


# ---- questions and answers ----------------------------------------------------------------------------------
class QuestionError(ValueError):
    """A question the graph could answer but for a part that is wrong (a day that is no day of a run)."""


def asked_day(question: str) -> float | None:
    """The day of the run a question names ("on day 6", "day 9.5"); None if it names none; a QuestionError if it
    names one that is not a day: negative, infinite, NaN or too large for a float ("day 1e400")."""
    found = DAY.search(question.lower())
    if found is None:
        return None
    day = float(found[1])
    if found[1].startswith("-") or not day < math.inf:  # NaN fails too; "-0" is no day either
        raise QuestionError(f'"day {found[1]}" is not a day of the run: give a number of days from 0, e.g. '
                            '"on day 6"')
    return day


def parse_question(question: str) -> GraphQuestion | None:
    """"what raises HCP?", "what could cause low DO on day 6?": the node, the direction and the day; None if the
    question is not one the graph answers."""
    text = question.lower()
    words = set(re.findall(r"[a-z0-9]+", text))
    direction = 1 if words & UP else -1 if words & DOWN else 0
    verb = re.search(r"\b(" + "|".join(sorted(UP | DOWN | CAUSAL)) + r")\b", text)
    if verb is None or not words & {"what", "which"}:
        return None
    masked, named = text, []
    for w in sorted(WORDS, key=len, reverse=True):  # "dissolved oxygen" before "oxygen"
        # "do" is a verb too: the signal only as written, "DO"
        for m in re.finditer(rf"\b{re.escape(w)}\b", masked):
            if w != "do" or question[m.start():m.end()] == "DO":
                named.append((m.start(), WORDS[w]))
        masked = re.sub(rf"\b{re.escape(w)}\b", lambda m: " " * len(m[0]), masked)
    after = sorted(n for n in named if n[0] > verb.start()) or sorted(named)
    if not after:
        return None
    target = after[0][1]  # the node the verb is about: "what do high temperatures do to the titer?" is the titer
    if words & RUN_WORDS:  # "what caused the DO drop in this run?": the run's findings answer that
        return None
    try:
        day = asked_day(text)
    except QuestionError:  # the chat answers without it; `graph query` refuses it (biopilot/cli/graph.py)
        day = None
    return GraphQuestion(target, direction, day)


def _verb(sign: int, direction: int) -> str:
    if sign == 0:
        return "moves"
    return "raises" if sign > 0 else "lowers" if direction or sign < 0 else "moves"


def answer(graph: KnowledgeGraph, q: GraphQuestion, limit: int = 5) -> list[str]:
    """The causes in words, each with the evidence it rests on (offline: every fact is an evidence's text)."""
    what = {1: "raises", -1: "lowers", 0: "moves"}[q.direction]
    when = f" on day {q.day:g}" if q.day is not None else ""
    build = (f"build {graph.build_id} of {graph.built_ts:%Y-%m-%d %H:%M} UTC" if graph.build_id
             else "the fault catalogue alone (no build stored: `biopilot graph build`)")
    causes = graph.causes(q.target, q.direction, q.day)
    shown = [c for c in causes if c.applies is not False][:limit]
    chunks = [f"What {what} {label(q.target)} ({q.target}){when}, from the knowledge graph ({build}):"]
    if not shown:
        chunks.append(f"Nothing in the graph {what} {q.target}{when}.")
    for i, c in enumerate(shown, 1):
        node = graph.graph.nodes[c.origin]
        steps = []
        for (u, v), ev in zip(zip(c.path, c.path[1:], strict=False), c.evidence, strict=True):
            steps.append(f"{u} {_verb(graph.sign(u, v), q.direction)} {v} ({'; '.join(e.text for e in ev)})")
        head = f"{i}. {c.origin} ({node['kind']}"
        head += f": {CATALOGUE[c.origin].root_cause})" if c.origin in CATALOGUE else ")"
        timing = ""
        if q.day is not None and c.applies is None:
            timing = " Timing: the evidence does not say when in the run."
        chunks.append(f"{head}: " + "; then ".join(steps) + "." + timing)
    elsewhere = [c for c in causes if c.applies is False]
    if elsewhere:
        chunks.append(f"Seen only at other times of the run, so unlikely{when}: " + ", ".join(
            f"{c.origin} ({', '.join(_days(a, b) for a, b in graph.windows(c.origin))})" for c in elsewhere) + ".")
    return chunks
