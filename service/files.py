"""Input files read as bounded row batches, and output files written batch by batch.

The batch worker reads files of any size with the same parsers the endpoint uses
(`service.codecs`).
"""

import csv
import gzip
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from service.batch_contract import OUTPUT_SUFFIXES, FileFormat, file_format
from service.codecs import (
    ARROW_ERRORS,
    GZIP_MAGIC,
    _arrow_reason,
    _csv_frame,
    _frame,
    _is_parquet,
    _row_too_long,
    _table,
    csv_error,
    encode_jsonlines,
)
from service.errors import MalformedBody

__all__ = ["BatchWriter", "FileFormat", "file_format", "iter_batches"]


def iter_batches(
    path: str, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...] = ()
) -> Iterator[pd.DataFrame]:
    """Yield the file's rows as DataFrames of bounded size.

    `numeric_columns` (the model's features) are read as float64 so that a type
    guessed from the first block cannot clash with a later one.
    """
    readers = {"parquet": _parquet_batches, "csv": _csv_batches, "jsonl": _jsonl_batches}
    _check_content(path, fmt)
    yield from readers[fmt.name](path, fmt, batch_rows, numeric_columns)


def _check_content(path: str, fmt: FileFormat) -> None:
    """A file whose bytes are not what its name says: say so, and how to name it."""
    with open(path, "rb") as handle:
        head = handle.read(4)
        if not head:
            return
        handle.seek(-min(4, len(head)), os.SEEK_END)
        tail = handle.read(4)
    gzipped = head.startswith(GZIP_MAGIC)
    if fmt.gzip and not gzipped:
        raise MalformedBody(
            "the file is named .gz but is not gzip-compressed: drop .gz from its name or "
            "compress it"
        )
    if gzipped and not fmt.gzip:
        raise MalformedBody(f"the file is gzip-compressed: name it *.{fmt.name}.gz")
    if _is_parquet(head, tail) and fmt.name != "parquet":
        raise MalformedBody(f"the file is a parquet file, not {fmt.name}: name it *.parquet")


def _parquet_batches(
    path: str, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    try:
        # pre_buffer=False: pre-buffering keeps every row group read so far in memory.
        batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_rows)
        for batch in batches:
            yield _frame(batch)
    except ARROW_ERRORS as exc:
        raise MalformedBody(
            f"the file is not a readable parquet file ({_arrow_reason(exc)})"
        ) from None


def _block_size(batch_rows: int) -> int:
    return max(1 << 20, min(64 << 20, batch_rows * 256))


def _open(path: str, fmt: FileFormat) -> pa.NativeFile:
    return pa.input_stream(path, compression="gzip" if fmt.gzip else None)


def _csv_batches(
    path: str, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    names = _csv_header(path, fmt)
    try:
        with _open(path, fmt) as stream:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(block_size=_block_size(batch_rows)),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.float64() for c in numeric_columns}
                ),
            )
            for batch in reader:
                yield _csv_frame(batch)
    except ARROW_ERRORS as exc:
        raise csv_error(exc, names, _block_size(batch_rows)) from None


def _csv_header(path: str, fmt: FileFormat) -> list[str]:
    """The header's names, so Arrow's "column #22" errors can name the column."""
    try:
        with _open(path, fmt) as stream:
            first = stream.read(1 << 16).split(b"\n", 1)[0]
        return next(csv.reader([first.decode("utf-8", errors="replace")]), [])
    except (OSError, EOFError, csv.Error):
        return []


def _jsonl_batches(
    path: str, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    first_keys = _first_json_keys(path, fmt)
    schema = pa.schema([(c, pa.float64()) for c in numeric_columns if c in first_keys])
    try:
        with _open(path, fmt) as stream:
            reader = pajson.open_json(
                stream,
                read_options=pajson.ReadOptions(block_size=_block_size(batch_rows)),
                parse_options=pajson.ParseOptions(
                    explicit_schema=schema, unexpected_field_behavior="infer"
                ),
            )
            for batch in reader:
                yield _in_file_order(batch.to_pandas(), first_keys)
    except ARROW_ERRORS as exc:
        reason = _arrow_reason(exc)
        if "straddl" in reason:
            raise MalformedBody(_row_too_long(_block_size(batch_rows))) from None
        raise MalformedBody(
            f"the file is not readable JSON Lines, one object per line ({reason})"
        ) from None


def _in_file_order(frame: pd.DataFrame, first_keys: list[str]) -> pd.DataFrame:
    """Columns in the order of the first line (an explicit schema puts its own first)."""
    order = [k for k in first_keys if k in frame.columns]
    order += [c for c in frame.columns if c not in set(order)]
    return frame if list(frame.columns) == order else frame[order]


def _first_json_keys(path: str, fmt: FileFormat) -> list[str]:
    opener: Callable[..., IO[bytes]] = gzip.open if fmt.gzip else open  # type: ignore[assignment]
    try:
        with opener(path, "rb") as handle:
            for line in handle:
                if line.strip():
                    row = orjson.loads(line)
                    return list(row) if isinstance(row, dict) else []
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise MalformedBody(f"the first line is not a JSON object ({exc})") from None
    return []


class BatchWriter:
    """Writes frames to a local file as parquet, csv or jsonl, one batch at a time."""

    def __init__(self, path: str, output_format: str) -> None:
        if output_format not in OUTPUT_SUFFIXES:
            raise ValueError(f"unknown output format {output_format!r}")
        self.path = path
        self.output_format = output_format
        self.rows = 0
        self._writer: Any = None
        self._schema: pa.Schema | None = None

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        if self.output_format == "jsonl":
            self._file().write(encode_jsonlines(frame))
            return
        table = _table(frame)
        if self._schema is None:
            self._schema = table.schema
            factory = pq.ParquetWriter if self.output_format == "parquet" else pacsv.CSVWriter
            self._writer = factory(self.path, table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def _file(self) -> IO[bytes]:
        if self._writer is None:
            self._writer = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        return self._writer

    def close(self) -> None:
        if self._writer is None and self.output_format == "jsonl":
            self._file()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
