"""Batch transform core: queue message -> output plan -> report, with no I/O.

The SQS/S3 adapter in ``service.worker`` only moves bytes; every decision it takes (where an
output goes, whether a file is already done, what a failure means for the message) is made by
the pure functions here, so it can be tested without a cloud.
"""

from __future__ import annotations

import enum
import gzip
import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError

from service import codecs
from service.batch_contract import (
    FAILED,
    SKIPPED,
    SUCCEEDED,
    Report,
    input_key_from_report_key,
    now_text,
    output_key,
    report_key,
)
from service.batch_contract import bare_etag as normalize_etag
from service.errors import InputError

__all__ = [
    "SKIPPED",
    "SUCCEEDED",
    "input_key_from_report_key",
    "normalize_etag",
    "output_key",
    "report_key",
]

OUTPUT_CONTENT_TYPES = {"parquet": codecs.PARQUET, "csv": codecs.CSV, "jsonl": codecs.JSONLINES}

META_INPUT_ETAG = "input-etag"
META_INPUT_VERSION_ID = "input-version-id"
META_MODEL_NAME = "model-name"
META_MODEL_VERSION = "model-version"
META_ROWS = "rows"

TRANSIENT_ERROR_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "RequestThrottled",
        "RequestThrottledException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "KMS.ThrottlingException",
        "ConditionalRequestConflict",
    }
)
GONE_ERROR_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "404", "NotFound"})
CHANGED_ERROR_CODES = frozenset({"PreconditionFailed", "412"})
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    gzip.BadGzipFile,
    zlib.error,
    EOFError,
    UnicodeDecodeError,
    json.JSONDecodeError,
    pd.errors.ParserError,
    pd.errors.EmptyDataError,
)


class InvalidMessage(ValueError):
    """A queue message body that is not a job message; it can never succeed."""


class InputGone(Exception):
    """The input object (or its bucket or version) no longer exists."""


class InputChanged(Exception):
    """The input object was replaced after the event: a newer event owns it."""


class Aborted(Exception):
    """The worker was asked to stop while a file was in work."""


class OutputChanged(Exception):
    """Another worker wrote a different output while this one worked on the file."""


@dataclass(frozen=True)
class JobMessage:
    """One input object to transform, as the Lambda puts it on the queue (key decoded)."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    version_id: str | None = None
    event_time: str | None = None

    def with_etag(self, etag: str) -> JobMessage:
        """Same message with the ETag S3 reports now (for hand-written messages without one)."""
        return JobMessage(self.bucket, self.key, etag, self.size, self.version_id, self.event_time)


def parse_message(body: str | bytes) -> JobMessage:
    """Read a queue message body; raise InvalidMessage saying what is wrong with it."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("body is not a JSON object")
    if data.get("Event") == "s3:TestEvent":
        raise InvalidMessage("S3 test event (sent when a notification is configured)")
    bucket = _required_text(data, "bucket")
    key = _required_text(data, "key")
    size = data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise InvalidMessage(f"'size' must be a non-negative integer, got {size!r}")
    return JobMessage(
        bucket=bucket,
        key=key,
        etag=normalize_etag(_optional_text(data, "etag")),
        size=size,
        version_id=_optional_text(data, "version_id"),
        event_time=_optional_text(data, "event_time"),
    )


def _required_text(data: Mapping[str, Any], field: str) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value:
        raise InvalidMessage(f"'{field}' must be a non-empty string, got {value!r}")
    return value


