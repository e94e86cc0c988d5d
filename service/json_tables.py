"""A large JSON table of numbers as pandas' constructor makes it, in one numpy call.

`pd.DataFrame(rows, columns=names)` infers each column's type value by value (about 1.2 ms
for 1,000 rows of 31 columns). When every value is an int, a float or null, numpy converts
the whole table to float64 in one call (null as NaN, as pandas does); a column whose values
are all ints is int64, as in pandas, with each int exact. numpy would also take
strings and booleans as numbers, where pandas would not, so the body's bytes must show
none (`holds_only_numbers`); ints beyond 2**63, and columns of nulls only, which pandas
keeps as objects, go to pandas too.
"""

from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
import pandas as pd
from pandas.api.internals import create_dataframe_from_blocks

# A string has quotes, "true" an r, "false" an s; a number, null, NaN or Infinity has none
_MARKS = (ord('"'), ord("r"), ord("s"))
_BACKSLASH = ord("\\")
_ONLY_INT = frozenset({int})
_INT64_BOUND = 2.0**63
_FLOAT_EXACT = 2.0**53


def holds_only_numbers(body: bytes, skeleton: Any) -> bool:
    """Whether the body holds no string, true or false outside `skeleton`, the parsed
    document without its rows: it has as many quotes, r and s bytes as the skeleton
    written by orjson. A body with escapes (a backslash) is not compared."""
    view = np.frombuffer(body, np.uint8)
    if np.count_nonzero(view == _BACKSLASH):
        return False
    try:
        written = np.frombuffer(orjson.dumps(skeleton), np.uint8)
    except orjson.JSONEncodeError:
        return False
    return all(
        np.count_nonzero(view == mark) == np.count_nonzero(written == mark) for mark in _MARKS
    )


def numeric_table(columns: pd.Index, rows: list[list[Any]]) -> pd.DataFrame | None:
    """The frame `pd.DataFrame(rows, columns=columns)` builds from rows of ints, floats and
    nulls (see the module docstring); None when numpy cannot make them one float64 table
    or pandas would keep a column as objects. Every row holds len(columns) values (the
    caller checked)."""
    table = _float_table(rows, len(columns))
    if table is None:
        return None
    if (np.abs(table) >= _INT64_BOUND).any() or np.isnan(table).all(axis=0).any():
        return None
    first = rows[0]
    integers = [
        position
        for position, value in enumerate(first)
        if type(value) is int and frozenset(map(type, map(itemgetter(position), rows))) == _ONLY_INT
    ]
    blocks = []
    if len(integers) < len(columns):
        floats = [position for position in range(len(columns)) if position not in integers]
        blocks.append((table.T[floats], np.array(floats, dtype=np.intp)))
    if integers:
        blocks.append((_int_block(table, rows, integers), np.array(integers, dtype=np.intp)))
    return create_dataframe_from_blocks(blocks, index=pd.RangeIndex(len(rows)), columns=columns)


def _float_table(rows: list[list[Any]], width: int) -> np.ndarray | None:
    """The rows as one float64 matrix: numpy reads a flat run of numbers faster than nested
    lists, and only the nested read turns null into NaN."""
    try:
        try:
            flat = np.fromiter(chain.from_iterable(rows), np.float64, count=len(rows) * width)
        except TypeError:  # a null (or something numpy rejects either way)
            return np.array(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    return flat.reshape(len(rows), width)


def _int_block(table: np.ndarray, rows: list[list[Any]], integers: list[int]) -> np.ndarray:
    """The int columns as int64 rows of a block: from the float table while every value is
    below 2**53 (where a float holds an int exactly), else from the ints themselves."""
    part = table[:, integers]
    if (np.abs(part) < _FLOAT_EXACT).all():
        return part.T.astype(np.int64)
    return np.array([list(map(itemgetter(position), rows)) for position in integers], np.int64)
