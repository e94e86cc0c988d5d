"""An S3 input read as it streams in, for pyarrow's readers.

`S3Input` is a read-only file object over one object version: every GET carries If-Match
on the announced ETag, so a replaced object fails instead of being read, and a stream that
breaks resumes with a Range request under the same condition.

Parquet reads it at random. An object of up to WHOLE_BYTES (as the event announced it)
comes in one GET and is read from memory: a small file is often one row group, which must
be whole before it decodes anyway, and the one GET saves the footer's request. A bigger one
takes one ranged GET for the footer (which gives the size too), then one forward ranged
stream that carries each row group, the next one fetched while this one decodes (two GETs
per file: moto reads a whole object for every GET, ranged or not). CSV and JSON Lines read
it as one stream, its first MiB kept for the format checks and header peeks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from service import batch
from service.worker_logs import log_event

MB = 1024 * 1024
HEAD_BYTES = MB  # the first bytes of an input, kept for the format checks and header peeks
TAIL_BYTES = 64 * 1024  # the last bytes of a parquet input: its footer, in most files
WHOLE_BYTES = 128 * MB  # a parquet input up to this size comes in one GET
PREFETCHED = 3  # byte ranges kept: the tail, this row group and the next
STREAM_ATTEMPTS = 5
STREAM_ERRORS = (
    ResponseStreamingError,
    ReadTimeoutError,
    ConnectionClosedError,
    IncompleteReadError,
)


class S3Input(io.RawIOBase):
    """One object version as a seekable, read-only file (see the module docstring)."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        etag: str,
        stopping: threading.Event,
        *,
        sequential: bool,
        announced_size: int | None = None,
    ) -> None:
        super().__init__()
        self.s3 = s3
        self.sequential = sequential
        self.whole = not sequential and announced_size is not None and announced_size <= WHOLE_BYTES
        self.key = key
        self.stopping = stopping
        self._request = {"Bucket": bucket, "Key": key, "IfMatch": batch.quoted_etag(etag)}
        self._pos = 0
        self._size: int | None = None
        self._head = bytearray()
        self._body: Any = None
        self._body_pos = 0
        self._failures = 0
        self._fetched: deque[tuple[int, int, Future[memoryview]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._forward = _ForwardStream(self)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size()}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def size(self) -> int:
        """The object's size; in random mode the whole object, or its last TAIL_BYTES, come
        with it (one GET that also serves the reader's footer read)."""
        if self._size is None and self.sequential:
            head = _call(self.s3.head_object, **self._request)
            self._size = head["ContentLength"]
        elif self._size is None and self.whole:
            self._read_whole()
        elif self._size is None:
            self._read_tail()
        assert self._size is not None
        return self._size

    def _read_whole(self) -> None:
        """The object in one GET; one bigger than announced is read by row group instead."""
        response = _call(self.s3.get_object, **self._request)
        size = int(response["ContentLength"])
        if size > WHOLE_BYTES:
            response["Body"].close()
            self.whole = False
            self._read_tail()
            return
        self._size = size
        self._keep(0, self._fetch(0, size, response))

    def _read_tail(self) -> None:
        try:
            response = _call(self.s3.get_object, **self._request, Range=f"bytes=-{TAIL_BYTES}")
        except ClientError as exc:
            if batch.error_code(exc) != "InvalidRange":
                raise
            self._size = 0  # S3 refuses any range of an empty object
            return
        with contextlib.closing(response["Body"]) as body:
            tail = body.read()
        total = response.get("ContentRange", "").rpartition("/")[2]
        self._size = int(total) if total.isdigit() else len(tail)
        self._keep(self._size - len(tail), memoryview(tail))

    def _keep(self, start: int, data: memoryview) -> None:
        done: Future[memoryview] = Future()
        done.set_result(data)
        self._fetched.append((start, start + len(data), done))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> Any:
        """`size` bytes from the position (fewer only at the end): from the kept head, a
        range fetched ahead, the open stream (reopened where the position moved), or a
        ranged GET."""
        if self.stopping.is_set():
            raise batch.Aborted("stopped during the download")
        if self.whole:
            self.size()  # the one GET brings every byte
        if size is None or size < 0:
            size = max(0, self.size() - self._pos)
        pieces: list[Any] = []
        while size > 0:
            piece = self._kept(size) or self._prefetched(size)
            if not piece:
                piece = self._streamed(size) if self.sequential else self._ranged(size)
            if not piece:
                break
            pieces.append(piece)
            self._pos += len(piece)
            size -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def readall(self) -> bytes:
        return self.read(-1)

    def prefetch(self, start: int, end: int) -> None:
        """Fetch bytes [start, end) in the background, for a later read of that range."""
        if any(s <= start and end <= e for s, e, _ in self._fetched):
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="s3-prefetch")
        self._fetched.append((start, end, self._pool.submit(self._forward.span, start, end)))
        while len(self._fetched) > PREFETCHED:
            self._fetched.popleft()[2].cancel()

    def close(self) -> None:
        self._close_body()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._forward.close()
        self._fetched.clear()
        super().close()

    def _kept(self, size: int) -> bytes:
        return bytes(self._head[self._pos : self._pos + size])

    def _ranged(self, size: int) -> bytes:
        end = min(self._pos + size, self.size())
        return bytes(self._fetch(self._pos, end)) if end > self._pos else b""

    def _prefetched(self, size: int) -> Any:
        for start, end, future in self._fetched:
            if start <= self._pos and self._pos + size <= end:
                offset = self._pos - start
                return memoryview(future.result())[offset : offset + size]  # no copy
        return b""

    def _streamed(self, size: int) -> bytes:
        """Read from the sequential stream, resuming under the same condition on a break."""
        while True:
            if self._body is None or self._body_pos != self._pos:
                self._open(self._pos)
            try:
                data = self._body.read(size)
            except STREAM_ERRORS as exc:
                self._broken(str(exc))
                continue
            if not data and self._body_pos < self.size():
                self._broken(f"stream ended at byte {self._body_pos}")
                continue
            if self._body_pos < HEAD_BYTES and self._body_pos == len(self._head):
                self._head += data[: HEAD_BYTES - self._body_pos]
            self._body_pos += len(data)
            return data

    def _open(self, offset: int) -> None:
        self._close_body()
        if self._size is not None and offset >= self._size:
            self._body, self._body_pos = io.BytesIO(), offset
            return
        resume = {"Range": f"bytes={offset}-"} if offset else {}
        response = _call(self.s3.get_object, **self._request, **resume)
        if self._size is None:
            self._size = offset + response["ContentLength"]
        self._body, self._body_pos = response["Body"], offset

    def _broken(self, problem: str) -> None:
        self._close_body()
        self._failures += 1
        if self._failures >= STREAM_ATTEMPTS:
            raise IncompleteReadError(actual_bytes=self._pos, expected_bytes=self.size())
        log_event(logging.WARNING, "download_resumed", key=self.key, error=problem)

    def _fetch(self, start: int, end: int, response: dict[str, Any] | None = None) -> memoryview:
        """Bytes [start, end) into one buffer, from `response` if given, else with one
        ranged GET; a break resumes with a ranged GET from where it broke."""
        data = _buffer(end - start)
        done, failures = start, 0
        while True:
            response = response or self.get(done, end)
            try:
                with contextlib.closing(response["Body"]) as body:
                    while done < end and (chunk := body.read(min(MB, end - done))):
                        data[done - start : done - start + len(chunk)] = chunk
                        done += len(chunk)
            except STREAM_ERRORS as exc:
                failures += 1
                if failures >= STREAM_ATTEMPTS:
                    raise
                log_event(logging.WARNING, "download_resumed", key=self.key, error=str(exc))
                response = None
                continue
            if done < end:
                raise IncompleteReadError(actual_bytes=done - start, expected_bytes=end - start)
            return data

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def get(self, offset: int, end: int | None = None) -> dict[str, Any]:
        """A GET of the announced version from `offset` (to `end`, exclusive, if given)."""
        last = "" if end is None else end - 1
        return _call(self.s3.get_object, **self._request, Range=f"bytes={offset}-{last}")


