"""Rows as token sequences, and back: what the autoregressive generator reads and writes.

Each learned column becomes one position of the sequence, in table order:
- a category: 0 = missing, then the categories seen;
- a number: 0 = missing, then its point masses (values that a share of the rows hold exactly, such as a clip at
  a range's end or whole-number ages), then `BINS` quantile bins of the other values. The value within a bin is
  drawn from the bin's own quantile function (`WITHIN_BIN_QUANTILES` of its real values, linearly interpolated),
  so the shape inside a bin is kept while no value is copied from a real row unless it is a point mass.

One position a column, not a second token for the value within the bin: attention costs grow with the square of
the sequence, and a second token per number doubled the patients table's sequence for a within-bin detail the
quantile function keeps as well.

Each token of a number also has a normal score (`ColumnCode.scores`: the standard normal quantile of the token's
mid-rank among the training values; 0 for missing tokens and categories). The generator reads it beside the
token's embedding and can shape a column's logits as a discretised normal over it, so that "bin 17 of weight" is
near "bin 18" from the start instead of two unrelated symbols: learning from a few thousand rows that one column
follows another (weight and warfarin Q, systolic and diastolic pressure) is then a matter of a slope, not of a
32 x 32 table.

>>> import pandas as pd
>>> frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, float("nan")] * 10, "c": ["a", "b", None, "a"] * 10})
>>> codec = TableCodec.fit(frame, numeric_columns=["x"])
>>> codec.vocab_sizes
[4, 3]
>>> codec.columns[0].scores.round(2).tolist()  # missing, then 1, 2 and 3 by their mid-ranks
[0.0, -0.97, 0.0, 0.97]
>>> tokens = codec.encode(frame)
>>> back = codec.decode(tokens, np.random.default_rng(0))
>>> back["c"].tolist()[:4], back["x"].isna().sum()
(['a', 'b', None, 'a'], np.int64(10))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import ndtri

BINS = 32
WITHIN_BIN_QUANTILES = 9
ATOM_SHARE = 0.02  # a value held by at least this share of the rows (and by 2) is a point mass


@dataclass(frozen=True)
class ColumnCode:
    """One column's tokens. Numbers: `atoms` (point masses), `edges` (bins between consecutive edges) and each
    bin's quantile function (`within` [bins, WITHIN_BIN_QUANTILES])."""

    name: str
    numeric: bool
    categories: tuple[str, ...] = ()
    atoms: np.ndarray | None = None
    edges: np.ndarray | None = None
    within: np.ndarray | None = None
    has_missing: bool = False
    scores: np.ndarray | None = None  # [size] each token's normal score (numbers only)

    @property
    def n_bins(self) -> int:
        return 0 if self.edges is None else len(self.edges) - 1

    @property
    def size(self) -> int:
        """Tokens: missing + categories, or missing + atoms + bins."""
        if not self.numeric:
            return 1 + len(self.categories)
        return 1 + len(self.atoms) + self.n_bins

    @classmethod
    def fit(cls, name: str, values: pd.Series, numeric: bool) -> ColumnCode:
        if not numeric:
            return cls(name, False, tuple(sorted({str(v) for v in values if v is not None})),
                       has_missing=bool(values.isna().any()))
        x = values.to_numpy(float)
        has_missing = bool(np.isnan(x).any())
        x = x[np.isfinite(x)]
        distinct, counts = np.unique(x, return_counts=True)
        is_atom = counts >= max(2.0, ATOM_SHARE * len(values))
        rest = x[~np.isin(x, distinct[is_atom])]
        if len(np.unique(rest)) < 2:  # what is left cannot span a bin: it is a point mass too
            atoms = np.unique(x)
            return cls(name, True, atoms=atoms, has_missing=has_missing, scores=_normal_scores(x, atoms))
        edges = np.unique(np.quantile(rest, np.linspace(0.0, 1.0, BINS + 1)))
        b = np.clip(np.searchsorted(edges, rest, side="right") - 1, 0, len(edges) - 2)
        levels = np.linspace(0.0, 1.0, WITHIN_BIN_QUANTILES)
        within = np.array([np.quantile(rest[b == i], levels) if (b == i).any() else np.linspace(lo, hi, len(levels))
                           for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))])
        atoms = distinct[is_atom]
        middles = within[:, WITHIN_BIN_QUANTILES // 2]  # each bin's median stands for the bin
        return cls(name, True, atoms=atoms, edges=edges, within=within, has_missing=has_missing,
                   scores=_normal_scores(x, np.r_[atoms, middles]))

    def encode(self, values: pd.Series) -> np.ndarray:
        if not self.numeric:
            index = {c: i + 1 for i, c in enumerate(self.categories)}
            return np.array([index.get(v, 0) if v is not None else 0 for v in values], np.int64)
        x = values.to_numpy(float)
        coarse = np.zeros(len(x), np.int64)
        finite = np.isfinite(x)
        atom = np.zeros(len(x), bool)
        if len(self.atoms):
            where = np.clip(np.searchsorted(self.atoms, x), 0, len(self.atoms) - 1)
            atom = finite & np.isclose(self.atoms[where], x, rtol=0, atol=1e-9)
            coarse[atom] = 1 + where[atom]
        binned = finite & ~atom
        if self.n_bins and binned.any():
            b = np.clip(np.searchsorted(self.edges, x[binned], side="right") - 1, 0, self.n_bins - 1)
            coarse[binned] = 1 + len(self.atoms) + b
        return coarse

    def decode(self, coarse: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if not self.numeric:
            labels = np.array([None, *self.categories], dtype=object)
            return labels[coarse]
        out = np.full(len(coarse), np.nan)
        atom = (coarse >= 1) & (coarse <= len(self.atoms))
        out[atom] = self.atoms[coarse[atom] - 1]
        binned = coarse > len(self.atoms)
        if not binned.any():
            return out
        b = coarse[binned] - 1 - len(self.atoms)
        # the bin's quantile function at a uniform level, interpolated between its stored quantiles
        at = rng.random(len(b)) * (WITHIN_BIN_QUANTILES - 1)
        step = np.minimum(at.astype(np.int64), WITHIN_BIN_QUANTILES - 2)
        lo, hi = self.within[b, step], self.within[b, step + 1]
        out[binned] = lo + (hi - lo) * (at - step)
        return out


def _normal_scores(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[1 + len(values)]: 0 for the missing token, then the normal quantile of each value's mid-rank in `x`."""
    below = np.searchsorted(np.sort(x), values, side="left")
    at_or_below = np.searchsorted(np.sort(x), values, side="right")
    mid_rank = (below + at_or_below) / 2 / max(len(x), 1)
    edge = 0.5 / max(len(x), 1)
    return np.r_[0.0, ndtri(np.clip(mid_rank, edge, 1 - edge))]


@dataclass(frozen=True)
class TableCodec:
    """The learned columns, in order: one position of the token sequence each."""

    columns: tuple[ColumnCode, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, numeric_columns: list[str]) -> TableCodec:
        """Every column of `frame` (ids already left out); `numeric_columns` name the numbers."""
        return cls(tuple(ColumnCode.fit(name, frame[name], name in numeric_columns) for name in frame.columns))

    @property
    def vocab_sizes(self) -> list[int]:
        return [c.size for c in self.columns]

    def impossible(self, widest: int) -> np.ndarray:
        """[columns, widest] logit bias: minus infinity on the missing token of columns never missing in the
        training rows (the model gives it a small chance, not none)."""
        bias = np.zeros((len(self.columns), widest))
        bias[[i for i, c in enumerate(self.columns) if not c.has_missing], 0] = -np.inf
        return bias

    def token_scores(self, widest: int) -> np.ndarray:
        """[columns, widest] each token's normal score (0 for categories, missing tokens and past a vocabulary)."""
        out = np.zeros((len(self.columns), widest))
        for i, c in enumerate(self.columns):
            if c.scores is not None:
                out[i, :c.size] = c.scores
        return out

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """[rows, columns] int64 tokens."""
        return np.stack([c.encode(frame[c.name]) for c in self.columns], axis=1)

    def decode(self, tokens: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
        return pd.DataFrame({c.name: c.decode(tokens[:, i], rng) for i, c in enumerate(self.columns)})
