"""The poison catalogue: inputs that must never crash a worker or earn a 500.

Each kind generates its bytes from a small frame of good rows, so the suite ships
no binaries. A kind names the object key the batch test uploads it as, the
Content-Type (and extra headers) the endpoint test sends it with, and what each
path must answer: a status or error code plus words the message must contain, so
a person reading the report or the response learns what to fix.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HUGE_CELL_BYTES = 50 * 1024 * 1024
WIDE_COLUMNS = 10_000
STRING_COLUMN = "mean_radius"


@dataclass(frozen=True)
class Expect:
    """An outcome: `code` is a report's `error` / a response's `error` (None on success):
    one code, the same for the same kind of bad input in batch and at the endpoint."""

    code: str | None
    words: tuple[str, ...] = ()
    status: int | None = None  # endpoint only
    rows: int | None = None  # on success: rows predicted

    def accepts(self, code: str | None) -> bool:
        return code == self.code

    def missing_words(self, message: str) -> list[str]:
        """The expected words the message lacks (case-insensitive)."""
        return [word for word in self.words if word.lower() not in message.lower()]


@dataclass(frozen=True)
class Poison:
    name: str
    key: str
    content_type: str
    make: Callable[[pd.DataFrame], bytes]
    batch: Expect
    endpoint: Expect
    headers: dict[str, str] = field(default_factory=dict)
    why: str = ""
    pending: dict[str, str] = field(default_factory=dict)  # path -> change requested for it


# -- encoders --------------------------------------------------------------------------


def parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def jsonl(frame: pd.DataFrame) -> bytes:
    return frame.to_json(orient="records", lines=True).encode()


# -- generators ------------------------------------------------------------------------


def corrupt_parquet(good: pd.DataFrame) -> bytes:
    """Magic bytes and footer intact, the column chunks overwritten."""
    data = bytearray(parquet(good))
    footer = int.from_bytes(data[-8:-4], "little") + 8
    rng = np.random.default_rng(0)
    data[4 : len(data) - footer] = rng.integers(0, 256, len(data) - footer - 4, np.uint8).tobytes()
    return bytes(data)


def truncated_parquet(good: pd.DataFrame) -> bytes:
    data = parquet(good)
    return data[: len(data) // 2]


def empty(good: pd.DataFrame) -> bytes:
    return b""


def header_only(good: pd.DataFrame) -> bytes:
    return (",".join(good.columns) + "\n").encode()


def missing_features(good: pd.DataFrame) -> bytes:
    return csv(good.drop(columns=["mean_texture", "worst_symmetry"]))


def only_unknown_columns(good: pd.DataFrame) -> bytes:
    return b"colour,size\nred,1\nblue,2\n"


def strings_in_numeric(good: pd.DataFrame) -> bytes:
    frame = good.copy()
    frame[STRING_COLUMN] = frame[STRING_COLUMN].astype(object)
    frame.loc[len(frame) // 2, STRING_COLUMN] = "large"
    return csv(frame)


def all_nan_column(good: pd.DataFrame) -> bytes:
    return csv(good.assign(mean_area=np.nan))


def infinities(good: pd.DataFrame) -> bytes:
    frame = good.copy()
    frame.loc[1, "worst_area"] = np.inf
    return csv(frame)


def non_utf8(good: pd.DataFrame) -> bytes:
    text = good.assign(city="Zürich").to_csv(index=False)
    return text.encode("latin-1")


def jsonl_broken_line(good: pd.DataFrame) -> bytes:
    lines = jsonl(good).splitlines(keepends=True)
    lines[2] = lines[2][: len(lines[2]) // 2] + b"\n"
    return b"".join(lines)


def huge_cell(good: pd.DataFrame) -> bytes:
    """One row whose `notes` cell is 50 MB: one string larger than any read block."""
    frame = good.head(3).assign(notes="short")
    head = csv(frame)
    header, first, rest = head.split(b"\n", 2)
    return b"\n".join([header, first[: first.rfind(b",") + 1] + b"x" * HUGE_CELL_BYTES, rest])


def parquet_named_csv(good: pd.DataFrame) -> bytes:
    return parquet(good)


def not_gzip(good: pd.DataFrame) -> bytes:
    return csv(good)


def bom_csv(good: pd.DataFrame) -> bytes:
    return b"\xef\xbb\xbf" + csv(good)


def duplicate_columns(good: pd.DataFrame) -> bytes:
    header, body = csv(good).split(b"\n", 1)
    lines = [line + b",999" for line in body.splitlines()]
    return b"\n".join([header + b",mean_radius", *lines]) + b"\n"


def wide_row(good: pd.DataFrame) -> bytes:
    row = good.head(1)
    extra = pd.DataFrame(
        np.ones((1, WIDE_COLUMNS - row.shape[1])),
        columns=[f"extra_{i}" for i in range(WIDE_COLUMNS - row.shape[1])],
    )
    return csv(pd.concat([row.reset_index(drop=True), extra], axis=1))


def overflow_after_scaling(good: pd.DataFrame) -> bytes:
    """Finite, but past float64 once the scaler divides it by the column's small spread."""
    frame = good.copy()
    frame.loc[1, "mean_smoothness"] = 1e308
    return csv(frame)


