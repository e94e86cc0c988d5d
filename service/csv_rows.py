"""A few CSV lines of plain numbers, read into the columns Arrow's CSV reader gives them.

Arrow's reader costs about 1 ms per call however small the body: more than the rest of
a one-row request (SageMaker's default content type is CSV). For a small body whose
every field is an unquoted decimal number or empty, the types follow Arrow's inference
rules, which are simple there: a column of integers is int64, one with a decimal point,
an exponent or an empty field is float64 (an empty field is null, NaN in pandas).
Anything else (text, quoted values, booleans, dates, a column with no value at all, ragged
lines, numbers beyond int64) returns None and goes to Arrow, whose rules apply.
"""

import csv
import io
import math
import re
from typing import Any

import numpy as np

SMALL_CSV_BYTES = 16 << 10
SMALL_CSV_ROWS = 64
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_DECIMAL = re.compile(r"-?[0-9]{1,30}(\.[0-9]{1,30}([eE][-+]?[0-9]{1,2})?|[eE][-+]?[0-9]{1,2})")
_INT64, _FLOAT64 = np.dtype(np.int64), np.dtype(np.float64)


class Columns:
    """What `read` found: the header's names (or None), each column's values and dtype."""

    __slots__ = ("dtypes", "names", "values")

    def __init__(
        self, names: list[str] | None, values: list[list[Any]], dtypes: list[np.dtype]
    ) -> None:
        self.names, self.values, self.dtypes = names, values, dtypes


def read(body: bytes, header: bool) -> Columns | None:
    """The body's columns, when it is small and every field is a plain number or empty."""
    if len(body) > SMALL_CSV_BYTES or b'"' in _data_lines(body, header):
        return None
    try:
        text = body.decode("utf-8")
        lines = [line for line in csv.reader(io.StringIO(text)) if line]
    except (UnicodeDecodeError, csv.Error):
        return None
    if text.startswith("\ufeff"):
        return None
    names = lines.pop(0) if header and lines else None
    if not lines or len(lines) > SMALL_CSV_ROWS or not _names_ok(names, len(lines[0])):
        return None
    if any(len(line) != len(lines[0]) for line in lines):
        return None
    values, dtypes = [], []
    for fields in zip(*lines, strict=True):
        column = _column(fields)
        if column is None:
            return None
        values.append(column[0])
        dtypes.append(column[1])
    return Columns(names, values, dtypes)


def _data_lines(body: bytes, header: bool) -> bytes:
    """What follows the header: quoted names are plain names, quoted values are not."""
    if not header:
        return body
    first, _, rest = body.partition(b"\n")
    return rest if first.count(b'"') % 2 == 0 else body


def _names_ok(names: list[str] | None, width: int) -> bool:
    if names is None:
        return True
    return len(names) == width and all(names) and len(set(names)) == width


def _column(fields: tuple[str, ...]) -> tuple[list[Any], np.dtype] | None:
    if all(map(_INTEGER.fullmatch, fields)):
        return [int(field) for field in fields], _INT64
    if not all(_is_number_or_empty(field) for field in fields):
        return None
    if not any(fields):
        return None  # Arrow's null type, which pandas makes an object column
    return [float(field) if field else math.nan for field in fields], _FLOAT64


def _is_number_or_empty(field: str) -> bool:
    return field == "" or bool(_INTEGER.fullmatch(field) or _DECIMAL.fullmatch(field))
