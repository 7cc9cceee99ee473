"""What a cohort table's columns are, read from the data: numbers, categories (text or true/false) and ids.

A CSV arrives as text (the reader keeps every cell as text, empty = missing), so a text column whose values all
parse as numbers is numeric; one where most do and some do not is junk and refused, as is free text (many
distinct values that are not one per row). A text column with one distinct value per row is an id (`patient_id`):
it is not learned, the synthetic rows get new ids.

>>> import pyarrow as pa
>>> t = pa.table({"patient_id": [f"p{i}" for i in range(20)], "age_years": ["61", "", "70.5", "58"] * 5,
...               "sex": ["M", "F", None, "F"] * 5})
>>> spec = infer_spec(t)
>>> [(c.name, c.kind) for c in spec]
[('patient_id', 'id'), ('age_years', 'numeric'), ('sex', 'categorical')]
>>> to_frame(t, spec)["age_years"].tolist()[:4]
[61.0, nan, 70.5, 58.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

Kind = Literal["numeric", "categorical", "id"]
MIN_ROWS = 20  # fewer real rows than this cannot show a distribution, let alone hold some out
# free text: more distinct values than this share of the rows (and more than MAX_CATEGORIES), not one per row
MAX_CATEGORIES = 50
FREE_TEXT_SHARE = 0.5


class CohortInputError(ValueError):
    """A table the generator cannot learn from; the message is the one line the user needs."""


@dataclass(frozen=True)
class ColumnSpec:
    """One column: its kind, the Arrow type to write it back as, and for numbers the decimals to round to
    (0 for whole numbers, so ages stay whole if they came whole)."""

    name: str
    kind: Kind
    arrow_type: pa.DataType
    decimals: int | None = None


def _number_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _decimals(values: np.ndarray) -> int:
    """The fewest decimals (up to 6) that reproduce every finite value: 0 for whole numbers."""
    finite = values[np.isfinite(values)]
    for d in range(7):
        if np.allclose(np.round(finite, d), finite, rtol=0, atol=1e-9):
            return d
    return 6


def _text_column(name: str, col: pa.ChunkedArray, n_rows: int) -> ColumnSpec:
    values = [v.strip() for v in col.to_pylist() if v is not None and v.strip()]
    if not values:
        raise CohortInputError(f"column {name} is empty in every row: drop it")
    numbers = [_number_or_none(v) for v in values]
    junk = [v for v, x in zip(values, numbers, strict=True) if x is None]
    if not junk:
        return ColumnSpec(name, "numeric", pa.float64(), _decimals(np.array(numbers, float)))
    if len(junk) < len(values) / 2:
        raise CohortInputError(f"column {name} mixes numbers and text ({len(junk)} of {len(values)} cells are "
                               f"not numbers, e.g. {junk[0]!r}): fix or drop it")
    distinct = len(set(values))
    if distinct == n_rows:
        return ColumnSpec(name, "id", pa.string())
    if distinct > MAX_CATEGORIES and distinct > FREE_TEXT_SHARE * len(values):
        raise CohortInputError(f"column {name} looks like free text ({distinct} distinct values in {len(values)} "
                               "cells): drop it or group it into categories")
    return ColumnSpec(name, "categorical", pa.string())


def infer_spec(table: pa.Table) -> list[ColumnSpec]:
    """Each column's kind, from its Arrow type and, for text, its values. Raises CohortInputError."""
    if table.num_columns == 0 or table.num_rows == 0:
        raise CohortInputError("the table has no rows" if table.num_columns else "the table has no columns")
    if table.num_rows < MIN_ROWS:
        raise CohortInputError(f"the table has {table.num_rows} rows; at least {MIN_ROWS} are needed")
    spec = []
    for name in table.column_names:
        col, kind = table[name], table[name].type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            spec.append(_text_column(name, col, table.num_rows))
        elif pa.types.is_boolean(kind) or pa.types.is_dictionary(kind):
            spec.append(ColumnSpec(name, "categorical", kind))
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            values = col.to_numpy(zero_copy_only=False).astype(float)
            if not np.isfinite(values).any():
                raise CohortInputError(f"column {name} is empty in every row: drop it")
            spec.append(ColumnSpec(name, "numeric", kind, _decimals(values)))
        else:
            raise CohortInputError(f"column {name} has type {kind}, which the generator does not learn "
                                   "(numbers, text and true/false only): drop or convert it")
    if all(c.kind == "id" for c in spec):
        raise CohortInputError("every column is an id (one distinct value per row): nothing to learn")
    return spec


def to_frame(table: pa.Table, spec: list[ColumnSpec]) -> pd.DataFrame:
    """The table as pandas: numbers as float (missing = NaN), categories and ids as text (missing = None)."""
    cols = {}
    for c in spec:
        col = table[c.name]
        if c.kind == "numeric":
            if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
                text = pc.utf8_trim_whitespace(col)
                col = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
            try:
                cols[c.name] = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:  # a synthetic table read in the real types
                raise CohortInputError(f"column {c.name} is a number in the real table, but: "
                                       f"{str(err).splitlines()[0]}") from None
        else:
            cols[c.name] = pd.Series([None if v is None else str(v).strip() or None for v in col.to_pylist()],
                                     dtype=object)
    return pd.DataFrame(cols)


def rounded(frame: pd.DataFrame, spec: list[ColumnSpec]) -> pd.DataFrame:
    """Numbers rounded to the decimals the input had (what is written is what the gate judged)."""
    out = frame.copy()
    for c in spec:
        if c.kind == "numeric" and c.name in out:
            out[c.name] = np.round(out[c.name].to_numpy(float), c.decimals if c.decimals is not None else 6)
    return out


def to_arrow(frame: pd.DataFrame, spec: list[ColumnSpec]) -> pa.Table:
    """Back to Arrow in the input's types: numbers rounded to the input's decimals, true/false as booleans."""
    frame = rounded(frame, spec)
    arrays = []
    for c in spec:
        values = frame[c.name]
        if c.kind == "numeric":
            x = values.to_numpy(float)
            arrays.append(pa.array(x, mask=np.isnan(x)).cast(c.arrow_type))
        elif pa.types.is_boolean(c.arrow_type):
            arrays.append(pa.array([None if v is None else v == "True" for v in values], pa.bool_()))
        else:
            arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()).cast(c.arrow_type))
    return pa.Table.from_arrays(arrays, names=[c.name for c in spec])


def sdmetrics_metadata(spec: list[ColumnSpec]) -> dict:
    """SDMetrics' single-table metadata; ids are left out of every metric."""
    sdtype = {"numeric": "numerical", "categorical": "categorical", "id": "id"}
    return {"columns": {c.name: {"sdtype": sdtype[c.kind]} for c in spec}}
