"""Input files read as bounded row batches, and output files written batch by batch.

The batch worker reads files of any size with the same parsers the endpoint uses
(`service.codecs`).
"""

import contextlib
import csv
import gzip
import io
import os
import re
from collections.abc import Iterator
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
    PARQUET_MAGIC,
    _arrow_reason,
    _csv_frame,
    _frame,
    _is_parquet,
    _row_too_long,
    _table,
    csv_error,
    encode_jsonlines,
    parquet_options,
)
from service.errors import InputError, InvalidData, MalformedBody

__all__ = ["BatchWriter", "FileFormat", "file_format", "iter_batches", "known_rows"]


Source = str | IO[bytes]  # a local path, or a seekable binary file such as an S3 input


def iter_batches(
    source: Source, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...] = ()
) -> Iterator[pd.DataFrame]:
    """Yield the file's rows as DataFrames of bounded size.

    `numeric_columns` (the model's features) are read as float64 so that a type
    guessed from the first block cannot clash with a later one. A file object is read
    from its start; one with a `prefetch(start, end)` method is asked for each parquet row
    group's bytes one row group ahead, so fetching the next overlaps decoding this one.
    """
    readers = {"parquet": _parquet_batches, "csv": _csv_batches, "jsonl": _jsonl_batches}
    _check_content(source, fmt)
    yield from readers[fmt.name](source, fmt, batch_rows, numeric_columns)


def known_rows(source: Source, fmt: FileFormat) -> int | None:
    """The rows a parquet file's footer declares (a remote reader has its footer already),
    so an output written in parts can record them before its first part; None for text
    formats, or a footer that does not read (iter_batches then says what is wrong)."""
    if fmt.name != "parquet":
        return None
    try:
        with _native(source) as native:
            return int(pq.ParquetFile(native).metadata.num_rows)
    except ARROW_ERRORS:
        return None


@contextlib.contextmanager
def _binary(source: Source) -> Iterator[IO[bytes]]:
    """The source as a binary file at its start; a given file object stays open."""
    if isinstance(source, str):
        with open(source, "rb") as handle:
            yield handle
    else:
        source.seek(0)
        yield source


def _check_content(source: Source, fmt: FileFormat) -> None:
    """A file whose bytes are not what its name says: say so, and how to name it. A parquet
    file's footer is read first (a remote reader has it already); the head only if need be."""
    with _binary(source) as handle:
        if fmt.name == "parquet" and not fmt.gzip and _tail(handle) == PARQUET_MAGIC:
            return
        handle.seek(0)
        head = bytes(handle.read(4))
        if not head:
            return
        tail = _tail(handle) if head.startswith(PARQUET_MAGIC) else head
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


def _tail(handle: IO[bytes]) -> bytes:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 4))
    return bytes(handle.read(4))


def _parquet_batches(
    source: Source, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...]
) -> Iterator[pd.DataFrame]:
    try:
        # pre_buffer=False: pre-buffering keeps every row group read so far in memory.
        # use_threads=False: decoding is one of transform_file's three overlapping stages,
        # and Arrow's own pool on the same cores (a worker task has 1 vCPU by default)
        # only makes the stages wait on each other (bench/RESULTS.md).
        with _native(source) as native:
            parquet = pq.ParquetFile(native, pre_buffer=False)
            groups = [
                _group_span(parquet.metadata.row_group(i)) for i in range(parquet.num_row_groups)
            ]
            prefetch = getattr(source, "prefetch", None)
            for index in range(len(groups)):
                for span in groups[index : index + 2] if prefetch else ():
                    prefetch(*span)
                batches = parquet.iter_batches(
                    batch_size=batch_rows, row_groups=[index], use_threads=False
                )
                for batch in batches:
                    yield _frame(batch)
    except ARROW_ERRORS as exc:
        raise MalformedBody(
            f"the file is not a readable parquet file ({_arrow_reason(exc)})"
        ) from None


def _group_span(group: pq.RowGroupMetaData) -> tuple[int, int]:
    """The bytes [start, end) of a row group's column chunks."""
    starts, ends = [], []
    for index in range(group.num_columns):
        column = group.column(index)
        start = column.data_page_offset
        if column.has_dictionary_page and column.dictionary_page_offset:
            start = min(start, column.dictionary_page_offset)
        starts.append(start)
        ends.append(start + column.total_compressed_size)
    return (min(starts), max(ends)) if starts else (0, 0)


@contextlib.contextmanager
def _native(source: Source) -> Iterator[Any]:
    if isinstance(source, str):
        yield source
    else:
        with pa.PythonFile(_Borrowed(source), mode="r") as native:
            yield native


