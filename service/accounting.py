"""Every upload accounted for: find the input objects that have no report for their current
version, and queue them again.

Used by ``scripts/jobs.py --requeue-missing`` (a user back from an outage) and by the local
cloud when it restarts. A report (succeeded, failed or skipped) is "for the current version"
when it is newer than the object and records the object's ETag; anything else is queued
again, and the worker's already-done check makes a repeat of a finished file a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from service.batch_contract import (
    REPORT_SUFFIX,
    bare_etag,
    job_message,
    reports_folder,
)

SEND_BATCH_LIMIT = 10


def _listing(s3: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        yield from page.get("Contents", [])


def report_times(s3: Any, output_bucket: str, output_prefix: str, input_prefix: str = "") -> dict:
    """Input key -> its report's LastModified, from one paged listing (no reads)."""
    folder = reports_folder(output_prefix)
    times: dict[str, datetime] = {}
    for item in _listing(s3, output_bucket, folder + input_prefix):
        name = item["Key"][len(folder) :]
        if name.endswith(REPORT_SUFFIX) and len(name) > len(REPORT_SUFFIX):
            times[name[: -len(REPORT_SUFFIX)]] = item["LastModified"]
    return times


def _report_etag(s3: Any, bucket: str, key: str) -> str | None:
    try:
        document = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ValueError, s3.exceptions.NoSuchKey):
        return None
    return bare_etag(document.get("input_etag")) if isinstance(document, dict) else None


def unreported_inputs(
    s3: Any,
    input_bucket: str,
    output_bucket: str,
    output_prefix: str,
    *,
    input_prefix: str = "",
    since: datetime | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Job messages for the input objects (uploaded at or after ``since``) with no report for
    their current ETag, oldest listing order first, at most ``limit`` of them."""
    reported = report_times(s3, output_bucket, output_prefix, input_prefix)
    found = 0
    for item in _listing(s3, input_bucket, input_prefix):
        if limit is not None and found >= limit:
            return
        key, modified = item["Key"], item["LastModified"]
        if since is not None and modified < since:
            continue
        etag = bare_etag(item.get("ETag"))
        at = reported.get(key)
        if at is not None and at >= modified:
            report = reports_folder(output_prefix) + key + REPORT_SUFFIX
            if _report_etag(s3, output_bucket, report) == etag:
                continue
        found += 1
        when = modified.astimezone(UTC).isoformat(timespec="milliseconds")
        yield job_message(input_bucket, key, etag, item.get("Size"), None, when)


class QueueJobsError(RuntimeError):
    """Some jobs could not be queued; the message names them."""


def queue_jobs(sqs: Any, queue_url: str, jobs: Iterable[dict[str, Any]]) -> int:
    """Send the jobs, ten per call; the number sent. Raises QueueJobsError naming the keys
    SQS refused (the others are queued)."""
    sent, refused = 0, []
    batch: list[dict[str, Any]] = []
    for job in [*jobs, None]:
        if job is not None:
            batch.append(job)
        if batch and (job is None or len(batch) == SEND_BATCH_LIMIT):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps(body)} for i, body in enumerate(batch)
            ]
            response = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
            sent += len(response.get("Successful", []))
            refused += [batch[int(f["Id"])]["key"] for f in response.get("Failed", [])]
            batch = []
    if refused:
        raise QueueJobsError(f"{len(refused)} job(s) not queued: {', '.join(refused)}")
    return sent
