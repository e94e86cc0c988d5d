"""The worker's S3 side: read an input if it is still the announced version, write an output
only if no other worker's write came first, and read and write reports. Inputs are read as
they stream in and outputs uploaded as they are written (`service.s3_stream`,
`service.s3_upload`)."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from botocore.exceptions import ClientError

from service import batch
from service.batch import JobMessage, Report
from service.s3_stream import S3Input
from service.s3_upload import S3Output
from service.worker_logs import log_event

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

    def open_input(self, job: JobMessage, sequential: bool) -> S3Input:
        """The input, if it still is what the event announced, as a file read as it
        streams in: every GET carries If-Match on the event's ETag, so an object replaced
        since the event fails the condition instead of being read, and a late or repeated
        event of an older version never overwrites the newer version's output."""
        assert job.etag is not None
        return S3Input(
            self.s3,
            job.bucket,
            job.key,
            job.etag,
            self.stopping,
            sequential=sequential,
            announced_size=job.size,
        )

    def open_output(
        self, key: str, extra: dict[str, Any], replaces: dict[str, Any] | None
    ) -> S3Output:
        """An output uploaded as it is written, to be written only if it is still what the
        already-done check saw (none, or the object with that ETag)."""
        condition = {"IfMatch": replaces["ETag"]} if replaces else {"IfNoneMatch": "*"}
        return S3Output(self.s3, self.output_bucket, key, extra, condition, self.stopping)

    def commit(self, output: S3Output, metadata: dict[str, str]) -> bool:
        """Make the output visible: of two workers with copies of one event, one writes.
        False when another worker's write came first."""
        try:
            output.commit(metadata)
        except ClientError as exc:
            if batch.error_code(exc) not in batch.CHANGED_ERROR_CODES:
                raise
            log_event(
                logging.INFO, "output_taken", output_key=output.key, error=batch.error_code(exc)
            )
            return False
        return True
