"""A run's recipe and the golden reference made for it by the twin.

A plant runs its own settings (setpoints, feed mode and schedule, temperature shift, volume, seeding), and an
operator changes them mid-run. Judged against the default recipe's normal runs, such a run looks faulty from
start to end. `Recipe` is what shapes a normal run: the scenario's process and feed settings, its tick and
length, kinetics overrides, and the changes made while it ran (each at its culture age). `reference_for`
simulates normal twin runs of exactly that recipe and summarises them as `detectors.golden_build` does for the
default one (no bin's spread tighter than the default reference's tightest, nor than one reading step, a
pump's floor scaled with its rate: `spread_floor`); references are cached by `Recipe.hash` in memory and on disk (`BIOPILOT_REFERENCE_CACHE`, default
`~/.cache/biopilot/references`), so a recipe is built once per machine.

A mid-run change is replayed in the reference at the culture age it was made: the twin's normal runs continue
from their own state at that age under the new settings. That is the reference a normal run that received the
same command would follow, transient included; the new recipe's reference from inoculation would instead assume
the run had always had the new settings (a run whose DO was held at 40 % for five days has grown as one held at
40 %, not at 30 %).

"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

from detectors.base import DETECTOR_SIGNALS
from detectors.golden import GoldenReference, forget_loaded_references, load_reference
from detectors.golden_build import build_reference, reading_steps, save_reference, summarise_runs
from sources.recipe import BOLUS, Change, Recipe

__all__ = ["BOLUS", "Change", "Recipe", "cache_dir", "cached", "learn_reference", "reference_for",
           "pump_levels", "reference_ready", "reference_source", "spread_floor"]

log = logging.getLogger(__name__)

REFERENCE_RUNS = 30  # as the shipped golden batch; the drift limits extrapolate from these runs
REFERENCE_SEED = 500
CACHE_ENV = "BIOPILOT_REFERENCE_CACHE"
MEMORY_KEPT = 64  # references held in memory (each ~0.4 MB)

# ---- references -----------------------------------------------------------------------------------------
_MEMORY: OrderedDict[str, GoldenReference] = OrderedDict()
_MEMORY_LOCK = threading.Lock()  # a background build adds to it while the flow reads it
_BUILDS: dict[str, Future[GoldenReference]] = {}  # recipe hash -> its background build
_BUILDER: list[ThreadPoolExecutor] = []  # started on the first background build


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "biopilot" / "references")


# Bumped whenever the twin or the reference build changes, so that a cached reference built by older code is not
# used (the recipe hash alone does not see a change of code).
BUILD_VERSION = 27


def _twin_path(recipe: Recipe) -> Path:
    return cache_dir() / f"{recipe.hash}.v{BUILD_VERSION}.npz"


def learned_marker(recipe: Recipe) -> Path:
    """Beside a reference learned from the plant's own batches: which runs it was learned from."""
    return cache_dir() / f"{recipe.hash}.learned.json"


def reference_source(recipe: Recipe) -> str:
    """Where `reference_for(recipe)` comes from: "default" (the shipped golden batch), "learned" (the plant's
    own normal batches, `learn_reference`) or "twin"."""
    if recipe == Recipe.default():
        return "default"
    return "learned" if learned_marker(recipe).exists() else "twin"


def learn_reference(recipe: Recipe, ticks: pa.Table) -> tuple[GoldenReference, Path]:
    """The reference of `recipe` learned from the plant's own normal batches (`ticks` of those runs), for a
    recipe the twin cannot represent (a setting or a process outside the scenario model): it replaces any
    twin-built one in the cache, and says so (`reference_source`)."""
    if ticks.num_rows == 0:
        raise ValueError("no ticks to learn a reference from")
    ref = summarise_runs(ticks, floor=spread_floor(), floor_level=pump_levels())
    path = _twin_path(recipe)
    _store(ref, path)
    runs = sorted(set(ticks["run_id"].to_pylist()))
    learned_marker(recipe).write_text(json.dumps({"recipe_hash": recipe.hash, "runs": runs}))
    _MEMORY.pop(recipe.hash, None)
    return ref, path


