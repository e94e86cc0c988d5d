"""An output object uploaded while it is produced: whole or not at all, and conditional.

The writer's bytes go up as multipart parts, a few in flight while it fills the next (parts
of PART_BYTES, doubling every PART_GROWTH parts: S3 takes at most 10,000); nothing is
visible until `commit` completes the upload with If-None-Match: * (S3 and moto both check
it on CompleteMultipartUpload). An output that replaces an existing object must be written
If-Match that object's ETag: S3 checks that on completion too, but moto 5.2.5 ignores it
there (it checks it on PutObject), so such an output is spooled to local disk and written
with one conditional PutObject, which every S3 checks.
An output smaller than one part is one conditional PutObject as well.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from service import batch

MB = 1024 * 1024
PART_BYTES = 8 * MB
PART_GROWTH = 1000  # parts double in size every this many, so 10,000 parts never run out
PARTS_IN_FLIGHT = 2  # parts uploading while the writer fills the next one
PUT_LIMIT = 5 * 1024 * MB  # S3's largest single PutObject, and its largest part


class S3Output:
    """A write-only file object for pyarrow's writers (write, tell, flush, close)."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        extra: dict[str, Any],
        condition: dict[str, str],
        stopping: threading.Event,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.key = key
        self.extra = extra
        self.condition = condition
        self.stopping = stopping
        self.closed = False
        self._buffer = bytearray()
        self._written = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._in_flight: deque[Future[dict[str, Any]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._spool: IO[bytes] | None = None
        self._replacing = "IfMatch" in condition

    def declare(self, metadata: dict[str, str]) -> None:
        """Metadata known before the first byte (S3 fixes it when the upload starts)."""
        if self._upload_id is None:
            self.extra = {**self.extra, "Metadata": {**self.extra.get("Metadata", {}), **metadata}}

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """pyarrow's writers close their sink; the upload ends only with commit or abort."""
        self.closed = True

    def write(self, data: Any) -> int:
        if self.stopping.is_set():
            raise batch.Aborted("stopped during the upload")
        view = memoryview(data).cast("B")
        self._buffer += view
        self._written += len(view)
        if len(self._buffer) >= self._part_bytes():
            self._ship(self._taken())
        return len(view)

    def _taken(self) -> bytearray:
        """The bytes written so far, handed over whole (not copied): a new buffer takes
        the next ones."""
        taken, self._buffer = self._buffer, bytearray()
        return taken

    def _part_bytes(self) -> int:
        return min(PART_BYTES << (len(self._parts) // PART_GROWTH), PUT_LIMIT)

    def commit(self, metadata_rows: dict[str, str]) -> None:
        """Make the output visible under the condition; `metadata_rows` joins its metadata
        where it is still open (a single PutObject). Raises ClientError when the condition
        fails (another worker wrote first)."""
        try:
            if self._spool is not None:
                self._spool.write(self._buffer)
                self._spool.seek(0)
                self._put(self._spool, metadata_rows)
            elif self._upload_id is None:
                self._put(self._taken(), metadata_rows)
            else:
                self._ship(self._taken())
                self._complete()
        except BaseException:
            self.abort()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        """Leave nothing behind: no parts kept, no spool on disk."""
        for future in self._parts:
            future.cancel()
        if self._upload_id is not None:
            self._wait_all()
            with contextlib.suppress(Exception):
                self.s3.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
                )
            self._upload_id = None
        self._release()

    def _ship(self, chunk: bytearray) -> None:
        if self._replacing or self._spool is not None:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile(prefix="batch-output-")  # noqa: SIM115
            self._spool.write(chunk)
            return
        if self._upload_id is None:
            created = self.s3.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self.extra
            )
            self._upload_id = created["UploadId"]
            self._pool = ThreadPoolExecutor(PARTS_IN_FLIGHT, thread_name_prefix="s3-part")
        while len(self._in_flight) >= PARTS_IN_FLIGHT:
            self._in_flight.popleft().result()
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, len(self._parts) + 1, chunk)
        self._parts.append(future)
        self._in_flight.append(future)

    def _upload_part(self, number: int, chunk: bytearray) -> dict[str, Any]:
        part = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=chunk,
        )
        return {"PartNumber": number, "ETag": part["ETag"]}

    def _complete(self) -> None:
        parts = [future.result() for future in self._parts]
        self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
            **self.condition,
        )
        self._upload_id = None

    def _put(self, body: Any, metadata_rows: dict[str, str]) -> None:
        extra = dict(self.extra)
        extra["Metadata"] = {**extra.get("Metadata", {}), **metadata_rows}
        if self._written > PUT_LIMIT:
            raise ValueError(
                f"an output that replaces another is written in one PUT, at most {PUT_LIMIT} bytes"
            )
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body, **extra, **self.condition)

    def _wait_all(self) -> None:
        for future in self._parts:
            with contextlib.suppress(Exception):
                future.result()

    def _release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        self._buffer = bytearray()
