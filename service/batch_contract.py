"""The batch transform's names, shared by the trigger function, the worker and the scripts.

Which input names the worker reads, where an input's output and report go, and what a report
holds are contracts (DESIGN.md, "Batch transform"): each is defined here once. Standard
library only, because the Lambda package carries this module beside ``lambda/handler.py``
(see ``LAMBDA_MODULES``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

# The service modules the Lambda package carries besides lambda/ (paths from the repo root).
LAMBDA_MODULES = ("service/__init__.py", "service/batch_contract.py", "service/jsonlog.py")

COMPRESSED_SUFFIX = ".gz"
FORMAT_SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
GZIP_FORMATS = frozenset({"csv", "jsonl"})  # parquet compresses inside the file
OUTPUT_SUFFIXES = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}
DEFAULT_OUTPUT_PREFIX = "predictions"  # the template's OutputPrefix default
REPORTS_FOLDER = "_reports"
REPORT_SUFFIX = ".json"

SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"
UNSUPPORTED_NAME = "unsupported_name"


@dataclass(frozen=True)
class FileFormat:
    """A file's data format, read from its key: parquet, csv or jsonl, maybe gzipped."""

    name: str
    gzip: bool = False


def file_format(key: str) -> FileFormat | None:
    """The format of the object ``key`` (case-insensitive), or None when the worker cannot
    read it: an unknown extension, or ``.gz`` on a format that is not streamed as text."""
    lower = key.lower()
    gzipped = lower.endswith(COMPRESSED_SUFFIX)
    base = lower.removesuffix(COMPRESSED_SUFFIX)
    for suffix, name in FORMAT_SUFFIXES.items():
        if base.endswith(suffix):
            return None if gzipped and name not in GZIP_FORMATS else FileFormat(name, gzipped)
    return None


def readable_suffixes() -> tuple[str, ...]:
    """Every suffix the worker reads, for messages that tell a user how to name a file."""
    plain = tuple(FORMAT_SUFFIXES)
    zipped = tuple(s + COMPRESSED_SUFFIX for s, n in FORMAT_SUFFIXES.items() if n in GZIP_FORMATS)
    return plain + zipped


def is_triggered(key: str, trigger_suffixes: Iterable[str]) -> bool:
    """True when the worker reads ``key`` and it ends (any letter case) with a trigger suffix,
    or with one followed by ``.gz``: ``.csv`` starts ``a.CSV`` and ``a.csv.gz``."""
    if file_format(key) is None:
        return False
    lower = key.lower().removesuffix(COMPRESSED_SUFFIX)
    return any(
        key.lower().endswith(s.lower()) or lower.endswith(s.lower()) for s in trigger_suffixes
    )


def unsupported_reason(key: str, trigger_suffixes: Iterable[str]) -> str:
    """What a ``skipped`` report says about a name that starts no job, and how to fix it."""
    suffixes = ", ".join(trigger_suffixes)
    readable = ", ".join(readable_suffixes())
    return (
        f"not transformed: the name does not end with a trigger suffix ({suffixes}, any "
        f"letter case, .gz allowed for text formats); the worker reads {readable}; rename "
        "the file and upload it again"
    )


def join_key(*parts: str) -> str:
    """Join key parts with single slashes, ignoring empty parts (an empty OUTPUT_PREFIX)."""
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


def output_folder(prefix: str, model_name: str, model_version: str) -> str:
    """The folder of one model version's outputs."""
    return join_key(prefix, f"model={model_name}", f"version={model_version}")


def output_key(
    prefix: str, model_name: str, model_version: str, input_key: str, output_format: str
) -> str:
    """The whole input key plus the output's extension, as SageMaker appends ``.out``:
    ``data/a.csv`` -> ``<prefix>/model=m/version=1/data/a.csv.parquet``; two inputs never
    share an output."""
    if output_format not in OUTPUT_SUFFIXES:
        raise ValueError(f"unknown output format {output_format!r}")
    folder = output_folder(prefix, model_name, model_version)
    return folder + "/" + input_key + OUTPUT_SUFFIXES[output_format]


def reports_folder(prefix: str) -> str:
    """Where reports live, with a trailing slash (a listing prefix)."""
    return join_key(prefix, REPORTS_FOLDER) + "/"


def report_key(prefix: str, input_key: str) -> str:
    """Where the latest report for one input key goes."""
    return reports_folder(prefix) + input_key + REPORT_SUFFIX


def input_key_from_report_key(prefix: str, key: str) -> str | None:
    """Inverse of report_key, for listings; None for keys that are not reports."""
    start = reports_folder(prefix)
    if not key.startswith(start) or not key.endswith(REPORT_SUFFIX):
        return None
    return key[len(start) : -len(REPORT_SUFFIX)] or None


def bare_etag(etag: str | None) -> str | None:
    """ETags come quoted from S3 responses and bare in S3 events; compare them bare."""
    if etag is None:
        return None
    return etag.strip().strip('"') or None


@dataclass(frozen=True)
class Report:
    """The JSON document written for every input: the latest attempt for its key."""

    status: str
    input_bucket: str
    input_key: str
    input_etag: str | None
    input_version_id: str | None
    rows: int | None
    seconds: float
    model_name: str | None
    model_version: str | None
    output_bucket: str | None
    output_key: str | None
    message: str | None
    error: str | None
    finished_at: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1).encode()


def now_text(now: datetime | None = None) -> str:
    """A report's timestamp: UTC, milliseconds, ``Z``."""
    moment = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


def skipped_report(
    bucket: str, key: str, etag: str | None, version_id: str | None, reason: str
) -> Report:
    """The report of an upload no job is started for (its name is not a supported one)."""
    return Report(
        status=SKIPPED,
        input_bucket=bucket,
        input_key=key,
        input_etag=bare_etag(etag),
        input_version_id=version_id,
        rows=None,
        seconds=0.0,
        model_name=None,
        model_version=None,
        output_bucket=None,
        output_key=None,
        message=reason,
        error=UNSUPPORTED_NAME,
        finished_at=now_text(),
    )


MESSAGE_FIELDS = ("bucket", "key", "etag", "size", "version_id", "event_time")


def job_message(
    bucket: str,
    key: str,
    etag: str | None,
    size: int | None,
    version_id: str | None,
    event_time: str | None,
) -> dict[str, object]:
    """A job queue message body: exactly MESSAGE_FIELDS, the key decoded, the ETag bare."""
    values = (bucket, key, bare_etag(etag), size, version_id, event_time)
    return dict(zip(MESSAGE_FIELDS, values, strict=True))
