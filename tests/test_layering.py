"""Imports point one way: every import, function-level ones included, follows an arrow written down here, and no
two modules import each other round a cycle (a hidden cycle is how a leaf turns into a knot)."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]

# The folders each folder may import from (besides itself): the vocabulary at the bottom, the composition root
# (the `biopilot` command, `up`, the benchmarks) at the top. docs/ARCHITECTURE.md draws the same picture.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "sources": {"core"},
    "sinks": {"core"},
    "detectors": {"core", "sources"},
    "flows": {"core", "sources", "detectors", "sinks", "outcomes"},
    "outcomes": {"core", "sources", "detectors", "sinks"},
    "design": {"core", "sources", "sinks"},
    "agents": {"core", "sources", "detectors", "sinks", "outcomes", "design"},
    "dashboard": {"core", "sources", "sinks", "agents", "outcomes", "design"},
    "cohorts": {"core"},
    "trials": {"core", "sources", "detectors", "sinks", "agents", "cohorts"},
    "biopilot": {"core", "sources", "detectors", "sinks", "flows", "agents", "dashboard", "trials", "cohorts",
                 "outcomes", "design"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parse(path: Path, tries: int = 3) -> ast.Module:
    """The file's syntax tree. CPython 3.11 counts the AST constructor's depth per interpreter, not per thread
    (gh-106905): a traceback formatted on another thread meanwhile (3.11 parses source for its carets; a test
    before this one may leave a client logging its reconnects) can fail one parse with a SystemError."""
    for _ in range(tries - 1):
        with contextlib.suppress(SystemError):
            return ast.parse(path.read_text(), str(path))
    return ast.parse(path.read_text(), str(path))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a project module in the file, at any depth."""
    found = []
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ALLOWED]


def _project_files() -> list[Path]:
    return sorted(p for package in ALLOWED for p in (ROOT / package).rglob("*.py"))


def _import_graph() -> nx.DiGraph:
    files = _project_files()
    modules = {_module_name(p) for p in files}
    graph = nx.DiGraph()
    for path in files:
        source = _module_name(path)
        for _, name in _imports(path):
            # `from pkg import mod` names a module; `from mod import func` names the module itself
            target = name if name in modules else name.rsplit(".", 1)[0]
            if target in modules and target != source and not source.startswith(target + "."):
                graph.add_edge(source, target)
    return graph


def test_every_import_follows_an_allowed_arrow_between_folders() -> None:
    wrong = []
    for path in _project_files():
        folder = path.relative_to(ROOT).parts[0]
        for line, name in _imports(path):
            target = name.split(".")[0]
            if target != folder and target not in ALLOWED[folder]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({folder} -> {target} is not allowed)")
    assert not wrong, "\n".join(wrong)


def test_no_modules_import_each_other_round_a_cycle() -> None:
    cycles = [" -> ".join([*cycle, cycle[0]]) for cycle in nx.simple_cycles(_import_graph())]
    assert not cycles, "\n".join(sorted(cycles))


def test_the_vocabulary_imports_no_other_folder() -> None:
    assert ALLOWED["core"] == set()
    assert all(name.split(".")[0] == "core" for p in (ROOT / "core").rglob("*.py") for _, name in _imports(p))
