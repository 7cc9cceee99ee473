"""README's Layout section names only paths that exist, and names every layer of the import rules."""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_layering import ALLOWED

ROOT = Path(__file__).resolve().parents[1]
# a path in backticks: folders end with "/", files with an extension (`core/events.py`, `docs/performance/`)
PATH = re.compile(r"`([\w.-]+(?:/[\w.-]+)*(?:/|\.[a-z]+))`")


def layout_section(readme: str) -> str:
    """The text between the heading `## Layout` and the next second-level heading."""
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    if match is None:
        raise AssertionError("README has no '## Layout' section")
    return match.group(1)


def layout_paths(readme: str) -> list[str]:
    """Every path the Layout section names, in order, each once.

    >>> layout_paths("## Layout\\n`core/` and `core/events.py`, not `biopilot up`\\n## Settings\\n`x/y.py`\\n")
    ['core/', 'core/events.py']
    """
    return list(dict.fromkeys(m for m in PATH.findall(layout_section(readme)) if "/" in m))


def missing(paths: list[str], root: Path = ROOT) -> list[str]:
    """The paths that are not in the repository: a folder (ending in "/") or a file."""
    return [p for p in paths if not ((root / p).is_dir() if p.endswith("/") else (root / p).is_file())]


def test_every_path_in_the_layout_exists() -> None:
    paths = layout_paths((ROOT / "README.md").read_text())
    assert len(paths) >= 60, f"the parser found only {len(paths)} paths: {paths}"
    assert missing(paths) == []


def test_a_made_up_path_is_caught() -> None:
    readme = ("## Layout\n| `core/` | `core/events.py`, `core/no_such_module.py`, `no_such_folder/` |\n"
              "## Settings\n`sources/also_made_up.py` is outside the section\n")
    paths = layout_paths(readme)
    assert paths == ["core/", "core/events.py", "core/no_such_module.py", "no_such_folder/"]
    assert missing(paths) == ["core/no_such_module.py", "no_such_folder/"]


def test_the_layout_names_every_layer() -> None:
    named = {p.split("/")[0] for p in layout_paths((ROOT / "README.md").read_text())}
    assert set(ALLOWED) <= named
