"""Request and response codecs keyed by media type: bytes <-> DataFrame.

Decoders turn bytes into a DataFrame and raise MalformedBody (the bytes are not
what the type promises) or UnsupportedMediaType; nothing else escapes them.
"""

import csv
import functools
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from service import csv_rows
from service.errors import (
    InvalidData,
    MalformedBody,
    NotAcceptable,
    ServiceError,
    UnsupportedMediaType,
)
from service.frames import (
    STRINGS_INFERRED,
    column_index,
    frame_of_values,
    is_number_dtype,
    labels_of,
)
from service.json_tables import holds_only_numbers, numeric_table
from service.media import (
    CSV,
    JSON,
    JSONLINES,
    MEDIA_TYPES,
    NDJSON,
    PARQUET,
    X_PARQUET,
    media_type,
)

ARROW_ERRORS = (pa.ArrowException, OSError, ValueError)
JSON_SHAPES_HELP = (
    'send {"dataframe_split": {"columns": [...], "data": [[...]]}}, '
    '{"dataframe_records": [{...}]}, {"instances": [...]}, {"inputs": [...]}, '
    "a list of records [{...}], a list of rows [[...]] or one record {...}"
)
FORMAT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class Layout(NamedTuple):
    """A bundle's column names, which positional input (rows without names) follows."""

    features: tuple[str, ...]
    id_column: str

    def names(self, width: int, where: str = "a row") -> tuple[list[str], bool]:
        """Names for `width` values in the bundle's input order, and whether an id leads."""
        count = len(self.features)
        if width == count:
            return list(self.features), False
        if width == count + 1:
            return [self.id_column, *self.features], True
        raise InvalidData(
            f"{where} holds {width} values: send {count} (the features in the bundle's input "
            f"order: {_listed(self.features)}) or {count + 1} ({self.id_column!r} first)"
        )

    def known(self, names: Any) -> bool:
        """True when `names` holds one of the bundle's columns (the id or a feature)."""
        return any(name == self.id_column or name in self.features for name in names)

    def name(self, frame: pd.DataFrame, where: str) -> "Decoded":
        """Positional columns named; rows without an id get their position as id (the
        answer then leaves it out)."""
        names, ids = self.names(frame.shape[1], where)
        frame.columns = column_index(tuple(names))
        if not ids:
            frame.insert(0, self.id_column, np.arange(len(frame)))
        return Decoded(frame, header=False, ids=ids)


