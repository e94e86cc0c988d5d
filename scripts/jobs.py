"""Show the batch transform's input files and their state, from the stack's outputs.

    python scripts/jobs.py                              # stack model-endpoint-local, last 24 h
    python scripts/jobs.py --stack my-stack --since 2d --json

Works unchanged against the local cloud (AWS_ENDPOINT_URL=http://127.0.0.1:4566) and AWS.
Nothing is received from the queues, so looking never changes what the workers do.

How a file's state is derived (a file is an object in the input bucket whose key ends with
one of the stack's TriggerSuffixes, or any key that has a report):

- succeeded / failed: its report (<OutputPrefix>/_reports/<key>.json) was written after the
  upload and is for the object's current ETag; shown when the report is within --since. A file that keeps crashing also has a `failed` report (error internal_error)
  and, after maxReceiveCount receives, its message is in the dead-letter queue.
- in work / queued: no report for the current ETag yet. SQS does not tell which message is in
  flight without receiving it, so the files are ordered by upload time and the oldest
  "messages in flight" (ApproximateNumberOfMessagesNotVisible) of them are shown as in work,
  the next "messages visible" as queued: approximate, like the counts themselves. Pending
  files are shown whatever their age.
- no message: pending files beyond the queue's counts (e.g. the upload's suffix is not a
  trigger suffix, or the message was dead-lettered before any report could be written).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

DEFAULT_STACK = "model-endpoint-local"
DEFAULT_SINCE = "24h"
DEFAULT_PREFIX = "predictions"
DEFAULT_SUFFIXES = ".parquet,.csv,.jsonl"
REPORTS_FOLDER = "_reports"
REPORT_SUFFIX = ".json"
STATES = ("in work", "queued", "no message", "failed", "succeeded")
COLUMNS = ("key", "state", "rows", "seconds", "model", "finished", "message")
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


def parse_since(text: str) -> timedelta:
    """`90s`, `30m`, `1h`, `2d`, `1w` -> a timedelta."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number and s, m, h, d or w (e.g. 1h)")
    return timedelta(**{UNITS[match.group(2)]: float(match.group(1))})


def bare_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"')


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
    for key, report in reports.items():
        if key not in listed:
            rows.append(_from_report(key, report, None))
    pending.sort(key=lambda obj: obj.last_modified)
    for index, obj in enumerate(pending):
        if index < counts.in_flight:
            state = "in work"
        elif index < counts.in_flight + counts.visible:
            state = "queued"
        else:
            state = "no message"
        rows.append(JobRow(obj.key, state, uploaded_at=_iso(obj.last_modified)))
    rows.sort(key=lambda row: (STATES.index(row.state) if row.state in STATES else 0, row.key))
    return rows


def _from_report(key: str, report: dict[str, Any], obj: InputObject | None) -> JobRow:
    message = report.get("message") if report.get("status") != "succeeded" else None
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
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render_table(rows: Sequence[JobRow], counts: QueueCounts) -> str:
    """A fixed-width table that fits a terminal; long messages are cut (use --json for all)."""
    cells = [
        (
            row.key,
            row.state,
            "" if row.rows is None else str(row.rows),
            "" if row.seconds is None else f"{row.seconds:.1f}",
            row.model_version or "",
            row.finished_at or "",
            _cut(row.message or "", 80),
        )
        for row in rows
    ]
    widths = [max([len(name), *(len(c[i]) for c in cells)]) for i, name in enumerate(COLUMNS)]
    lines = ["  ".join(name.ljust(widths[i]) for i, name in enumerate(COLUMNS)).rstrip()]
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(c)).rstrip() for c in cells]
    tally = {state: sum(row.state == state for row in rows) for state in STATES}
    lines.append("")
    lines.append(
        ", ".join(f"{n} {state}" for state, n in tally.items() if n) or "no files in this window"
    )
    lines.append(
        f"queue: {counts.visible} waiting, {counts.in_flight} in flight; "
        f"dead-letter queue: {counts.dead_letters}"
    )
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


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
        prefix = (params.get("OutputPrefix") or DEFAULT_PREFIX).strip("/")
        self.reports_folder = f"{prefix}/{REPORTS_FOLDER}/" if prefix else f"{REPORTS_FOLDER}/"
        suffixes = params.get("TriggerSuffixes") or DEFAULT_SUFFIXES
        self.suffixes = tuple(s.strip().lower() for s in suffixes.split(",") if s.strip())
        self.s3 = session.client("s3")
        self.sqs = session.client("sqs")

    def inputs(self) -> list[InputObject]:
        return [
            InputObject(item["Key"], bare_etag(item["ETag"]), item["LastModified"])
            for item in self._list(self.input_bucket, "")
            if item["Key"].lower().endswith(self.suffixes)
        ]

    def report_times(self) -> dict[str, datetime]:
        """Every report's input key and LastModified (listing only, no reads)."""
        times = {}
        for item in self._list(self.output_bucket, self.reports_folder):
            name = item["Key"][len(self.reports_folder) :]
            if name.endswith(REPORT_SUFFIX) and len(name) > len(REPORT_SUFFIX):
                times[name[: -len(REPORT_SUFFIX)]] = item["LastModified"]
        return times

    def reports(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        folder = self.reports_folder
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

    def _list(self, bucket: str, prefix: str) -> Iterable[dict[str, Any]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            yield from page.get("Contents", [])

    def _read_json(self, key: str) -> Any:
        try:
            return json.loads(self.s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read())
        except (ValueError, self.s3.exceptions.NoSuchKey):
            return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default=DEFAULT_STACK, help=f"stack name ({DEFAULT_STACK})")
    parser.add_argument(
        "--since",
        type=parse_since,
        default=parse_since(DEFAULT_SINCE),
        help=f"only files uploaded or reported within this window ({DEFAULT_SINCE})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--region", help="AWS region (default: boto3's, else us-east-1)")
    args = parser.parse_args(argv)

    session = boto3.session.Session(region_name=args.region)
    if session.region_name is None:
        session = boto3.session.Session(region_name="us-east-1")
    stack = Stack(args.stack, session)
    since = datetime.now(UTC) - args.since
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
