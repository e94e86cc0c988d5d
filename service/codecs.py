"""Request and response codecs keyed by media type: bytes <-> DataFrame.

Decoders turn bytes into a DataFrame and raise MalformedBody (the bytes are not
what the type promises) or UnsupportedMediaType; nothing else escapes them.
"""

import functools
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from service.errors import MalformedBody, NotAcceptable, UnsupportedMediaType

PARQUET = "application/vnd.apache.parquet"
X_PARQUET = "application/x-parquet"
CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NDJSON = "application/x-ndjson"

ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)
JSON_SHAPES_HELP = (
    'send {"dataframe_split": {"columns": [...], "data": [[...]]}}, '
    '{"dataframe_records": [{...}]}, {"instances": [{...}]}, {"inputs": [{...}]} '
    "or a list of records [{...}]"
)


# -- decoding ---------------------------------------------------------------------------


def _arrow_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in text[:300])


PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"


def _is_parquet(head: bytes, tail: bytes) -> bool:
    return head.startswith(PARQUET_MAGIC) and tail.endswith(PARQUET_MAGIC)


def _refuse_binary(body: bytes, kind: str) -> None:
    """Parquet or gzip bytes sent as text: name what they are instead of a parse error."""
    head = body[:4]
    if _is_parquet(head, body[-4:]):
        raise MalformedBody(f"the body is a parquet file, not {kind}: send it as {PARQUET}")
    if head.startswith(GZIP_MAGIC):
        raise MalformedBody(f"the body is gzip-compressed: send the {kind} uncompressed")


def _frame(data: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """pandas' metadata in a parquet file only restores an index and dtypes: when it is
    damaged, read the columns without it."""
    try:
        return data.to_pandas()
    except (KeyError, TypeError, IndexError, ValueError):
        return data.to_pandas(ignore_metadata=True)


def decode_parquet(body: bytes) -> pd.DataFrame:
    try:
        return _frame(pq.read_table(pa.BufferReader(body)))
    except ARROW_ERRORS as exc:
        raise MalformedBody(
            f"the data is not a readable parquet file ({_arrow_reason(exc)})"
        ) from None


def decode_csv(body: bytes) -> pd.DataFrame:
    _refuse_binary(body, "CSV")
    try:
        table = pacsv.read_csv(pa.BufferReader(body))
    except ARROW_ERRORS as exc:
        raise MalformedBody(_csv_problem(exc)) from None
    return _csv_frame(table)


def _csv_frame(data: pa.Table | pa.RecordBatch) -> pd.DataFrame:
    """Arrow reads CSV text that is not UTF-8 as bytes (or fails on the header's
    names); we refuse it with a message instead."""
    try:
        for field in data.schema:
            if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
                raise MalformedBody(
                    f"column {field.name!r} is not UTF-8 text: save the CSV as UTF-8"
                )
        return data.to_pandas()
    except UnicodeDecodeError:
        raise MalformedBody("the CSV header is not UTF-8 text: save the CSV as UTF-8") from None


def _csv_problem(exc: BaseException, names: list[str] | None = None, block: int = 0) -> str:
    reason = _arrow_reason(exc)
    if "straddl" in reason:
        return _row_too_long(block)
    if "utf8" in reason.lower().replace("-", ""):
        return f"the CSV is not UTF-8 text ({reason}): save it as UTF-8"
    match = re.search(r"CSV column #(\d+)", reason)
    if match and names and int(match.group(1)) < len(names):
        reason = f"column {names[int(match.group(1))]!r}: {reason}"
    return f"the data is not readable CSV with a header row ({reason})"


def decode_json(body: bytes) -> pd.DataFrame:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(f"the body is not valid JSON ({exc}): {JSON_SHAPES_HELP}") from None
    return frame_from_json(document)


def frame_from_json(document: Any) -> pd.DataFrame:
    """Accept MLflow's request shapes and a plain list of records."""
    if isinstance(document, list):
        return _records(document, "the JSON list")
    if isinstance(document, dict):
        if "dataframe_split" in document:
            return _split(document["dataframe_split"])
        for key in ("dataframe_records", "instances", "inputs"):
            if key in document:
                return _records_or_columns(document[key], key)
    raise MalformedBody(f"unrecognised JSON shape: {JSON_SHAPES_HELP}")


def _split(value: Any) -> pd.DataFrame:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list):
        raise MalformedBody('dataframe_split needs "columns": [names] and "data": [[row], ...]')
    columns, data = value["columns"], value.get("data")
    if not isinstance(data, list) or not all(isinstance(row, list) for row in data):
        raise MalformedBody('dataframe_split "data" must be a list of rows (lists)')
    if any(len(row) != len(columns) for row in data):
        raise MalformedBody(
            f"every dataframe_split row must have {len(columns)} values, one per column"
        )
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
        raise MalformedBody('dataframe_split "columns" must be distinct strings')
    fast = _small_numeric_frame(columns, data)
    return pd.DataFrame(data, columns=columns) if fast is None else fast


# A few rows of plain numbers (the usual real-time request) skip pandas' general
# constructor, which costs about 0.2 ms per request for 31 columns; beyond this many rows
# the type checks below cost more than they save.
SMALL_FRAME_ROWS = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NONE = type(None)
_NUMBER_TYPES = frozenset({int, float, _NONE})
_ONLY_NONE = frozenset({_NONE})
_ONLY_INT = frozenset({int})


@functools.lru_cache(maxsize=64)
def _column_index(columns: tuple[str, ...]) -> pd.Index:
    """Indexes are immutable: one per column list is shared by every frame that uses it."""
    return pd.Index(columns)


