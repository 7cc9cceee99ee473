"""Designs in coded units (-1 low, +1 high) from pyDOE3 and scipy.stats.qmc, and the run sheet a lab executes.

Kinds: `full` (two-level full factorial), `fractional` (two-level fractional factorial of a given resolution),
`box-behnken`, `ccd` (central composite: rotatable axial points at +-(2^k)^(1/4), outside the cube), `ccf`
(face-centred: axial points on the faces, every run inside the ranges), `cci` (inscribed: the rotatable design
shrunk so its axial points are the ranges' ends), `lhs` (Latin hypercube), `sobol` (scrambled Sobol). The run
sheet adds centre points and replicates, randomises the run order and gives every run its own twin seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyDOE3
from scipy.stats import qmc

from design.study import Study, StudyError

KINDS = ("full", "fractional", "box-behnken", "ccd", "ccf", "cci", "lhs", "sobol")
# the model each kind supports: a two-level design estimates effects and interactions, not curvature
QUADRATIC_KINDS = ("box-behnken", "ccd", "ccf", "cci", "lhs", "sobol")
SHEET_FIXED = ("run_order", "std_order", "point_type", "seed")


def rotatable_alpha(k: int) -> float:
    """The axial distance that makes a central composite design's prediction variance depend only on the
    distance from the centre: (number of factorial points)^(1/4)."""
    return float((2 ** k) ** 0.25)


def coded_design(kind: str, k: int, runs: int | None = None, resolution: int = 4, seed: int = 0) -> np.ndarray:
    """The design's distinct points (rows) for `k` factors, without centre points or replicates; `runs` is the
    size of a space-filling (lhs, sobol) design."""
    if kind not in KINDS:
        raise StudyError(f"unknown design {kind!r}; allowed: {', '.join(KINDS)}")
    if kind == "box-behnken" and k < 3:
        raise StudyError("a Box-Behnken design needs at least 3 factors (use ccf for 2)")
    if kind in ("ccd", "ccf", "cci") and k < 2:
        raise StudyError("a central composite design needs at least 2 factors")
    if kind in ("ccd", "ccf", "cci", "box-behnken", "full", "fractional") and k > 8:
        raise StudyError(f"{kind} with {k} factors is too large a design; use lhs or sobol (or fewer factors)")
    if kind == "full" or (kind == "fractional" and k <= 3):
        return pyDOE3.ff2n(k).astype(float)
    if kind == "fractional":
        try:
            return pyDOE3.fracfact_by_res(k, resolution).astype(float)
        except ValueError as err:
            raise StudyError(f"no fractional factorial of resolution {resolution} for {k} factors: {err}") from None
    if kind == "box-behnken":
        return pyDOE3.bbdesign(k, center=0).astype(float)
    if kind in ("ccd", "ccf", "cci"):
        face = {"ccd": "circumscribed", "ccf": "faced", "cci": "inscribed"}[kind]
        return np.asarray(pyDOE3.ccdesign(k, center=(0, 0), alpha="rotatable", face=face), dtype=float)
    n = runs or max(10 * k, 8)
    if kind == "lhs":
        unit = qmc.LatinHypercube(d=k, seed=seed).random(n)
    else:
        unit = qmc.Sobol(d=k, scramble=True, seed=seed).random(n)
    return unit * 2.0 - 1.0


def point_types(kind: str, coded: np.ndarray, categorical: np.ndarray) -> list[str]:
    """Each design point's type, from its numeric factors (a categorical factor is at one of its levels in
    every run): all at the centre, `centre`; all at an end (+-1), `factorial`; else `axial` (composite) or `edge`
    (Box-Behnken)."""
    if kind in ("lhs", "sobol"):
        return ["space-filling"] * len(coded)
    numeric = np.abs(coded[:, ~categorical])
    corner = np.all(np.isclose(numeric, 1.0), axis=1)
    other = "edge" if kind == "box-behnken" else "axial"
    return ["centre" if not row.any() else "factorial" if c else other for row, c in zip(numeric, corner, strict=True)]


@dataclass(frozen=True)
class RunSheet:
    """The runs in the order a lab executes them: coded points, decoded settings, point type, seed."""

    study: Study
    kind: str
    coded: np.ndarray  # (runs, factors), in run order
    std_order: np.ndarray  # each run's row in the design's standard order (replicates share it)
    point_type: list[str]
    seeds: np.ndarray

    @property
    def settings(self) -> list[dict[str, float | str]]:
        return [{f.name: f.decode(x) for f, x in zip(self.study.factors, row, strict=True)} for row in self.coded]

    def rows(self) -> list[dict[str, object]]:
        return [{"run_order": i + 1, "std_order": int(self.std_order[i]), "point_type": self.point_type[i],
                 **self.settings[i], "seed": int(self.seeds[i])} for i in range(len(self.coded))]

    def write_csv(self, path: str | Path) -> None:
        rows = self.rows()
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # as the reports and plots do
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def propose(study: Study, kind: str, centre_points: int = 3, replicates: int = 1, runs: int | None = None,
            resolution: int = 4, seed: int = 0, randomise: bool = True) -> RunSheet:
    """The run sheet: the design's points `replicates` times, `centre_points` centre runs (none for a
    space-filling design unless asked), in a random run order, each run with its own seed."""
    if replicates < 1 or centre_points < 0:
        raise StudyError("replicates must be >= 1 and centre points >= 0")
    k = len(study.factors)
    base = coded_design(kind, k, runs, resolution, seed)
    categorical = np.array([f.categorical for f in study.factors])
    if categorical.any() and kind not in ("lhs", "sobol"):
        # a categorical factor has two levels only: its axial rows take their sign, its middle rows run at both
        rows = []
        for row in base:
            row = np.where(categorical, np.sign(row), row)
            rows.extend(np.where(categorical & (row == 0), level, row) for level in (-1.0, 1.0))
        base = np.unique(np.array(rows), axis=0)
    types = point_types(kind, base, categorical)
    std = np.arange(len(base))
    coded = np.tile(base, (replicates, 1))
    std_order = np.tile(std, replicates) + 1
    types = types * replicates
    if centre_points:
        centre = np.zeros((centre_points, k))
        if categorical.any():  # centre runs alternate the categorical levels
            centre[:, categorical] = np.where(np.arange(centre_points) % 2 == 0, -1.0, 1.0)[:, None]
        coded = np.vstack([coded, centre])
        std_order = np.concatenate([std_order, len(base) + 1 + np.arange(centre_points)])
        types = types + ["centre"] * centre_points
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(coded)) if randomise else np.arange(len(coded))
    seeds = rng.choice(2**31 - 1, size=len(coded), replace=False)
    return RunSheet(study, kind, coded[order], std_order[order], [types[i] for i in order], seeds)


def read_sheet(study: Study, path: str | Path) -> RunSheet:
    """A run sheet as `propose` wrote it (a lab may have edited the settings it actually ran)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError:
        raise StudyError(f"{path}: not a text (UTF-8) CSV; a run sheet is the CSV `biopilot design propose` "
                         "writes") from None
    if not rows:
        raise StudyError(f"{path}: the run sheet has no runs")
    missing = [c for c in (*SHEET_FIXED, *(f.name for f in study.factors)) if c not in rows[0]]
    if missing:
        raise StudyError(f"{path}: missing column(s) {', '.join(missing)} (write it with `biopilot design propose`)")
    coded = np.zeros((len(rows), len(study.factors)))
    for i, row in enumerate(rows):
        for j, factor in enumerate(study.factors):
            value = row[factor.name]
            if value is None:  # csv.DictReader's filler for a row shorter than the header
                raise StudyError(f"{path}: row {i + 1}: no {factor.name} (the row has fewer cells than the header)")
            if factor.categorical and value not in factor.levels:
                raise StudyError(f"{path}: row {i + 1}: {factor.name} must be one of {', '.join(factor.levels)}, "
                                 f"got {value!r}")
            try:
                coded[i, j] = factor.encode(value)
            except ValueError:
                raise StudyError(f"{path}: row {i + 1}: {factor.name} must be a number, got {value!r}") from None
            if not np.isfinite(coded[i, j]):  # NaN or inf: the fit's linear algebra would raise on it
                raise StudyError(f"{path}: row {i + 1}: {factor.name} must be a finite number, got {value!r}")
    try:
        seeds = [int(r["seed"]) for r in rows]
        std_order = np.array([int(r["std_order"]) for r in rows])
    except (ValueError, TypeError):  # TypeError: a short row's missing cell (None)
        raise StudyError(f"{path}: seed and std_order must be integers") from None
    bad = next((i for i, seed in enumerate(seeds) if not 0 <= seed <= 2**63 - 1), None)
    if bad is not None:  # the twin's random streams take a seed from 0 (numpy raises on a negative one)
        raise StudyError(f"{path}: row {bad + 1}: seed must be from 0 to 2**63 - 1, got {seeds[bad]}")
    return RunSheet(study, "sheet", coded, std_order, [r["point_type"] for r in rows], np.array(seeds))