def _listed(names: tuple[str, ...], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


class Decoded(NamedTuple):
    """A request's rows, and how the answer mirrors them.

    `header` is False for positional input (headerless CSV, JSON arrays): a CSV answer
    then has no header line either. `ids` is False when positional rows carry no id:
    the answer then leaves the id column out rather than invent one.
    """

    frame: pd.DataFrame
    header: bool = True
    ids: bool = True


# -- decoding ---------------------------------------------------------------------------


def _arrow_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return "".join(c if c.isprintable() else "?" for c in text[:300])


PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
THREADED_PARQUET_BYTES = 8 << 20  # smaller parquet bodies are read on one thread


def _is_parquet(head: bytes, tail: bytes) -> bool:
    return head.startswith(PARQUET_MAGIC) and tail.endswith(PARQUET_MAGIC)


def _refuse_binary(body: bytes, kind: str) -> None:
    """Parquet or gzip bytes sent as text: name what they are instead of a parse error."""
    head = body[:4]
    if _is_parquet(head, body[-4:]):
        raise MalformedBody(f"the body is a parquet file, not {kind}: send it as {PARQUET}")
    if head.startswith(GZIP_MAGIC):
        raise MalformedBody(f"the body is gzip-compressed: send the {kind} uncompressed")


def _frame(data: pa.Table | pa.RecordBatch, threads: bool = True) -> pd.DataFrame:
    """pandas' metadata in a parquet file only restores an index and dtypes: when it is
    damaged, read the columns without it."""
    try:
        return data.to_pandas(use_threads=threads)
    except (KeyError, TypeError, IndexError, ValueError):
        return data.to_pandas(ignore_metadata=True, use_threads=threads)


def decode_parquet(body: bytes) -> pd.DataFrame:
    """`ParquetFile.read`, not `pq.read_table`: for a body in memory the latter goes through
    the dataset layer, which costs more than reading a 1,000-row request. Arrow's threads
    only for big bodies: on a small one, handing the columns to the pool costs more than
    it saves, and the server's other requests want the cores."""
    try:
        threads = len(body) >= THREADED_PARQUET_BYTES
        return _frame(pq.ParquetFile(pa.BufferReader(body)).read(use_threads=threads), threads)
    except ARROW_ERRORS as exc:
        raise MalformedBody(
            f"the data is not a readable parquet file ({_arrow_reason(exc)})"
        ) from None


def decode_csv(body: bytes, layout: Layout | None = None) -> Decoded:
    """A CSV body; its first line is a header when it names one of the bundle's columns
    (without a layout, always), otherwise every line is a row of positional values."""
    _refuse_binary(body, "CSV")
    header = layout is None or _names_a_column(body, layout)
    small = csv_rows.read(body, header)
    frame = _arrow_csv_frame(body, header) if small is None else _small_csv_frame(small)
    if header:
        return Decoded(frame)
    assert layout is not None
    return layout.name(frame, "each CSV line")


def _small_csv_frame(small: csv_rows.Columns) -> pd.DataFrame:
    names = small.names or [f"f{i}" for i in range(len(small.values))]  # as Arrow names them
    return frame_of_values(column_index(tuple(names)), small.values, small.dtypes)


def _arrow_csv_frame(body: bytes, header: bool) -> pd.DataFrame:
    if not header and not body.endswith(b"\n"):
        body += b"\n"  # Arrow finds no columns in one headerless line without an end
    options = pacsv.ReadOptions(autogenerate_column_names=not header)
    try:
        table = pacsv.read_csv(pa.BufferReader(body), read_options=options)
    except ARROW_ERRORS as exc:
        raise csv_error(exc) from None
    return _csv_frame(table)


def _names_a_column(body: bytes, layout: Layout) -> bool:
    """True when the first line holds one of the bundle's column names (id or feature)."""
    lines = body[: 1 << 20].splitlines()
    first = lines[0].decode("utf-8", "replace").lstrip("\ufeff") if lines else ""
    try:
        fields = next(csv.reader([first]), [])
    except csv.Error:  # a stray quote or NUL: the names, if any, are still comma-separated
        fields = first.split(",")
    return layout.known(field.strip() for field in fields)


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


def csv_error(exc: BaseException, names: list[str] | None = None, block: int = 0) -> ServiceError:
    """Arrow's CSV failure as our error: a value of the wrong type is invalid data (the
    same code a DataFrame with that value gets), anything else is not readable CSV."""
    reason = _arrow_reason(exc)
    if "conversion error" in reason.lower():
        return InvalidData(
            f"{_with_column(reason, names)}: send numbers in numeric columns "
            "(or leave the value empty to use the training mean)"
        )
    if "straddl" in reason:
        return MalformedBody(_row_too_long(block))
    if "utf8" in reason.lower().replace("-", ""):
        return MalformedBody(f"the CSV is not UTF-8 text ({reason}): save it as UTF-8")
    return MalformedBody(f"the data is not readable CSV ({_with_column(reason, names)})")


def _with_column(reason: str, names: list[str] | None) -> str:
    """Arrow says "CSV column #22": name it."""
    match = re.search(r"CSV column #(\d+)", reason)
    if match and names and int(match.group(1)) < len(names):
        return f"column {names[int(match.group(1))]!r}: {reason}"
    return reason


def decode_json(body: bytes, layout: Layout | None = None) -> Decoded:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        document = _json_with_nan(body, exc)
    try:
        return frame_from_json(document, layout, body)
    except UnicodeEncodeError:  # an unpaired surrogate escape, which only json.loads lets by
        raise MalformedBody(
            "the JSON holds an unpaired surrogate escape (such as \\ud800), which is no text: "
            "send valid Unicode"
        ) from None


def _json_with_nan(body: bytes, exc: orjson.JSONDecodeError) -> Any:
    """Python's json module writes a missing value as NaN (MLflow's client does, through
    json.dumps), which strict JSON has not: read such bodies as Python does."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedBody(f"the body is not valid JSON ({exc}): {JSON_SHAPES_HELP}") from None


def frame_from_json(document: Any, layout: Layout | None = None, body: bytes = b"") -> Decoded:
    """MLflow's request shapes (exactly one format key; `params` ignored), a list of
    records or of rows, or one record. `body`, the bytes parsed, lets a large table of
    numbers take numpy's path (service.json_tables)."""
    if isinstance(document, list):
        return _rows(document, "the JSON list", layout)
    if not isinstance(document, dict):
        raise MalformedBody(f"unrecognised JSON shape: {JSON_SHAPES_HELP}")
    keys = [key for key in FORMAT_KEYS if key in document]
    if len(keys) > 1:
        raise MalformedBody(
            f"the JSON object holds {' and '.join(keys)}: send exactly one of "
            f"{', '.join(FORMAT_KEYS)}"
        )
    if not keys:
        if layout is not None and _is_record(document) and layout.known(document):
            return Decoded(_records([document], "the JSON object"))
        raise MalformedBody(
            f"the JSON object names none of the bundle's columns nor one of "
            f"{', '.join(FORMAT_KEYS)}: {JSON_SHAPES_HELP}"
        )
    key = keys[0]
    value = document[key]
    if key == "dataframe_split":
        return Decoded(_split(value, lambda: _numbers_only(body, document, key)))
    if key == "dataframe_records":
        return Decoded(_records(value, key))
    if isinstance(value, dict):
        return Decoded(_one_record_or_columns(value, key))
    return _rows(value, key, layout)


def _is_record(value: dict[Any, Any]) -> bool:
    return not any(isinstance(v, (list, dict)) for v in value.values())


def _rows(value: Any, where: str, layout: Layout | None) -> Decoded:
    """A list of records (objects), of positional rows (lists), or one positional row."""
    if not isinstance(value, list) or not value or isinstance(value[0], dict):
        return Decoded(_records(value, where))
    if not isinstance(value[0], list):
        value = [value]
    if layout is None or not _all_lists(value):
        raise MalformedBody(
            f"{where} must hold records or rows of equal length: {JSON_SHAPES_HELP}"
        )
    widths = set(map(len, value))
    if len(widths) > 1:
        raise MalformedBody(f"the rows in {where} differ in length ({sorted(widths)})")
    width = widths.pop()
    fast = _small_frame([str(i) for i in range(width)], value)
    frame = pd.DataFrame(value) if fast is None else fast
    return layout.name(frame, f"each row in {where}")


def _all_lists(values: list[Any]) -> bool:
    """Every item a JSON array (a thousand rows' check in C, not a Python loop)."""
    return not values or frozenset(map(type, values)) == _ONLY_LIST


def _numbers_only(body: bytes, document: dict[str, Any], key: str) -> bool:
    """Whether the body's dataframe_split rows hold only numbers and nulls (json_tables)."""
    return bool(body) and holds_only_numbers(body, {**document, key: {**document[key], "data": []}})


def _split(value: Any, numbers_only: Callable[[], bool] = lambda: False) -> pd.DataFrame:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list):
        raise MalformedBody('dataframe_split needs "columns": [names] and "data": [[row], ...]')
    columns, data = value["columns"], value.get("data")
    if not isinstance(data, list) or not _all_lists(data):
        raise MalformedBody('dataframe_split "data" must be a list of rows (lists)')
    if data and set(map(len, data)) != {len(columns)}:
        raise MalformedBody(
            f"every dataframe_split row must have {len(columns)} values, one per column"
        )
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
        raise MalformedBody('dataframe_split "columns" must be distinct strings')
    fast = _small_frame(columns, data)
    if fast is None and len(data) > SMALL_FRAME_ROWS and numbers_only():
        fast = numeric_table(column_index(tuple(columns)), data)
    if fast is None:  # a shared Index: its checks (is_unique, ...) are done once
        return pd.DataFrame(data, columns=column_index(tuple(columns)))
    return fast