def _store(ref: GoldenReference, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.part.npz")
    save_reference(ref, partial)
    partial.replace(path)  # atomic: a reader never sees half a file
    forget_loaded_references()  # a file of this name loaded before is another reference now


def cached(recipe: Recipe) -> bool:
    """Whether `reference_for(recipe)` returns without simulating."""
    return (recipe == Recipe.default() or recipe.hash in _MEMORY
            or (_twin_path(recipe)).exists())


PUMPS = ("feed_ml_per_tick", "base_ml_per_tick")


def spread_floor() -> np.ndarray:
    """Per detector signal, the least spread a recipe's reference may have: the default reference's tightest
    bin, and one reading step (the sensor's resolution, as a robust sd: a totaliser's increments are whole
    steps, so all runs may agree on a bin by chance). The pumps' floors are the default's at its pump rates:
    `pump_levels`."""
    return np.maximum(load_reference().scale.min(axis=0), reading_steps() * 1.4826)


def pump_levels() -> np.ndarray:
    """Per detector signal, the level `spread_floor` holds at (NaN: any level): for the pumps' increments, the
    default reference's largest median. A recipe whose pumps run faster (a larger vessel's) has their floors
    scaled up with its own level (`golden_build.summarise_runs`): at a bolus's first and last tick, where the
    normal runs all agree, a floor in absolute mL would give a z that grows with the pump, i.e. with the vessel."""
    levels = np.full(len(DETECTOR_SIGNALS), np.nan)
    for name in PUMPS:
        j = DETECTOR_SIGNALS.index(name)
        levels[j] = float(np.abs(load_reference().median[:, j]).max())
    return levels


def reference_for(recipe: Recipe) -> GoldenReference:
    """The golden reference of `recipe`'s normal runs: the shipped one for the default recipe; else from the
    memory cache, the disk cache, or simulated now (`REFERENCE_RUNS` twin runs: seconds) and cached. One loaded
    from disk names its file, so a monitor's snapshot pickles the path, not the arrays."""
    if recipe == Recipe.default():
        return load_reference()
    ref = _MEMORY.get(recipe.hash)
    if ref is None:
        path = _twin_path(recipe)
        if not path.exists():
            started = time.perf_counter()
            built = build_reference(REFERENCE_RUNS, REFERENCE_SEED, recipe.scenario(), recipe.changes,
                                    floor=spread_floor(), floor_level=pump_levels())
            _store(built, path)
            log.info("reference for recipe %s built in %.1f s", recipe.hash, time.perf_counter() - started)
        ref = load_reference(path)
    with _MEMORY_LOCK:
        _MEMORY[recipe.hash] = ref
        _MEMORY.move_to_end(recipe.hash)
        while len(_MEMORY) > MEMORY_KEPT:
            _MEMORY.popitem(last=False)
    return ref


def reference_ready(recipe: Recipe) -> GoldenReference | None:
    """`reference_for(recipe)` when it needs no simulation; else None, and the reference is built in a background
    thread (one build at a time, each recipe once), so that the caller (the flow's step) is not blocked for the
    seconds a build takes: ask again later. A build's error is raised to the caller that asks after it."""
    if cached(recipe):
        _BUILDS.pop(recipe.hash, None)
        return reference_for(recipe)
    with _MEMORY_LOCK:
        build = _BUILDS.get(recipe.hash)
        if build is None:
            if not _BUILDER:
                _BUILDER.append(ThreadPoolExecutor(1, thread_name_prefix="reference-build"))
            _BUILDS[recipe.hash] = _BUILDER[0].submit(reference_for, recipe)
            return None
    if not build.done():
        return None
    _BUILDS.pop(recipe.hash, None)
    return build.result()
