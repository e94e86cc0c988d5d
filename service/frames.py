"""Small DataFrames built from ready column arrays, without pandas' general constructor.

`pd.DataFrame({name: array, ...})` checks and infers every column and costs ~0.1-0.2 ms
however few the rows: more than a one-row request's whole schema check. When each
array already has the dtype that constructor would keep (float64, int64, bool,
datetime64 in a unit pandas keeps, or a pandas extension array such as strings or
categories), `frame_of` hands them to pandas as blocks directly: the same frame, in
a fraction of the time. Anything else (object arrays, whose type pandas infers) gets
None, and the caller uses the constructor.
"""

import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.extensions import ExtensionArray
from pandas.api.internals import create_dataframe_from_blocks
from pandas.arrays import ArrowStringArray, NumpyExtensionArray

KEPT_DTYPES = frozenset(
    np.dtype(name)
    for name in (
        "float64",
        "int64",
        "bool",
        "datetime64[s]",
        "datetime64[ms]",
        "datetime64[us]",
        "datetime64[ns]",
    )
)
# What pandas makes of a column of Python strings (its `str` dtype, or object when the
# string inference option is off): the decoder's strings take this dtype.
STRING_DTYPE = pd.Series(["text"]).dtype
STRINGS_INFERRED = np.dtype(object) != STRING_DTYPE
_ARROW_STRINGS = STRINGS_INFERRED and getattr(STRING_DTYPE, "storage", None) == "pyarrow"


def frame_of(columns: pd.Index, arrays: Sequence[Any], index: pd.Index) -> pd.DataFrame | None:
    """`pd.DataFrame(dict(zip(columns, arrays)), index=index, copy=False)`, or None when an
    array is not one the constructor keeps as it is."""
    rows = len(index)
    blocks = []
    for array, placement in zip(arrays, _placements(len(columns)), strict=True):
        if len(array) != rows:
            return None
        if isinstance(array, np.ndarray):
            if array.ndim != 1 or array.dtype not in KEPT_DTYPES:
                return None
            blocks.append((array.reshape(1, rows), placement))
        elif isinstance(array, ExtensionArray) and not isinstance(array, NumpyExtensionArray):
            blocks.append((array, placement))
        else:
            return None
    return create_dataframe_from_blocks(blocks, index=index, columns=columns)


def frame_of_values(
    columns: pd.Index, values: Sequence[Sequence[Any]], dtypes: Sequence[np.dtype | None]
) -> pd.DataFrame:
    """The frame of a few decoded rows: each column's Python values and the numpy dtype
    they take (None: strings). As pandas' constructor does, the columns of one dtype
    share one block, built in one call: a frame of one block per column costs ~20 us
    more to turn into a matrix on every request."""
    groups: dict[np.dtype, list[int]] = {}
    blocks = []
    for position, dtype in enumerate(dtypes):
        if dtype is None:
            blocks.append((strings(values[position]), _placements(len(columns))[position]))
        else:
            groups.setdefault(dtype, []).append(position)
    for dtype, positions in groups.items():
        stacked = np.array([values[position] for position in positions], dtype=dtype)
        blocks.append((stacked, np.array(positions, dtype=np.intp)))
    index = pd.RangeIndex(len(values[0]) if values else 0)
    return create_dataframe_from_blocks(blocks, index=index, columns=columns)


def strings(values: Sequence[str]) -> ExtensionArray:
    """Python strings as the array pandas' constructor makes of them (its string dtype);
    through pyarrow directly when that is its storage: half the time of `pd.array`."""
    if _ARROW_STRINGS:
        with contextlib.suppress(pa.ArrowException, UnicodeError):
            return ArrowStringArray(pa.array(values, type=pa.large_string()), dtype=STRING_DTYPE)
    return pd.array(values, dtype=STRING_DTYPE)


@functools.lru_cache(maxsize=64)
def _placements(width: int) -> tuple[np.ndarray, ...]:
    return tuple(np.array([position], dtype=np.intp) for position in range(width))


SHARED_INDEXES = 256
_SHARED: dict[tuple[str, ...], pd.Index] = {}
_LABELS: dict[int, tuple[pd.Index, tuple[Any, ...]]] = {}


def column_index(columns: tuple[str, ...]) -> pd.Index:
    """Indexes are immutable: one per column list is shared by every frame that uses it
    (the last SHARED_INDEXES lists; past that, the next ones start afresh)."""
    index = _SHARED.get(columns)
    if index is None:
        if len(_SHARED) >= SHARED_INDEXES:
            _SHARED.clear()
            _LABELS.clear()
        index = pd.Index(columns)
        _SHARED[columns] = index
        _LABELS[id(index)] = (index, columns)
    return index


def is_number_dtype(dtype: object) -> bool:
    """A numpy bool, integer or float dtype (not a pandas extension dtype)."""
    return isinstance(dtype, np.dtype) and dtype.kind in "biuf"


def labels_of(index: pd.Index) -> tuple[Any, ...]:
    """`tuple(index.tolist())`, known at once for an Index `column_index` made (listing
    pandas' text Index costs ~5 us, twice a one-row request)."""
    known = _LABELS.get(id(index))
    if known is not None and known[0] is index:
        return known[1]
    return tuple(index.tolist())