# A few rows of plain values (the usual real-time request) skip pandas' general
# constructor, which costs about 0.2 ms per request; beyond this many rows the type checks
# below cost more than they save.
SMALL_FRAME_ROWS = 64
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NONE = type(None)
_NUMBER_TYPES = frozenset({int, float, _NONE})
_ONLY_NONE = frozenset({_NONE})
_ONLY_INT = frozenset({int})
_ONLY_STR = frozenset({str})
_ONLY_BOOL = frozenset({bool})
_ONLY_LIST = frozenset({list})


def _small_frame(columns: list[str], data: list[list[Any]]) -> pd.DataFrame | None:
    """The frame `pd.DataFrame(data, columns=columns)` builds, when there are few rows and
    each column holds only strings, only booleans, or ints, floats and nulls; None (use
    pandas) for anything else.

    pandas makes a column of Python ints int64, one of ints, floats and nulls float64
    (null as NaN), one of strings its string dtype and one of booleans bool; a column of
    nulls only stays object, and strings with nulls, mixed types, ints beyond int64 and
    the like have their own rules, so those go to pandas.
    """
    if not data or len(data) > SMALL_FRAME_ROWS or not columns:
        return None
    values = list(zip(*data, strict=True))
    dtypes = []
    for column in values:
        dtype = _small_dtype(column)
        if dtype is _DECLINED:
            return None
        dtypes.append(dtype)
    return frame_of_values(column_index(tuple(columns)), values, dtypes)