def _buffer(size: int) -> memoryview:
    """`size` writable bytes from Arrow's memory pool, which hands out again the memory of
    the row groups already read: a new bytearray costs zeroing and a page fault every 4 KiB
    (950 MiB in 95 MiB buffers: 1.2 s against 0.11-0.24 s, bench/RESULTS.md)."""
    return memoryview(pa.allocate_buffer(size)).cast("B")


def _call(method: Any, **request: Any) -> dict[str, Any]:
    """An S3 call whose client error becomes the input error it means."""
    try:
        return method(**request)
    except ClientError as exc:
        raise batch.input_error(exc) from exc


class _ForwardStream:
    """Row groups fetched in file order through one open-ended ranged GET: each later span
    continues the same stream (skipping any gap) instead of a new request. A span before the
    stream's position, or a broken stream, opens a new one there."""

    def __init__(self, source: S3Input) -> None:
        self.source = source
        self.body: Any = None
        self.pos = 0

    def span(self, start: int, end: int) -> memoryview:
        data = _buffer(end - start)
        at, failures = start, 0
        while at < end:
            try:
                self._advance(at)
                chunk = self.body.read(min(MB, end - at))
            except STREAM_ERRORS as exc:
                failures += 1
                if failures >= STREAM_ATTEMPTS:
                    raise
                log_event(logging.WARNING, "download_resumed", key=self.source.key, error=str(exc))
                self.close()
                continue
            if not chunk:
                raise IncompleteReadError(actual_bytes=at - start, expected_bytes=end - start)
            data[at - start : at - start + len(chunk)] = chunk
            at += len(chunk)
            self.pos = at
        return data

    def _advance(self, start: int) -> None:
        if self.body is None or self.pos > start:
            self._reopen(start)
        while self.pos < start:
            skipped = self.body.read(min(MB, start - self.pos))
            if not skipped:
                raise IncompleteReadError(actual_bytes=self.pos, expected_bytes=start)
            self.pos += len(skipped)

    def _reopen(self, offset: int) -> None:
        self.close()
        self.body = self.source.get(offset)["Body"]
        self.pos = offset

    def close(self) -> None:
        if self.body is not None:
            with contextlib.suppress(Exception):
                self.body.close()
            self.body = None