def _small_numeric_frame(columns: list[str], data: list[list[Any]]) -> pd.DataFrame | None:
    """The frame `pd.DataFrame(data, columns=columns)` builds, when every value is an int,
    a float or null and there are few rows; None (use pandas) for anything else.

    pandas makes a column of Python ints int64 and a column of ints, floats and nulls
    float64 (null as NaN); a column of nulls only stays object, and bools, strings,
    ints beyond int64 and the like have their own rules, so those go to pandas.
    """
    if not data or len(data) > SMALL_FRAME_ROWS or not columns:
        return None
    integer_columns = []
    for position, values in enumerate(zip(*data, strict=True)):
        kind = frozenset(map(type, values))
        if not kind <= _NUMBER_TYPES or kind == _ONLY_NONE:
            return None
        if int in kind:
            integers = [value for value in values if type(value) is int]
            if min(integers) < _INT64_MIN or max(integers) > _INT64_MAX:
                return None
            if kind == _ONLY_INT:
                integer_columns.append((position, integers))
    frame = pd.DataFrame(
        np.array(data, dtype=np.float64), columns=_column_index(tuple(columns)), copy=False
    )
    for position, values in integer_columns:
        frame.isetitem(position, np.array(values, dtype=np.int64))
    return frame


def _small_records_frame(records: list[dict[Any, Any]]) -> pd.DataFrame | None:
    """Records that all name the same string keys in the same order are rows of a table:
    the small-frame path above, when it applies."""
    if not records or len(records) > SMALL_FRAME_ROWS:
        return None
    columns = list(records[0])
    if not all(type(c) is str for c in columns):
        return None
    if any(list(record) != columns for record in records[1:]):
        return None
    return _small_numeric_frame(columns, [list(record.values()) for record in records])


def _records_or_columns(value: Any, key: str) -> pd.DataFrame:
    if isinstance(value, dict):
        columns = list(value.values())
        if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) > 1:
            raise MalformedBody(
                f"{key} as an object must map each column to a list of equal length"
            )
        return pd.DataFrame(value)
    return _records(value, key)


def _records(value: Any, where: str) -> pd.DataFrame:
    if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
        raise MalformedBody(
            f"{where} must hold records (objects mapping column names to values): {JSON_SHAPES_HELP}"
        )
    fast = _small_records_frame(value)
    if fast is not None:
        return fast
    return pd.DataFrame.from_records(value) if value else pd.DataFrame()


def _row_too_long(block: int) -> str:
    return (
        f"a row is longer than {block >> 20} MB, the most read at once: keep each row under "
        "that (move very long text out of the file), or raise BATCH_ROWS (the block is "
        "BATCH_ROWS x 256 bytes, at most 64 MB)"
    )


def decode_jsonlines(body: bytes) -> pd.DataFrame:
    _refuse_binary(body, "JSON Lines")
    rows = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"line {number} is not valid JSON ({exc})") from None
        if not isinstance(row, dict):
            raise MalformedBody(f"line {number} must be a JSON object mapping columns to values")
        rows.append(row)
    return pd.DataFrame.from_records(rows) if rows else pd.DataFrame()


# -- encoding ---------------------------------------------------------------------------


def _columns_as_lists(frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    names = [str(c) for c in frame.columns]
    return names, [column.tolist() for _, column in frame.items()]


def _record_list(frame: pd.DataFrame) -> list[dict[str, Any]]:
    names, columns = _columns_as_lists(frame)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def encode_json(frame: pd.DataFrame) -> bytes:
    return orjson.dumps({"predictions": _record_list(frame)}, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_jsonlines(frame: pd.DataFrame) -> bytes:
    dumps = orjson.dumps
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    return b"".join(dumps(row, option=option) for row in _record_list(frame))


def _table(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def encode_csv(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(_table(frame), sink)
    return sink.getvalue()


def encode_parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(_table(frame), sink)
    return sink.getvalue()


@dataclass(frozen=True)
class Codec:
    decode: Callable[[bytes], pd.DataFrame]
    encode: Callable[[pd.DataFrame], bytes]


_PARQUET_CODEC = Codec(decode_parquet, encode_parquet)
_JSONLINES_CODEC = Codec(decode_jsonlines, encode_jsonlines)

# Order matters: the first entry answers `Accept: */*`.
CODECS: dict[str, Codec] = {
    JSON: Codec(decode_json, encode_json),
    PARQUET: _PARQUET_CODEC,
    X_PARQUET: _PARQUET_CODEC,
    CSV: Codec(decode_csv, encode_csv),
    JSONLINES: _JSONLINES_CODEC,
    NDJSON: _JSONLINES_CODEC,
}
MEDIA_TYPES = tuple(CODECS)


def media_type(content_type: str | None) -> str:
    """`text/csv; charset=utf-8` -> `text/csv`."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(body: bytes, content_type: str | None) -> pd.DataFrame:
    """Decode a request body by its Content-Type."""
    kind = media_type(content_type)
    codec = CODECS.get(kind)
    if codec is None:
        given = (
            f"Content-Type {content_type!r} is not supported" if kind else "no Content-Type given"
        )
        raise UnsupportedMediaType(f"{given}: use one of {', '.join(MEDIA_TYPES)}")
    if not body:
        raise MalformedBody(f"the request body is empty: send rows as {kind}")
    return codec.decode(body)


@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None) -> str:
    """The media type to answer with for this Accept header (JSON when it allows anything)."""
    if not accept or not accept.strip():
        return JSON
    best = parse_accept_header(accept, MIMEAccept).best_match(MEDIA_TYPES)
    if best is None:
        raise NotAcceptable(
            f"cannot answer with {accept!r}: accept one of {', '.join(MEDIA_TYPES)}"
        )
    return best


def encode(frame: pd.DataFrame, media: str) -> bytes:
    return CODECS[media].encode(frame)