_DECLINED = np.dtype(object)
_FLOAT64, _INT64, _BOOL = np.dtype(np.float64), np.dtype(np.int64), np.dtype(np.bool_)


def _small_dtype(values: tuple[Any, ...]) -> np.dtype | None:
    """The numpy dtype pandas' constructor gives one column's values, None for its string
    dtype, or _DECLINED when the constructor's own rules apply."""
    kind = frozenset(map(type, values))
    if kind == _ONLY_STR:
        return None if STRINGS_INFERRED else _DECLINED
    if kind == _ONLY_BOOL:
        return _BOOL
    if not kind <= _NUMBER_TYPES or kind == _ONLY_NONE:
        return _DECLINED
    if int in kind:
        integers = values if kind == _ONLY_INT else [v for v in values if type(v) is int]
        if min(integers) < _INT64_MIN or max(integers) > _INT64_MAX:
            return _DECLINED
    return _INT64 if kind == _ONLY_INT else _FLOAT64


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
    return _small_frame(columns, [list(record.values()) for record in records])


def _one_record_or_columns(value: dict[Any, Any], key: str) -> pd.DataFrame:
    """{"a": 1, "b": 2} is one record; {"a": [1, 2], "b": [3, 4]} maps columns to values."""
    if _is_record(value):
        return _records([value], key)
    columns = list(value.values())
    if not all(isinstance(c, list) for c in columns) or len({len(c) for c in columns}) > 1:
        raise MalformedBody(f"{key} as an object must map each column to a list of equal length")
    return pd.DataFrame(value)


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


