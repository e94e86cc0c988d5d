"""The worker's S3 side: read an input if it is still the announced version, write an output
only if no other worker's write came first, and read and write reports."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.manager import TransferConfig

from service import batch
from service.batch import JobMessage, Report
from service.worker_logs import log_event

MB = 1024 * 1024
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=16 * MB,
    multipart_chunksize=16 * MB,
    max_request_concurrency=8,
    io_chunksize=MB,
)
STREAM_ATTEMPTS = 5
STREAM_ERRORS = (
    ResponseStreamingError,
    ReadTimeoutError,
    ConnectionClosedError,
    IncompleteReadError,
)
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class WorkerS3:
    """S3 calls of one worker, bound to its output bucket, prefix and format."""

    def __init__(
        self, s3: Any, output_bucket: str, output_prefix: str, stopping: threading.Event
    ) -> None:
        self.s3 = s3
        self.output_bucket = output_bucket
        self.output_prefix = output_prefix
        self.stopping = stopping

    def current_etag(self, job: JobMessage) -> str:
        """The input's ETag now, for hand-written messages that carry none."""
        version = {"VersionId": job.version_id} if job.version_id else {}
        try:
            head = self.s3.head_object(Bucket=job.bucket, Key=job.key, **version)
        except ClientError as exc:
            raise batch.input_error(exc) from exc
        return batch.normalize_etag(head["ETag"]) or ""

    def output_head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=self.output_bucket, Key=key)
        except ClientError as exc:
            if batch.error_code(exc) in MISSING_CODES:
                return None
            raise

    def latest_report(self, input_key: str) -> dict[str, Any] | None:
        key = batch.report_key(self.output_prefix, input_key)
        try:
            body = self.s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if batch.error_code(exc) in MISSING_CODES:
                return None
            raise
        report = json.loads(body)
        return report if isinstance(report, dict) else None

    def put_report(self, report: Report) -> None:
        self.s3.put_object(
            Bucket=self.output_bucket,
            Key=batch.report_key(self.output_prefix, report.input_key),
            Body=report.to_json(),
            ContentType="application/json",
        )

    def download(self, job: JobMessage, path: str) -> None:
        """Stream the object to local disk, in bounded memory, if it still is what the event
        announced.

        One GET of the current object with If-Match on the event's ETag: an object replaced
        since the event fails the condition instead of being read, so a late or repeated
        event of an older version never overwrites the newer version's output. A connection
        that breaks mid-stream resumes with a Range request under the same condition.
        """
        assert job.etag is not None
        request = {"Bucket": job.bucket, "Key": job.key, "IfMatch": batch.quoted_etag(job.etag)}
        written, size, failures = 0, None, 0
        with open(path, "wb") as out:
            while size is None or written < size:
                response = self._get(request, written)
                if size is None:
                    size = response["ContentLength"]
                elif "ContentRange" not in response:
                    out.seek(0)
                    out.truncate()
                    written = 0
                written, problem = self._append(response["Body"], out, written, size)
                if problem is not None:
                    failures += 1
                    if failures >= STREAM_ATTEMPTS:
                        raise IncompleteReadError(actual_bytes=written, expected_bytes=size)
                    log_event(logging.WARNING, "download_resumed", key=job.key, error=problem)

    def _get(self, request: dict[str, str], offset: int) -> dict[str, Any]:
        resume = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            return self.s3.get_object(**request, **resume)
        except ClientError as exc:
            raise batch.input_error(exc) from exc

    def _append(self, body: Any, out: Any, written: int, size: int) -> tuple[int, str | None]:
        """Copy a response body; the bytes now on disk, and why the stream ended early."""
        try:
            with contextlib.closing(body):
                for chunk in body.iter_chunks(MB):
                    out.write(chunk)
                    written += len(chunk)
                    if self.stopping.is_set():
                        raise batch.Aborted("stopped during the download")
        except STREAM_ERRORS as exc:
            return out.tell(), str(exc)
        return written, None if written >= size else f"stream ended at byte {written}"

    def upload(
        self,
        path: str,
        key: str,
        extra: dict[str, Any],
        replaces: dict[str, Any] | None,
    ) -> bool:
        """Write the output only if it is still what the already-done check saw (none, or
        the object with that ETag): of two workers with copies of one event, one writes.
        False when another worker's write came first."""
        condition = {"IfMatch": replaces["ETag"]} if replaces else {"IfNoneMatch": "*"}
        try:
            if os.path.getsize(path) < TRANSFER_CONFIG.multipart_threshold:
                with open(path, "rb") as body:
                    self.s3.put_object(
                        Bucket=self.output_bucket, Key=key, Body=body, **extra, **condition
                    )
            else:
                self._upload_parts(path, key, extra, condition)
        except ClientError as exc:
            if batch.error_code(exc) not in batch.CHANGED_ERROR_CODES:
                raise
            log_event(logging.INFO, "output_taken", output_key=key, error=batch.error_code(exc))
            return False
        return True

    def _upload_parts(
        self, path: str, key: str, extra: dict[str, Any], condition: dict[str, str]
    ) -> None:
        """A multipart upload whose completion carries the write condition (s3transfer does
        not pass conditions on)."""
        bucket = self.output_bucket
        upload_id = self.s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        try:
            parts = self._parts(path, key, upload_id)
            self.s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _parts(self, path: str, key: str, upload_id: str) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        with open(path, "rb") as body:
            while chunk := body.read(TRANSFER_CONFIG.multipart_chunksize):
                if self.stopping.is_set():
                    raise batch.Aborted("stopped before the upload")
                number = len(parts) + 1
                part = self.s3.upload_part(
                    Bucket=self.output_bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                )
                parts.append({"PartNumber": number, "ETag": part["ETag"]})
        return parts
