"""`biopilot graph`: the process knowledge graph (agents/knowledge_graph.py, docs/KNOWLEDGE-GRAPH.md).

`build` rebuilds it from the fault catalogue, the lake's labelled runs and incidents and the designs' results,
and stores it in the lake's `knowledge_graph` table; `query` answers a question from the stored graph.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from biopilot.cli.errors import UsageError, user_errors
from biopilot.cli.options import command, group, lake_of, lake_option


def _design(text: str) -> tuple[str, str]:
    study, sep, results = text.partition("=")
    if not sep or not study or not results:
        raise argparse.ArgumentTypeError(f"--design takes STUDY=RESULTS.csv, got {text!r}")
    return study, results


def register(subparsers: argparse._SubParsersAction) -> None:
    graphs = group(subparsers, "graph", "the process knowledge graph: build, query",
                   "parameters -> process states -> anomalies -> product quality, with the evidence of each edge",
                   "{build,query}")
    p = command(graphs, "build", cmd_graph_build, "rebuild the graph and store it in the lake")
    lake_option(p)
    p.add_argument("--design", type=_design, action="append", default=[], metavar="STUDY=RESULTS.csv",
                   help="a design's results (the CSV `biopilot design run --results` writes) and its study (a "
                        "built-in or a TOML file); repeat. E.g. titer=docs/design/titer-ccf-results.csv")
    p.add_argument("--json", action="store_true", help="print one JSON object: the build and its edges by kind")
    p = command(graphs, "query", cmd_graph_query, "answer a question from the stored graph")
    p.add_argument("question", help='e.g. "what raises HCP?", "what could cause low DO on day 6?"')
    lake_option(p)
    p.add_argument("--json", action="store_true", help="the causes as JSON: origin, path, sign, applies, evidence")


def cmd_graph_build(args: argparse.Namespace) -> int:
    """Build the knowledge graph: the faults' signatures and catalogue, each labelled fault against the lake's
    fault-free runs, the incidents and their diagnosed causes, each design's significant main effects and its
    state-quality associations; append it to the lake's `knowledge_graph` table (the newest build is the one
    read)."""
    from agents.knowledge_graph import build, store
    from design.study import StudyError
    from sinks import delta

    for _, results in args.design:
        if not Path(results).is_file():
            raise UsageError(f"--design: no results file {results}")
    if not delta.run_ids(lake_of(args)):  # a mistyped --lake: say so, the graph is the catalogue alone
        print(f"biopilot: no runs in {lake_of(args)}: the graph holds the fault catalogue"
              f"{' and the designs' if args.design else ''} only", file=sys.stderr)
    with user_errors(StudyError):
        graph = build(lake_of(args), args.design)
    edges = store(lake_of(args), graph)
    kinds: dict[str, int] = {}
    for e in graph.evidence:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    if args.json:
        print(json.dumps({"build_id": graph.build_id, "built_ts": graph.built_ts.isoformat(),
                          "nodes": graph.graph.number_of_nodes(), "edges": edges, "by_kind": kinds}))
    else:
        print(f"knowledge graph {graph.build_id}: {graph.graph.number_of_nodes()} nodes, {edges} edges "
              f"({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}) stored in {lake_of(args)}")
    return 0


def cmd_graph_query(args: argparse.Namespace) -> int:
    """Answer "what raises/lowers/causes X [on day N]?" from the newest stored graph (before any build: from the
    fault catalogue alone), every cause with the evidence it rests on."""
    from agents.knowledge_graph import QuestionError, answer, asked_day, load_or_catalogue, parse_question

    question = parse_question(args.question)
    if question is None:
        raise UsageError('ask what raises, lowers or causes a signal, assay or quality attribute: "what raises '
                         'HCP?", "what could cause low DO on day 6?"')
    with user_errors(QuestionError):  # "day -3", "day 1e400": refused, not dropped or read as another day
        asked_day(args.question)
    graph = load_or_catalogue(lake_of(args))
    if args.json:
        causes = graph.causes(question.target, question.direction, question.day)
        print(json.dumps({"build_id": graph.build_id, "target": question.target, "direction": question.direction,
                          "day": question.day, "causes": [
                              {"origin": c.origin, "path": list(c.path), "sign": c.sign, "applies": c.applies,
                               "evidence": [[e.text for e in edge] for edge in c.evidence]} for c in causes]}))
    else:
        print("\n".join(answer(graph, question)))
    return 0