def decode_jsonlines(body: bytes, layout: Layout | None = None) -> Decoded:
    """One object (a record) or one array (a positional row) a line, all lines alike."""
    _refuse_binary(body, "JSON Lines")
    rows = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise MalformedBody(f"line {number} is not valid JSON ({exc})") from None
        kind = dict if not rows else type(rows[0])
        if not isinstance(row, (dict, list)) or (rows and type(row) is not kind):
            raise MalformedBody(
                f"line {number} must be a JSON object mapping columns to values "
                "(or, on every line, an array of values in the bundle's input order)"
            )
        rows.append(row)
    if rows and isinstance(rows[0], list):
        return _rows(rows, "the lines", layout)
    return Decoded(pd.DataFrame.from_records(rows) if rows else pd.DataFrame())


# -- encoding ---------------------------------------------------------------------------


def _columns_as_lists(frame: pd.DataFrame) -> tuple[list[str], list[list[Any]]]:
    names = [str(c) for c in labels_of(frame.columns)]
    return names, [column.tolist() for _, column in frame.items()]


def _record_list(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts of Python values. A small frame's rows come from one object
    matrix (the same values as each column's `tolist()`, at half the cost: no Series
    per column). The dicts are made by `map`, not a comprehension of `zip(...,
    strict=True)`: a third less time on 1,000 rows; every row has one value per name."""
    if len(frame) <= SMALL_FRAME_ROWS:
        names = [str(c) for c in labels_of(frame.columns)]
        rows = frame.to_numpy(dtype=object).tolist()
    else:
        names, columns = _columns_as_lists(frame)
        rows = zip(*columns, strict=True)
    return list(map(dict, map(zip, repeat(names), rows)))


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself: pandas' timestamps and missing values (a datetime
    column, a nullable one) as ISO text and null."""
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (pd.Timestamp, pd.Timedelta)):
        return value.isoformat()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def encode_json(frame: pd.DataFrame) -> bytes:
    rows = _numeric_rows(frame)
    if rows is not None:
        return b'{"predictions":[' + b",".join(rows) + b"]}"
    return orjson.dumps(
        {"predictions": _record_list(frame)},
        default=_json_default,
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def encode_jsonlines(frame: pd.DataFrame) -> bytes:
    rows = _numeric_rows(frame)
    if rows is not None:
        return b"\n".join(rows) + b"\n"
    dumps = orjson.dumps
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    return b"".join(dumps(row, default=_json_default, option=option) for row in _record_list(frame))


# float32 and float16 are left out: orjson writes their shortest text, tolist() a float64's
_WHOLE_NUMBERS = frozenset(
    np.dtype(name) for name in ("float64", "int64", "int32", "uint64", "uint32", "bool")
)


def _numeric_rows(frame: pd.DataFrame) -> list[bytes] | None:
    """Many rows of numbers only (the usual answer: ids and scores), each row's JSON object
    put together from orjson's text of each whole column: the bytes orjson writes for the
    rows as dicts (numbers hold no comma to split on), without making a dict per row."""
    if len(frame) <= SMALL_FRAME_ROWS or not frame.columns.is_unique:
        return None  # a name twice: a dict keeps its last value, which this would not
    if not all(map(_WHOLE_NUMBERS.__contains__, frame.dtypes)):
        return None
    parts: list[Any] = []
    for position, (name, column) in enumerate(frame.items()):
        key = orjson.dumps(str(name)) + b":"
        parts.append(repeat((b"{" if position == 0 else b",") + key))
        values = np.ascontiguousarray(column.to_numpy())
        text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
        parts.append(text[1:-1].split(b","))
    parts.append(repeat(b"}"))
    return list(map(b"".join, zip(*parts, strict=False)))  # the repeats have no end


def _table(frame: pd.DataFrame) -> pa.Table:
    """One thread: Arrow's pool converts column by column, and an answer's few columns take
    longer handed out than done here (a 1,000-row answer of id and score as parquet: 0.65
    vs 0.28 ms)."""
    return pa.Table.from_pandas(frame, preserve_index=False, nthreads=1)


def encode_csv(frame: pd.DataFrame, header: bool = True) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(_csv_table(frame), sink, pacsv.WriteOptions(include_header=header))
    return sink.getvalue()


def _csv_table(frame: pd.DataFrame) -> pa.Table:
    """CSV writes no pandas metadata: numpy number columns go to Arrow as they are (NaN as
    null, as `from_pandas` does), without `Table.from_pandas`' per-call cost (60 us)."""
    if not all(map(is_number_dtype, frame.dtypes)):
        return _table(frame)
    arrays = [pa.array(column.to_numpy(), from_pandas=True) for _, column in frame.items()]
    return pa.Table.from_arrays(arrays, names=[str(name) for name in labels_of(frame.columns)])


def encode_parquet(frame: pd.DataFrame, header: bool = True) -> bytes:
    sink = io.BytesIO()
    table = _table(frame)
    pq.write_table(table, sink, **parquet_options(table.schema))
    return sink.getvalue()


def parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Dictionary encoding only for text columns. Predictions are numbers that rarely
    repeat, and a dictionary of a batch's numbers never outgrows Arrow's limit, so Arrow
    would hash every value and write it with an index: three times the CPU, a third more bytes
    (bench/RESULTS.md, "Parquet outputs without dictionaries of numbers")."""
    return {"use_dictionary": [field.name for field in schema if _has_text(field.type)]}


_TEXT_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_dictionary,
)


def _has_text(kind: pa.DataType) -> bool:
    return any(test(kind) for test in _TEXT_TYPES)


def decode_parquet_rows(body: bytes, layout: Layout | None = None) -> Decoded:
    return Decoded(decode_parquet(body))


@dataclass(frozen=True)
class Codec:
    decode: Callable[[bytes, Layout | None], Decoded]
    encode: Callable[..., bytes]  # (frame, header=True): only CSV leaves a header out


_PARQUET_CODEC = Codec(decode_parquet_rows, encode_parquet)
_JSONLINES_CODEC = Codec(decode_jsonlines, lambda frame, header=True: encode_jsonlines(frame))

CODECS: dict[str, Codec] = {
    JSON: Codec(decode_json, lambda frame, header=True: encode_json(frame)),
    PARQUET: _PARQUET_CODEC,
    X_PARQUET: _PARQUET_CODEC,
    CSV: Codec(decode_csv, encode_csv),
    JSONLINES: _JSONLINES_CODEC,
    NDJSON: _JSONLINES_CODEC,
}
assert tuple(CODECS) == MEDIA_TYPES, "service/media.py lists the media types, JSON first"


def read(body: bytes, content_type: str | None, layout: Layout | None = None) -> Decoded:
    """Decode a request body by its Content-Type; `layout` names positional input."""
    kind = media_type(content_type)
    codec = CODECS.get(kind)
    if codec is None:
        given = (
            f"Content-Type {content_type!r} is not supported" if kind else "no Content-Type given"
        )
        raise UnsupportedMediaType(f"{given}: use one of {', '.join(MEDIA_TYPES)}")
    if not body:
        raise MalformedBody(f"the request body is empty: send rows as {kind}")
    return codec.decode(body, layout)


def decode(body: bytes, content_type: str | None) -> pd.DataFrame:
    """The rows of a body whose columns are named (a CSV header, JSON records)."""
    return read(body, content_type).frame


@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None, default: str = JSON) -> str:
    """The media type to answer with for this Accept header: `default` when the header is
    absent or allows it as much as any other (`*/*`), as SageMaker's toolkit does with
    SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT."""
    if not accept or not accept.strip():
        return default
    offers = (default, *(media for media in MEDIA_TYPES if media != default))
    best = parse_accept_header(accept, MIMEAccept).best_match(offers)
    if best is None:
        raise NotAcceptable(
            f"cannot answer with {accept!r}: accept one of {', '.join(MEDIA_TYPES)}"
        )
    return best


def encode(frame: pd.DataFrame, media: str, header: bool = True) -> bytes:
    """The answer as `media`; `header=False` leaves a CSV answer's header line out."""
    return CODECS[media].encode(frame, header=header)
