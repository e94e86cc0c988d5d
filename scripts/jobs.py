"""Show the batch transform's input files and their state, from the stack's outputs.

    python scripts/jobs.py                              # stack model-endpoint-local, last 24 h
    python scripts/jobs.py --stack my-stack --since 2d --json
    python scripts/jobs.py --requeue-missing --since 6h  # what would be queued again (dry run)
    python scripts/jobs.py --requeue-missing --since 6h --apply

Works unchanged against the local cloud (AWS_ENDPOINT_URL=http://127.0.0.1:4566) and AWS.
Listing never receives from the queues, so looking never changes what the workers do.

Every object uploaded to the input bucket (under InputPrefix) gets a report. How a file's
state is derived:

- succeeded / failed / skipped: its report (<OutputPrefix>/_reports/<key>.json) was written
  after the upload and is for the object's current ETag; shown when the report is within
  --since. `skipped` is a name no job is started for (the message says which names are);
  a file that keeps crashing has a `failed` report (error internal_error) and, after
  maxReceiveCount receives, its message is in the dead-letter queue.
- in work / queued: no report for the current ETag yet. SQS does not tell which message is in
  flight without receiving it, so the files are ordered by upload time and the oldest
  "messages in flight" (ApproximateNumberOfMessagesNotVisible) of them are shown as in work,
  the next "messages visible" as queued: approximate, like the counts themselves. Pending
  files are shown whatever their age.
- no message: pending files beyond the queue's counts (e.g. an event lost in an outage, or a
  message dead-lettered before any report could be written): --requeue-missing queues them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from service.accounting import queue_jobs, unreported_inputs  # noqa: E402
from service.accounting import report_times as list_report_times  # noqa: E402
from service.batch_contract import (  # noqa: E402
    DEFAULT_OUTPUT_PREFIX,
    REPORT_SUFFIX,
    bare_etag,
    reports_folder,
)

DEFAULT_STACK = "model-endpoint-local"
DEFAULT_SINCE = "24h"
DEFAULT_REQUEUE_LIMIT = 1000
STATES = ("in work", "queued", "no message", "failed", "skipped", "succeeded")
COLUMNS = ("key", "state", "rows", "seconds", "model", "finished", "message")
MESSAGE_WIDTH = 80
NO_MESSAGE = "no report and beyond the queue's counts: queue it with --requeue-missing"
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class InputObject:
    key: str
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class QueueCounts:
    visible: int
    in_flight: int
    dead_letters: int


@dataclass(frozen=True)
class JobRow:
    key: str
    state: str
    rows: int | None = None
    seconds: float | None = None
    model_version: str | None = None
    finished_at: str | None = None
    uploaded_at: str | None = None
    message: str | None = None
    model_name: str | None = None


def parse_since(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `2d`, `1w` -> a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number and s, m, h, d or w (e.g. 1h)")
    return timedelta(**{UNITS[match.group(2)]: float(match.group(1))})


def derive_rows(
    inputs: Iterable[InputObject],
    report_times: dict[str, datetime],
    reports: dict[str, dict[str, Any]],
    counts: QueueCounts,
) -> list[JobRow]:
    """One row per file (see the module doc).

    `report_times` has every report's LastModified; `reports` only the documents read (those
    in the time window). A file is finished when a report newer than the upload exists; it is
    shown when that report is in the window. Pending files are always shown.
    """
    listed = {obj.key: obj for obj in inputs}
    rows: list[JobRow] = []
    pending: list[InputObject] = []
    for key, obj in listed.items():
        reported_at = report_times.get(key)
        report = reports.get(key)
        if reported_at is None or reported_at < obj.last_modified:
            pending.append(obj)
        elif report is None:
            continue
        elif bare_etag(report.get("input_etag")) == obj.etag:
            rows.append(_from_report(key, report, obj))
        else:
            pending.append(obj)
    rows += [
        _from_report(key, report, None) for key, report in reports.items() if key not in listed
    ]
    rows += _pending_rows(pending, counts)
    rows.sort(key=lambda row: (STATES.index(row.state) if row.state in STATES else 0, row.key))
    return rows


def _pending_rows(pending: list[InputObject], counts: QueueCounts) -> list[JobRow]:
    """Oldest first: the in-flight count are in work, the visible count queued, the rest
    have no message."""
    rows = []
    for index, obj in enumerate(sorted(pending, key=lambda obj: obj.last_modified)):
        message = None
        if index < counts.in_flight:
            state = "in work"
        elif index < counts.in_flight + counts.visible:
            state = "queued"
        else:
            state, message = "no message", NO_MESSAGE
        rows.append(JobRow(obj.key, state, uploaded_at=_iso(obj.last_modified), message=message))
    return rows


def _from_report(key: str, report: dict[str, Any], obj: InputObject | None) -> JobRow:
    message = reason(report) if report.get("status") != "succeeded" else None
    if obj is None:
        message = "; ".join(filter(None, ["input object no longer listed", message]))
    return JobRow(
        key=key,
        state=str(report.get("status", "?")),
        rows=report.get("rows"),
        seconds=report.get("seconds"),
        model_version=report.get("model_version"),
        finished_at=report.get("finished_at"),
        uploaded_at=_iso(obj.last_modified) if obj else None,
        message=message,
        model_name=report.get("model_name"),
    )


def reason(report: dict[str, Any]) -> str | None:
    """The report's message without the input's s3:// URI, which the key column shows."""
    text = report.get("message")
    if not text:
        return None
    uri = f"s3://{report.get('input_bucket')}/{report.get('input_key')}"
    if text.startswith(uri):
        text = text[len(uri) :].lstrip(": ").strip()
    return text


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def display_width(text: str) -> int:
    """Terminal columns: wide and full-width (CJK) characters take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def cut(text: str, width: int) -> str:
    """One line of at most `width` columns, ending with ... when something was cut."""
    text = " ".join(text.split())
    if display_width(text) <= width:
        return text
    kept = ""
    for char in text:
        if display_width(kept + char) > width - 3:
            break
        kept += char
    return kept + "..."


def model_label(row: JobRow) -> str:
    if row.model_name and row.model_version:
        return f"{row.model_name}:{row.model_version}"
    return row.model_version or row.model_name or ""


def render_table(rows: Sequence[JobRow], counts: QueueCounts) -> str:
    """A fixed-width table that fits a terminal; long messages are cut (use --json for all)."""
    cells = [
        (
            row.key,
            row.state,
            "" if row.rows is None else str(row.rows),
            "" if row.seconds is None else f"{row.seconds:.1f}",
            model_label(row),
            row.finished_at or "",
            cut(row.message or "", MESSAGE_WIDTH),
        )
        for row in rows
    ]
    widths = [
        max([len(name), *(display_width(c[i]) for c in cells)]) for i, name in enumerate(COLUMNS)
    ]
    lines = ["  ".join(pad(cell, widths[i]) for i, cell in enumerate(c)).rstrip() for c in cells]
    header = "  ".join(pad(name, widths[i]) for i, name in enumerate(COLUMNS)).rstrip()
    tally = {state: sum(row.state == state for row in rows) for state in STATES}
    summary = ", ".join(f"{n} {state}" for state, n in tally.items() if n)
    return "\n".join(
        [
            header,
            *lines,
            "",
            summary or "no files in this window",
            f"queue: {counts.visible} waiting, {counts.in_flight} in flight; "
            f"dead-letter queue: {counts.dead_letters}",
        ]
    )


class Stack:
    """The stack's resources, read from its outputs and parameters."""

    def __init__(self, name: str, session: boto3.session.Session) -> None:
        described = session.client("cloudformation").describe_stacks(StackName=name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
        params = {
            p["ParameterKey"]: p.get("ParameterValue") for p in described.get("Parameters", [])
        }
        missing = [
            n for n in ("InputBucketName", "OutputBucketName", "JobQueueUrl") if n not in outputs
        ]
        if missing:
            raise SystemExit(f"stack {name} has no output {', '.join(missing)}")
        self.input_bucket = outputs["InputBucketName"]
        self.output_bucket = outputs["OutputBucketName"]
        self.queue_url = outputs["JobQueueUrl"]
        self.dlq_url = outputs.get("DeadLetterQueueUrl")
        self.prefix = (params.get("OutputPrefix") or DEFAULT_OUTPUT_PREFIX).strip("/")
        self.input_prefix = params.get("InputPrefix") or ""
        self.s3 = session.client("s3")
        self.sqs = session.client("sqs")

    def inputs(self) -> list[InputObject]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.input_bucket, Prefix=self.input_prefix
        )
        return [
            InputObject(item["Key"], bare_etag(item["ETag"]) or "", item["LastModified"])
            for page in pages
            for item in page.get("Contents", [])
        ]

    def report_times(self) -> dict[str, datetime]:
        """Every report's input key and LastModified (listing only, no reads)."""
        return list_report_times(self.s3, self.output_bucket, self.prefix, self.input_prefix)

    def reports(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        folder = reports_folder(self.prefix)
        keys = list(keys)
        with ThreadPoolExecutor(max_workers=16) as pool:
            documents = pool.map(lambda key: self._read_json(folder + key + REPORT_SUFFIX), keys)
            return {
                key: doc for key, doc in zip(keys, documents, strict=True) if isinstance(doc, dict)
            }

    def counts(self) -> QueueCounts:
        queue = self._attributes(self.queue_url)
        dead = self._attributes(self.dlq_url) if self.dlq_url else {}
        return QueueCounts(
            visible=int(queue.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(queue.get("ApproximateNumberOfMessagesNotVisible", 0)),
            dead_letters=int(dead.get("ApproximateNumberOfMessages", 0)),
        )

    def _attributes(self, url: str) -> dict[str, str]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]

    def _read_json(self, key: str) -> Any:
        try:
            return json.loads(self.s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read())
        except (ValueError, self.s3.exceptions.NoSuchKey):
            return None


def requeue_missing(stack: Stack, since: datetime | None, limit: int, apply: bool) -> int:
    """Print (and with --apply queue) every input with no report for its current version."""
    jobs = list(
        unreported_inputs(
            stack.s3,
            stack.input_bucket,
            stack.output_bucket,
            stack.prefix,
            input_prefix=stack.input_prefix,
            since=since,
            limit=limit,
        )
    )
    verb = "queue" if apply else "would queue"
    for job in jobs:
        print(f"{verb} s3://{job['bucket']}/{job['key']} (etag {job['etag']}, {job['size']} B)")
    if len(jobs) == limit:
        print(f"stopped at --limit {limit}: run again (after these are reported) for more")
    if not apply:
        print(f"{len(jobs)} file(s) without a report; dry run: add --apply to queue them")
        return 0
    print(f"queued {queue_jobs(stack.sqs, stack.queue_url, jobs)} file(s)")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stack", default=DEFAULT_STACK, help=f"stack name ({DEFAULT_STACK})")
    parser.add_argument(
        "--since",
        type=parse_since,
        help=f"only files uploaded or reported within this window (table: {DEFAULT_SINCE}; "
        "--requeue-missing: every file)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--requeue-missing",
        action="store_true",
        help="list every input with no report for its current version (dry run)",
    )
    parser.add_argument("--apply", action="store_true", help="with --requeue-missing: queue them")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_REQUEUE_LIMIT,
        help=f"with --requeue-missing: at most this many files ({DEFAULT_REQUEUE_LIMIT})",
    )
    parser.add_argument("--region", help="AWS region (default: boto3's, else us-east-1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = boto3.session.Session(region_name=args.region)
    if session.region_name is None:
        session = boto3.session.Session(region_name="us-east-1")
    stack = Stack(args.stack, session)
    if args.requeue_missing:
        since = datetime.now(UTC) - args.since if args.since else None
        return requeue_missing(stack, since, max(1, args.limit), args.apply)
    since = datetime.now(UTC) - (args.since or parse_since(DEFAULT_SINCE))
    counts = stack.counts()
    times = stack.report_times()
    recent = stack.reports(key for key, moment in times.items() if moment >= since)
    rows = derive_rows(stack.inputs(), times, recent, counts)
    if args.json:
        document = {"queue": asdict(counts), "files": [asdict(row) for row in rows]}
        print(json.dumps(document, indent=1, ensure_ascii=False))
    else:
        print(render_table(rows, counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