def _block_size(batch_rows: int) -> int:
    return max(1 << 20, min(64 << 20, batch_rows * 256))


@contextlib.contextmanager
def _open(source: Source, fmt: FileFormat) -> Iterator[pa.NativeFile]:
    """The source as an Arrow input stream from its start, gunzipped if named .gz."""
    compression = "gzip" if fmt.gzip else None
    if isinstance(source, str):
        with pa.input_stream(source, compression=compression) as stream:
            yield stream
        return
    source.seek(0)
    raw = pa.PythonFile(_Borrowed(source), mode="r")
    with pa.CompressedInputStream(raw, compression) if compression else raw as stream:
        yield stream


def _csv_batches(
    path: Source, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...]
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


def _csv_header(path: Source, fmt: FileFormat) -> list[str]:
    """The header's names, so Arrow's "column #22" errors can name the column."""
    try:
        with _open(path, fmt) as stream:
            first = stream.read(1 << 16).split(b"\n", 1)[0]
        return next(csv.reader([first.decode("utf-8", errors="replace")]), [])
    except (OSError, EOFError, csv.Error):
        return []


_TYPE_CHANGE = re.compile(r"Column\(/([^)]*)\) changed from (\w+) to (\w+)")


def _jsonl_batches(
    path: Source, fmt: FileFormat, batch_rows: int, numeric_columns: tuple[str, ...]
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
        raise _jsonl_problem(_arrow_reason(exc), _block_size(batch_rows)) from None


def _jsonl_problem(reason: str, block: int) -> InputError:
    """A value of another type than the column's earlier ones is wrong data (as at the
    endpoint); anything else is a file that is not JSON Lines."""
    if "straddl" in reason:
        return MalformedBody(_row_too_long(block))
    changed = _TYPE_CHANGE.search(reason)
    if changed:
        column, before, after = changed.groups()
        return InvalidData(
            f"column {column!r} holds a JSON {after} where earlier rows hold a {before}: "
            "send one type per column (numbers as numbers, dates and text as strings)"
        )
    return MalformedBody(f"the file is not readable JSON Lines, one object per line ({reason})")


def _in_file_order(frame: pd.DataFrame, first_keys: list[str]) -> pd.DataFrame:
    """Columns in the order of the first line (an explicit schema puts its own first)."""
    order = [k for k in first_keys if k in frame.columns]
    order += [c for c in frame.columns if c not in set(order)]
    return frame if list(frame.columns) == order else frame[order]


def _first_json_keys(source: Source, fmt: FileFormat) -> list[str]:
    try:
        with _binary(source) as raw, _gunzipped(raw, fmt) as handle:
            for line in handle:
                if line.strip():
                    row = orjson.loads(line)
                    return list(row) if isinstance(row, dict) else []
    except (OSError, EOFError, orjson.JSONDecodeError) as exc:
        raise MalformedBody(f"the first line is not a JSON object ({exc})") from None
    return []


@contextlib.contextmanager
def _gunzipped(raw: IO[bytes], fmt: FileFormat) -> Iterator[IO[bytes]]:
    if not fmt.gzip:
        yield raw
        return
    with gzip.GzipFile(fileobj=raw, mode="rb") as handle:
        yield handle


class BatchWriter:
    """Writes frames as parquet, csv or jsonl, one batch at a time, to a local path or a
    writable binary file object (such as an upload in progress), which it leaves open."""

    def __init__(self, path: str | IO[bytes], output_format: str) -> None:
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
            if self.output_format == "parquet":
                self._writer = pq.ParquetWriter(
                    self.path, table.schema, **parquet_options(table.schema)
                )
            else:
                self._writer = pacsv.CSVWriter(self.path, table.schema)
        elif table.schema != self._schema:
            table = table.cast(self._schema)
        self._writer.write_table(table)

    def _file(self) -> IO[bytes]:
        if self._writer is None:
            if isinstance(self.path, str):
                self._writer = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            else:
                self._writer = _Unclosed(self.path)
        return self._writer

    def close(self) -> None:
        if self._writer is None and self.output_format == "jsonl":
            self._file()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class _Unclosed:
    """A caller's file object, written to; closing leaves it to its owner."""

    def __init__(self, target: IO[bytes]) -> None:
        self.write = target.write

    def close(self) -> None:
        pass


class _Borrowed(io.RawIOBase):
    """A caller's readable file object lent to Arrow, which closes what it wraps."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self.source = source

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.source.read(size)

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.source.seek(offset, whence)

    def tell(self) -> int:
        return self.source.tell()
