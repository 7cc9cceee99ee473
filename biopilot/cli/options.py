"""What the command modules share: declaring a command or a group of them, argparse types, the options several
commands take, and the settings and lake a command works on."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from biopilot.cli.errors import UsageError
from core.config import DetectOptions, Settings, load_settings

if TYPE_CHECKING:
    import pyarrow as pa

Handler = Callable[[argparse.Namespace], int]


def command(subparsers: argparse._SubParsersAction, name: str, handler: Handler,
            help: str) -> argparse.ArgumentParser:
    """The sub-command `name`, run by `handler(args)`, whose docstring is the command's description in --help;
    its options are added to what this returns."""
    parser = subparsers.add_parser(name, help=help, description=handler.__doc__)
    parser.set_defaults(func=handler)
    return parser


def group(subparsers: argparse._SubParsersAction, name: str, help: str, description: str,
          metavar: str) -> argparse._SubParsersAction:
    """A command made of sub-commands (`biopilot bench simulate`): they are declared on what this returns."""
    parser = subparsers.add_parser(name, help=help, description=description)
    return parser.add_subparsers(dest=f"{name}_command", metavar=metavar, required=True)


def positive(name: str, kind: type = float, allow_max: bool = False) -> Callable[[str], float | int | None]:
    """An argparse type: a number > 0 (an integer if `kind` is int), or the word max (None) if `allow_max`."""
    what = ("an integer" if kind is int else "a number") + (" or max" if allow_max else "")

    def parse(text: str) -> float | int | None:
        if allow_max and text == "max":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if not 0 < value < math.inf:  # NaN fails too; inf would start a run that never ends
            raise argparse.ArgumentTypeError(f"{name} must be > 0 and finite, got {text}")
        return value
    return parse


# a fleet this size simulates for tens of minutes; 10**12 ran with no end in sight
MAX_REACTORS = 100_000


def in_range(name: str, kind: type, low: float, high: float, high_text: str = "", unit: str = ""
             ) -> Callable[[str], float | int]:
    """An argparse type: a number (an integer if `kind` is int) from `low` to `high` (`high_text` says it; NaN
    fails the check), `unit` after the range in the message."""
    what = "an integer" if kind is int else "a number"
    span = f"from {low:g} to {high_text or f'{high:g}'}{unit}"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {what} {span}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} must be {span}, got {text}")
        return value
    return parse


def share(name: str) -> Callable[[str], float | int]:
    """An argparse type: a share, a number from 0 to 1."""
    return in_range(name, float, 0, 1, unit=" (a share)")


# a TCP port (the socket's own error for a larger one is a traceback)
port = in_range("--port", int, 1, 65535)


def seed_named(name: str) -> Callable[[str], float | int]:
    """A random seed under another name (--sweep-seed, --plant-seed): numpy refuses negative seeds; the runs table
    keeps the seed as int64."""
    return in_range(name, int, 0, 2**63 - 1, high_text="2**63 - 1")


seed = seed_named("--seed")


def check_folder(option: str, path: str | None, give: str = "a folder") -> None:
    """Before any work: a folder the command writes into may be missing (it is made) but must not be a file (else
    mkdir's FileExistsError traceback, often once the work is done)."""
    if path and Path(path).exists() and not Path(path).is_dir():
        raise UsageError(f"{option} {path} is a file; give {give}")


# what a plot may be written as (matplotlib picks the format by the suffix and raises on another)
IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def check_output(path: str | None, flag: str, suffixes: tuple[str, ...] = ()) -> None:
    """Before any run: an output file that can be written (a missing folder is made when it is written), so a
    bad path is one line now rather than a traceback after the twin runs."""
    if path is None:
        return
    out = Path(path)
    if suffixes and out.suffix not in suffixes:
        raise UsageError(f"{flag} {path}: must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give the file to write")
    folder = next((p for p in out.absolute().parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is a file, not a folder")


def lake_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", default=None, help="Delta root (default: BIOPILOT_LAKE or ./lake)")


def lake_of(args: argparse.Namespace) -> str:
    """The command's --lake, else the settings' lake (the settings are read only when needed)."""
    lake = getattr(args, "lake", None) or load_settings().lake
    if Path(lake).is_file():  # else a FileExistsError traceback from the first table's mkdir
        raise UsageError(f"the lake {lake} is a file; give a folder (--lake or BIOPILOT_LAKE)")
    return lake


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings, with the command's --lake when it has one."""
    settings = load_settings()
    return replace(settings, lake=args.lake) if getattr(args, "lake", None) else settings


def conditioning_options(parser: argparse.ArgumentParser) -> None:
    """How `detect` and `bench skab` condition the signals before scoring (read back by `detect_options`)."""
    d = DetectOptions()
    parser.add_argument("--smooth-rows", type=positive("--smooth-rows", int), default=d.smooth_rows,
                        help=f"causal EWMA span applied to every signal first; 1 = none (default {d.smooth_rows})")
    parser.add_argument("--min-roughness", type=in_range("--min-roughness", float, 0, 10), default=d.min_roughness,
                        help="leave out signals whose level wanders on the training rows: roughness = "
                             "sd(differences) / (sqrt 2 sd) below this; 0 keeps every signal "
                             f"(default {d.min_roughness})")
    parser.add_argument("--margin", type=positive("--margin"), default=d.margin,
                        help="alarm threshold = this x the highest score held on the training rows; with a "
                             "budget, that of --margin-detectors: this x their largest out-of-fold score "
                             f"(default {d.margin})")


def detect_options(args: argparse.Namespace) -> DetectOptions:
    return DetectOptions(smooth_rows=args.smooth_rows, min_roughness=args.min_roughness, margin=args.margin)


def progress(args: argparse.Namespace) -> Callable[[str], None]:
    """Progress lines on stderr, unless the command prints JSON."""
    def say(msg: str) -> None:
        if not getattr(args, "json", False):
            print(msg, file=sys.stderr, flush=True)
    return say


def read_table(path: str) -> pa.Table:
    """A .csv (every column as text, so checks can name the offending value) or .parquet file; a missing or
    unreadable one is a UsageError."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if not Path(path).is_file():
        raise UsageError(f"cannot read {path}: {'not a file' if Path(path).exists() else 'no such file'}")
    try:
        if path.endswith(".parquet"):
            table = pq.read_table(path)
        else:
            with open(path, newline="") as f:
                header = next(csv.reader(f), [])
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in header}, strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    # a column by name is then ambiguous (pyarrow raises KeyError on it): say which, rather than pick one
    twice = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if twice:
        raise UsageError(f"{path} has more than one column named {', '.join(twice)}: rename or drop the copies")
    return table