def _optional_text(data: Mapping[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidMessage(f"'{field}' must be a string or null, got {value!r}")
    return value


def quoted_etag(etag: str) -> str:
    """The form S3 (and moto's HeadObject) expects in an If-Match header."""
    return f'"{normalize_etag(etag)}"'


def output_metadata(
    message: JobMessage, model_name: str, model_version: str, rows: int
) -> dict[str, str]:
    """S3 user metadata recorded on an output; it is what makes a repeated event a no-op."""
    values = {
        META_INPUT_ETAG: message.etag or "",
        META_INPUT_VERSION_ID: message.version_id or "",
        META_MODEL_NAME: model_name,
        META_MODEL_VERSION: model_version,
        META_ROWS: str(rows),
    }
    return {name: _ascii(value) for name, value in values.items()}


def _ascii(value: str) -> str:
    """S3 metadata travels in HTTP headers, so it must be ASCII."""
    return value if value.isascii() else quote(value, safe="")


def already_done(
    existing_metadata: Mapping[str, str] | None, message: JobMessage, model_version: str
) -> bool:
    """True when the output for this input version and model version exists already."""
    if existing_metadata is None or message.etag is None:
        return False
    same_input = normalize_etag(existing_metadata.get(META_INPUT_ETAG)) == message.etag
    return same_input and existing_metadata.get(META_MODEL_VERSION) == _ascii(model_version)


def make_report(
    message: JobMessage,
    *,
    status: str,
    seconds: float,
    model_name: str | None,
    model_version: str | None,
    output_bucket: str | None = None,
    output_key: str | None = None,
    rows: int | None = None,
    text: str | None = None,
    error: str | None = None,
    now: datetime | None = None,
) -> Report:
    """Build a report; ``text`` is the human message, ``error`` the machine code."""
    return Report(
        status=status,
        input_bucket=message.bucket,
        input_key=message.key,
        input_etag=message.etag,
        input_version_id=message.version_id,
        rows=rows,
        seconds=round(seconds, 3),
        model_name=model_name,
        model_version=model_version,
        output_bucket=output_bucket,
        output_key=output_key,
        message=text,
        error=error,
        finished_at=now_text(now),
    )


class Action(enum.Enum):
    """What to do with the queue message after an attempt."""

    DELETE = "delete"  # finished (succeeded, failed for good, or nothing to do)
    RETRY_SOON = "retry_soon"  # transient: make it visible again after a short backoff
    KEEP = "keep"  # unknown: leave it; after maxReceiveCount it goes to the DLQ
    RELEASE = "release"  # shutting down: make it visible at once for another worker


@dataclass(frozen=True)
class Failure:
    """How an exception raised while working on a file is handled."""

    status: str  # for the log line: failed | skipped | retry | error | aborted
    action: Action
    error: str
    message: str
    write_report: bool


def classify(exc: BaseException, message: JobMessage, file_format: str | None) -> Failure:
    """Map an exception from one file to the fate of its message and the report text."""
    where = f"s3://{message.bucket}/{message.key}"
    if isinstance(exc, Aborted):
        return Failure(
            "aborted", Action.RELEASE, "aborted", "worker stopping; file handed back", False
        )
    if isinstance(exc, InputError):
        return Failure(FAILED, Action.DELETE, exc.code, f"{where}: {exc.message}", True)
    if isinstance(exc, DECODE_ERRORS):
        kind = file_format or "this format"
        text = f"{where} could not be read as {kind} ({type(exc).__name__}: {exc}); "
        text += "check that the file is complete and that its name matches its content"
        return Failure(FAILED, Action.DELETE, "unreadable_file", text, True)
    if isinstance(exc, InputGone):
        text = f"{where} no longer exists ({exc}); upload it again to transform it"
        return Failure(FAILED, Action.DELETE, "input_gone", text, True)
    if isinstance(exc, InputChanged):
        text = f"{where} changed after this event ({exc}); the event for the new version owns it"
        return Failure(SKIPPED, Action.DELETE, "input_changed", text, False)
    if isinstance(exc, OutputChanged):
        return Failure("retry", Action.RETRY_SOON, "output_changed", f"{where}: {exc}", False)
    if is_transient(exc):
        return Failure(
            "retry", Action.RETRY_SOON, "transient", f"{type(exc).__name__}: {exc}", False
        )
    text = f"unexpected {type(exc).__name__}: {exc}; the message will be retried and goes "
    text += "to the dead-letter queue when it keeps failing"
    return Failure("error", Action.KEEP, "internal_error", text, True)


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx and broken connections: worth another try later, on any worker."""
    if isinstance(
        exc, BotoConnectionError | HTTPClientError | IncompleteReadError | RetriesExceededError
    ):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return error_code(exc) in TRANSIENT_ERROR_CODES or status >= 500
    return False


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def input_error(exc: ClientError) -> Exception:
    """Translate a ClientError from reading the input into what it means for the job."""
    code = error_code(exc)
    if code in GONE_ERROR_CODES:
        return InputGone(code)
    if code in CHANGED_ERROR_CODES:
        return InputChanged("its ETag no longer matches")
    return exc


def retry_delay(receive_count: int, ceiling: int) -> int:
    """Visibility backoff for transient failures: 5 s, 10 s, 20 s ... capped."""
    return max(1, min(ceiling, 5 * 2 ** max(0, receive_count - 1)))
