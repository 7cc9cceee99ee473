"""`--help` of every `biopilot` command and sub-command, found by walking the parser (so a new command is covered
without listing it here): exit 0, a usage line and a description, no traceback (a `%` in a help text once
crashed `biopilot detect --help`). In-process: the whole walk takes seconds."""

from __future__ import annotations

import argparse

import pytest

from biopilot.cli import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str]]:
    """(the words naming every command, sub-commands included, its description) below `parser`."""
    found = [(path, parser.description or "")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_the_commands_and_their_subcommands() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {("bench",), ("bench", "simulate"), ("bench", "detect"), ("detect",)} <= paths
    assert len(paths) > 40


@pytest.mark.parametrize(("path", "description"), COMMANDS, ids=[" ".join(p) or "biopilot" for p, _ in COMMANDS])
def test_help_prints_usage_and_description(path: tuple[str, ...], description: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err
    assert out.startswith(f"usage: {' '.join(('biopilot', *path))}"), out[:200]
    assert description.strip(), f"{' '.join(path)} has no description"
    # argparse re-wraps the description: compare its first words
    assert " ".join(description.split()[:4]) in " ".join(out.split()), out
    assert "Traceback" not in out + err