def damaged_pandas_metadata(good: pd.DataFrame) -> bytes:
    """Readable parquet whose pandas metadata (index and dtypes) is incomplete."""
    table = pa.Table.from_pandas(good, preserve_index=False)
    metadata = json.loads(table.schema.metadata[b"pandas"])
    del metadata["index_columns"]
    table = table.replace_schema_metadata({b"pandas": json.dumps(metadata).encode()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def gzipped_body(good: pd.DataFrame) -> bytes:
    return gzip.compress(csv(good), mtime=0)


# -- the catalogue ---------------------------------------------------------------------

# Changes requested in core files (see docs/RELIABILITY.md); until they land, the
# cases that need them are expected to fail (strictly: a fix makes them pass loudly).
DUPLICATES = "R1 duplicate column names are refused (service/data.py)"
SNIFF = "R2 parquet or gzip bytes under another name are named (service/files.py)"
ROW_TOO_LONG = "R3 a row longer than the read block is named (service/files.py)"
OVERFLOW = "R4 a value that overflows once scaled is a 422, not a crash (service/data.py)"
PANDAS_METADATA = "R5 damaged pandas metadata in parquet is ignored (service/files.py)"

CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
JSONLINES = "application/jsonlines"

CATALOGUE: tuple[Poison, ...] = (
    Poison(
        "corrupt_parquet",
        "poison/corrupt.parquet",
        PARQUET,
        corrupt_parquet,
        batch=Expect("malformed_body", ("parquet",)),
        endpoint=Expect("malformed_body", ("parquet",), 400),
    ),
    Poison(
        "truncated_parquet",
        "poison/truncated.parquet",
        PARQUET,
        truncated_parquet,
        batch=Expect("malformed_body", ("parquet",)),
        endpoint=Expect("malformed_body", ("parquet",), 400),
    ),
    Poison(
        "empty_file",
        "poison/empty.csv",
        CSV,
        empty,
        batch=Expect("malformed_body", ("empty",)),
        endpoint=Expect("malformed_body", ("empty",), 400),
    ),
    Poison(
        "header_only_csv",
        "poison/header-only.csv",
        CSV,
        header_only,
        batch=Expect("invalid_data", ("no data rows",)),
        endpoint=Expect("invalid_data", ("no rows",), 422),
    ),
    Poison(
        "missing_feature_columns",
        "poison/missing-features.csv",
        CSV,
        missing_features,
        batch=Expect("invalid_data", ("missing columns", "mean_texture", "worst_symmetry")),
        endpoint=Expect("invalid_data", ("missing columns", "mean_texture", "worst_symmetry"), 422),
    ),
    Poison(
        "only_unknown_columns",
        "poison/unknown-columns.csv",
        CSV,
        only_unknown_columns,
        batch=Expect("invalid_data", ("missing columns", "id", "mean_radius")),
        endpoint=Expect("invalid_data", ("2 values", "'id' first", "mean_radius"), 422),
        why="a first line naming none of the bundle's columns is a row of positional "
        "values (files in batch always have a header)",
    ),
    Poison(
        "strings_in_numeric_column",
        "poison/strings.csv",
        CSV,
        strings_in_numeric,
        batch=Expect("invalid_data", (STRING_COLUMN, "large")),
        endpoint=Expect("invalid_data", (STRING_COLUMN, "numeric", "large"), 422),
    ),
    Poison(
        "all_nan_column",
        "poison/all-nan.csv",
        CSV,
        all_nan_column,
        batch=Expect(None, rows=20),
        endpoint=Expect(None, status=200, rows=20),
        why="missing values are replaced by the training mean: a documented success",
    ),
    Poison(
        "infinities",
        "poison/infinite.csv",
        CSV,
        infinities,
        batch=Expect("invalid_data", ("worst_area", "infinite")),
        endpoint=Expect("invalid_data", ("worst_area", "infinite"), 422),
    ),
    Poison(
        "non_utf8_csv",
        "poison/latin1.csv",
        CSV,
        non_utf8,
        batch=Expect("malformed_body", ("UTF-8", "city")),
        endpoint=Expect("malformed_body", ("UTF-8", "city"), 400),
    ),
    Poison(
        "jsonl_one_broken_line",
        "poison/broken-line.jsonl",
        JSONLINES,
        jsonl_broken_line,
        batch=Expect("malformed_body", ("JSON",)),
        endpoint=Expect("malformed_body", ("line 3", "JSON"), 400),
    ),
    Poison(
        "huge_cell_50mb",
        "poison/huge-cell.csv",
        CSV,
        huge_cell,
        batch=Expect("malformed_body", ("row", "MB")),
        endpoint=Expect("payload_too_large", ("MAX_REQUEST_MB",), 413),
    ),
    Poison(
        "parquet_named_csv",
        "poison/really-parquet.csv",
        CSV,
        parquet_named_csv,
        batch=Expect("malformed_body", ("parquet",)),
        endpoint=Expect("malformed_body", ("parquet",), 400),
    ),
    Poison(
        "gzip_that_is_not_gzip",
        "poison/not-gzip.csv.gz",
        CSV,
        not_gzip,
        headers={"Content-Encoding": "gzip"},
        batch=Expect("malformed_body", ("gzip",)),
        endpoint=Expect("unsupported_media_type", ("Content-Encoding",), 415),
    ),
    Poison(
        "bom_prefixed_csv",
        "poison/bom.csv",
        CSV,
        bom_csv,
        batch=Expect(None, rows=20),
        endpoint=Expect(None, status=200, rows=20),
        why="a UTF-8 byte order mark is skipped, as spreadsheet programs write one",
    ),
    Poison(
        "duplicate_column_names",
        "poison/duplicate-columns.csv",
        CSV,
        duplicate_columns,
        batch=Expect("invalid_data", ("duplicate", "mean_radius")),
        endpoint=Expect("invalid_data", ("duplicate", "mean_radius"), 422),
        why="the model must not silently use one of two different values",
    ),
    Poison(
        "one_row_10000_columns",
        "poison/wide.csv",
        CSV,
        wide_row,
        batch=Expect(None, rows=1),
        endpoint=Expect(None, status=200, rows=1),
        why="extra columns are ignored, however many",
    ),
    Poison(
        "gzip_body_without_encoding",
        "poison/gzipped-but-named.csv",
        CSV,
        gzipped_body,
        batch=Expect("malformed_body", ("gzip",)),
        endpoint=Expect("malformed_body", ("gzip",), 400),
        why="compressed bytes sent as plain CSV",
    ),
)

CATALOGUE += (
    Poison(
        "overflow_after_scaling",
        "poison/overflow.csv",
        CSV,
        overflow_after_scaling,
        batch=Expect("invalid_data", ("mean_smoothness",)),
        endpoint=Expect("invalid_data", ("mean_smoothness",), 422),
        why="1e308 is finite, but not once the scaler divides it",
    ),
    Poison(
        "damaged_pandas_metadata",
        "poison/pandas-metadata.parquet",
        PARQUET,
        damaged_pandas_metadata,
        batch=Expect(None, rows=20),
        endpoint=Expect(None, status=200, rows=20),
        why="pandas metadata only restores an index and dtypes: without it the columns read",
    ),
)

BY_NAME = {poison.name: poison for poison in CATALOGUE}


# -- schema violations: a pipeline bundle's input schema, one case per type ------------
# Made from good rows of the mixed example (scripts/examples.py): amount (number),
# tenure (integer), plan/region (string), active (boolean), signup (datetime).


def _with(column: str, value: object, encode: Callable[[pd.DataFrame], bytes] = csv):
    def make(good: pd.DataFrame) -> bytes:
        values = good[column].astype(object).tolist()
        values[len(values) // 2] = value
        return encode(good.assign(**{column: pd.Series(values, index=good.index, dtype=object)}))

    return make


def iso_jsonl(frame: pd.DataFrame) -> bytes:
    return frame.to_json(orient="records", lines=True, date_format="iso").encode()


def _schema_case(name: str, make: Callable[[pd.DataFrame], bytes], *words: str, **kw) -> Poison:
    key = f"schema/{name}.{'jsonl' if kw.get('content_type') == JSONLINES else 'csv'}"
    content_type = kw.pop("content_type", CSV)
    return Poison(
        name,
        key,
        content_type,
        make,
        batch=kw.pop("batch", Expect("invalid_data", words)),
        endpoint=Expect("invalid_data", words, 422),
        **kw,
    )


# The batch file readers (service/files.py) refuse these before the schema check does (a
# number column read as float64, a JSON Lines column whose type changes): the same code as
# the endpoint's, naming the column.
READER_REFUSES = "invalid_data"


def _schema_success(name: str, make: Callable[[pd.DataFrame], bytes], why: str) -> Poison:
    return Poison(
        name,
        f"schema/{name}.csv",
        CSV,
        make,
        batch=Expect(None, rows=20),
        endpoint=Expect(None, status=200, rows=20),
        why=why,
    )


def _unseen_category(good: pd.DataFrame) -> bytes:
    return csv(good.assign(region="atlantis"))


def _all_missing_but_dates(good: pd.DataFrame) -> bytes:
    return csv(good.assign(amount=np.nan, tenure=np.nan, plan=None, region=None))


SCHEMA_CATALOGUE: tuple[Poison, ...] = (
    _schema_case(
        "text_in_number",
        _with("amount", "lots"),
        "'amount'",
        "numeric",
        "lots",
        batch=Expect(READER_REFUSES, ("'amount'", "lots")),
    ),
    _schema_case("fraction_in_integer", _with("tenure", "2.5"), "'tenure'", "whole", "2.5"),
    _schema_case("word_in_boolean", _with("active", "maybe"), "'active'", "boolean", "maybe"),
    _schema_case("bad_date", _with("signup", "2024-13-45"), "'signup'", "date", "2024-13-45"),
    _schema_case(
        "number_in_date",
        _with("signup", 1700000000, iso_jsonl),
        "'signup'",
        "date",
        "1700000000",
        content_type=JSONLINES,
        batch=Expect(READER_REFUSES, ("signup",)),
    ),
    _schema_case(
        "object_in_string",
        _with("plan", {"tier": "gold"}, iso_jsonl),
        "'plan'",
        "text",
        "tier",
        content_type=JSONLINES,
        batch=Expect(READER_REFUSES, ("plan",)),
    ),
    _schema_case(
        "missing_schema_column",
        lambda good: csv(good.drop(columns=["signup"])),
        "missing columns",
        "signup",
    ),
    _schema_success(
        "unseen_category",
        _unseen_category,
        "a category never seen in training is the encoder's business (handle_unknown)",
    ),
    _schema_success(
        "missing_values_reach_the_imputer",
        _all_missing_but_dates,
        "missing values reach the pipeline as missing: its imputers decide",
    ),
)
