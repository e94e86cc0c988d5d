"""Batch trigger: S3 uploads become queue messages, and the queue's backlog becomes ECS workers.

Entry point ``handler.handler(event, context)``. It accepts an S3 event notification (every
record), an S3 event delivered through EventBridge ("Object Created"), an EventBridge
scheduled event, or an empty event. Every invocation ends by reconciling the number of
worker tasks with the queue's backlog, so a scheduled invocation restarts work that would
otherwise strand. Only the standard library and boto3 are used, so the same file runs in
the Lambda runtime and in the local one.

Key suffixes: a key is accepted when, compared case-insensitively, it ends with one of
``TRIGGER_SUFFIXES`` or with one of them followed by ``.gz`` (``.csv`` accepts
``a.CSV`` and ``a.csv.gz``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError

MESSAGE_FIELDS = ("bucket", "key", "etag", "size", "version_id", "event_time")
SEND_BATCH_LIMIT = 10
RUN_TASK_LIMIT = 10
DESCRIBE_TASKS_LIMIT = 100
SEND_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.2
COMPRESSED_SUFFIX = ".gz"
LAUNCH_TYPES = ("FARGATE", "EC2", "EXTERNAL")
PUBLIC_IP_CHOICES = ("ENABLED", "DISABLED")
STARTED_BY_PATTERN = re.compile(r"[A-Za-z0-9_/-]{1,128}")

log = logging.getLogger("batch_trigger")
_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class ConfigError(ValueError):
    """An environment variable is missing or holds a value the function cannot use."""


class QueueError(RuntimeError):
    """Some objects could not be queued; raising makes Lambda redeliver the whole event."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so CloudWatch Logs Insights can filter on every field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id:
            entry["request_id"] = request_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _setup_logging() -> None:
    """Log JSON to stdout and keep the runtime's own root handler from printing it twice."""
    if not log.handlers:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(JsonFormatter())
        log.addHandler(stream)
    log.setLevel(logging.INFO)
    log.propagate = False


_setup_logging()


def _info(message: str, **fields: Any) -> None:
    log.info(message, extra={"fields": fields})


def _warning(message: str, **fields: Any) -> None:
    log.warning(message, extra={"fields": fields})


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """The function's environment, validated once per container."""

    job_queue_url: str
    cluster_name: str
    task_definition: str
    worker_container: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: str
    max_workers: int
    files_per_worker: int
    trigger_suffixes: tuple[str, ...]
    started_by: str
    launch_type: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config:
        """Read every variable; one ConfigError lists each bad one and what it accepts."""
        values: dict[str, Any] = {}
        problems: list[str] = []
        for field, read in _ENVIRONMENT.items():
            try:
                values[field] = read(env)
            except ConfigError as error:
                problems.append(str(error))
        if values.get("launch_type") == "FARGATE" and values.get("subnets") == ():
            problems.append(
                f"SUBNETS is required when LAUNCH_TYPE is FARGATE; accepts {SUBNET_LIST}"
            )
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(**values)


def _required(env: Mapping[str, str], name: str, accepts: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required; accepts {accepts}")
    return value


def _positive_int(env: Mapping[str, str], name: str) -> int:
    raw = _required(env, name, "a whole number >= 1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={raw!r} is invalid; accepts a whole number >= 1")
    return value


def _choice(env: Mapping[str, str], name: str, choices: Sequence[str], default: str) -> str:
    raw = env.get(name, "").strip() or default
    if raw.upper() not in choices:
        raise ConfigError(f"{name}={raw!r} is invalid; accepts one of {', '.join(choices)}")
    return raw.upper()


def _names(env: Mapping[str, str], name: str, accepts: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in env.get(name, "").split(","))
    if any(not item for item in items) and any(items):
        raise ConfigError(f"{name}={env[name]!r} has an empty entry; accepts {accepts}")
    return tuple(item for item in items if item)


def _suffixes(env: Mapping[str, str], name: str, default: str) -> tuple[str, ...]:
    raw = env.get(name, "").strip() or default
    accepts = "a comma-separated list of key suffixes starting with '.', e.g. .parquet,.csv,.jsonl"
    suffixes = tuple(item.strip().lower() for item in raw.split(","))
    if any(len(item) < 2 or not item.startswith(".") or "/" in item for item in suffixes):
        raise ConfigError(f"{name}={raw!r} is invalid; accepts {accepts}")
    return suffixes


def _started_by(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip() or default
    if not STARTED_BY_PATTERN.fullmatch(raw):
        raise ConfigError(
            f"{name}={raw!r} is invalid; accepts 1-128 letters, digits, '-', '_' or '/'"
        )
    return raw


SUBNET_LIST = "a comma-separated list of subnet IDs (subnet-...)"
GROUP_LIST = "a comma-separated list of security group IDs (sg-...)"
TASK_DEFINITION_FORMS = "the worker task definition's family, family:revision or ARN"

_ENVIRONMENT: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "job_queue_url": lambda env: _required(env, "JOB_QUEUE_URL", "the URL of the job queue"),
    "cluster_name": lambda env: _required(env, "CLUSTER_NAME", "an ECS cluster name or ARN"),
    "task_definition": lambda env: _required(env, "TASK_DEFINITION", TASK_DEFINITION_FORMS),
    "worker_container": lambda env: env.get("WORKER_CONTAINER", "").strip() or "worker",
    "subnets": lambda env: _names(env, "SUBNETS", SUBNET_LIST),
    "security_groups": lambda env: _names(env, "SECURITY_GROUPS", GROUP_LIST),
    "assign_public_ip": lambda env: _choice(env, "ASSIGN_PUBLIC_IP", PUBLIC_IP_CHOICES, "DISABLED"),
    "max_workers": lambda env: _positive_int(env, "MAX_WORKERS"),
    "files_per_worker": lambda env: _positive_int(env, "FILES_PER_WORKER"),
    "trigger_suffixes": lambda env: _suffixes(env, "TRIGGER_SUFFIXES", ".parquet,.csv,.jsonl"),
    "started_by": lambda env: _started_by(env, "STARTED_BY", "batch-worker"),
    "launch_type": lambda env: _choice(env, "LAUNCH_TYPE", LAUNCH_TYPES, "FARGATE"),
}


@cache
def load_config() -> Config:
    """Parse the environment on a container's first invocation and reuse it afterwards."""
    return Config.from_env(os.environ)


_client_lock = threading.Lock()


@cache
def client(service: str) -> Any:
    """One client per service and container; boto3 picks up AWS_ENDPOINT_URL and the region."""
    with _client_lock:
        return boto3.client(service, config=BotoConfig(retries={"mode": "standard"}))


# --- events ---------------------------------------------------------------------------------


class RecordError(ValueError):
    """A record lacks a field the message needs; it is skipped, the others go on."""


@dataclass(frozen=True)
class S3Object:
    """One uploaded object as the worker needs it: the key decoded, the ETag without quotes."""

    bucket: str
    key: str
    etag: str
    size: int
    version_id: str | None
    event_time: str

    @classmethod
    def from_notification(cls, record: Mapping[str, Any]) -> S3Object:
        """Read a record of an S3 event notification (keys arrive URL-encoded)."""
        s3 = _field(record, "s3")
        obj = _field(s3, "object")
        return cls._build(
            bucket=_field(_field(s3, "bucket"), "name"),
            encoded_key=_field(obj, "key"),
            etag=obj.get("eTag"),
            size=obj.get("size"),
            version_id=obj.get("versionId"),
            event_time=_field(record, "eventTime"),
        )

    @classmethod
    def from_eventbridge(cls, event: Mapping[str, Any]) -> S3Object:
        """Read an EventBridge "Object Created" event (same fields, other names)."""
        detail = _field(event, "detail")
        obj = _field(detail, "object")
        return cls._build(
            bucket=_field(_field(detail, "bucket"), "name"),
            encoded_key=_field(obj, "key"),
            etag=obj.get("etag"),
            size=obj.get("size"),
            version_id=obj.get("version-id"),
            event_time=_field(event, "time"),
        )

    @classmethod
    def _build(
        cls,
        *,
        bucket: Any,
        encoded_key: Any,
        etag: Any,
        size: Any,
        version_id: Any,
        event_time: Any,
    ) -> S3Object:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RecordError(f"object size {size!r} is not a whole number")
        key = unquote_plus(str(encoded_key))
        if not key:
            raise RecordError("empty object key")
        return cls(
            bucket=str(bucket),
            key=key,
            etag=str(etag or "").strip('"'),
            size=size,
            version_id=str(version_id) if version_id else None,
            event_time=str(event_time),
        )

    def message(self) -> dict[str, Any]:
        """The queue message body (contract: exactly MESSAGE_FIELDS)."""
        return {name: getattr(self, name) for name in MESSAGE_FIELDS}


def _field(container: Any, name: str) -> Any:
    if not isinstance(container, Mapping) or container.get(name) in (None, ""):
        raise RecordError(f"missing field {name!r}")
    return container[name]


@dataclass(frozen=True)
class ParsedEvent:
    """What an invocation has to queue, and how many records it set aside."""

    kind: str
    records: int
    objects: tuple[S3Object, ...]
    skipped: int


def key_matches(key: str, suffixes: Iterable[str]) -> bool:
    """True when the key ends with a suffix, or a suffix plus .gz, in any letter case."""
    lowered = key.lower()
    return any(
        lowered.endswith(suffix) or lowered.endswith(suffix + COMPRESSED_SUFFIX)
        for suffix in suffixes
    )


def parse_event(event: Any, suffixes: Sequence[str]) -> ParsedEvent:
    """Turn any accepted event shape into the objects to queue; unknown shapes only rescale."""
    if isinstance(event, Mapping) and isinstance(event.get("Records"), list):
        return _parse_notification(event["Records"], suffixes)
    if isinstance(event, Mapping) and event.get("Event") == "s3:TestEvent":
        _info("ignored S3 test event", bucket=event.get("Bucket"))
        return ParsedEvent("s3-test", 0, (), 0)
    if isinstance(event, Mapping) and event.get("source") == "aws.s3":
        return _parse_eventbridge(event, suffixes)
    if isinstance(event, Mapping) and event.get("detail-type") == "Scheduled Event":
        return ParsedEvent("schedule", 0, (), 0)
    if event:
        shape = sorted(map(str, event)) if isinstance(event, Mapping) else type(event).__name__
        _warning("unrecognised event; rescaling only", event_shape=shape)
    return ParsedEvent("manual", 0, (), 0)


def _parse_notification(records: list[Any], suffixes: Sequence[str]) -> ParsedEvent:
    objects: list[S3Object] = []
    for index, record in enumerate(records):
        name = record.get("eventName", "") if isinstance(record, Mapping) else ""
        if not str(name).startswith("ObjectCreated:"):
            _warning("skipped record: not an ObjectCreated event", index=index, event_name=name)
            continue
        found = _accept(S3Object.from_notification, record, index, suffixes)
        if found:
            objects.append(found)
    return ParsedEvent("s3", len(records), tuple(objects), len(records) - len(objects))


def _parse_eventbridge(event: Mapping[str, Any], suffixes: Sequence[str]) -> ParsedEvent:
    if event.get("detail-type") != "Object Created":
        _warning("skipped S3 EventBridge event", detail_type=event.get("detail-type"))
        return ParsedEvent("eventbridge-s3", 1, (), 1)
    found = _accept(S3Object.from_eventbridge, event, 0, suffixes)
    return ParsedEvent("eventbridge-s3", 1, (found,) if found else (), 0 if found else 1)


def _accept(
    parse: Callable[[Mapping[str, Any]], S3Object],
    source: Mapping[str, Any],
    index: int,
    suffixes: Sequence[str],
) -> S3Object | None:
    """Parse one record; a broken one is logged and skipped so it never costs the others."""
    try:
        found = parse(source)
    except RecordError as error:
        _warning("skipped record: malformed", index=index, reason=str(error))
        return None
    if not key_matches(found.key, suffixes):
        _info("skipped record: suffix not configured", bucket=found.bucket, key=found.key)
        return None
    return found


# --- queue ----------------------------------------------------------------------------------


def queue_objects(config: Config, objects: Sequence[S3Object]) -> list[S3Object]:
    """Send one message per object, ten per call; returns the objects that could not be sent."""
    failed: list[S3Object] = []
    for start in range(0, len(objects), SEND_BATCH_LIMIT):
        failed.extend(_send_batch(config, objects[start : start + SEND_BATCH_LIMIT]))
    return failed


def _send_batch(config: Config, batch: Sequence[S3Object]) -> list[S3Object]:
    """Retry the entries SQS reports as failed, with jittered backoff, a few times."""
    pending = {str(index): found for index, found in enumerate(batch)}
    for attempt in range(SEND_ATTEMPTS):
        if attempt:
            time.sleep(RETRY_BASE_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        response = client("sqs").send_message_batch(
            QueueUrl=config.job_queue_url,
            Entries=[
                {"Id": entry_id, "MessageBody": json.dumps(found.message())}
                for entry_id, found in pending.items()
            ],
        )
        for sent in response.get("Successful", []):
            found = pending.pop(sent["Id"])
            _info("queued", bucket=found.bucket, key=found.key, etag=found.etag, size=found.size)
        retryable = _log_failures(response.get("Failed", []), pending)
        if not retryable:
            break
    return list(pending.values())


def _log_failures(failures: list[dict[str, Any]], pending: dict[str, S3Object]) -> bool:
    """Log each failed entry; True when retrying could help (some were not the sender's fault)."""
    for failure in failures:
        found = pending[failure["Id"]]
        _warning(
            "queue rejected message",
            bucket=found.bucket,
            key=found.key,
            code=failure.get("Code"),
            reason=failure.get("Message"),
            sender_fault=failure.get("SenderFault"),
        )
    return any(not failure.get("SenderFault") for failure in failures)


# --- scaling --------------------------------------------------------------------------------


def workers_to_start(backlog: int, running: int, max_workers: int, files_per_worker: int) -> int:
    """Workers in proportion to the backlog, never more than max_workers in total."""
    desired = min(max_workers, math.ceil(backlog / files_per_worker))
    return max(0, desired - running)


@dataclass(frozen=True)
class ScaleResult:
    """What one rescale saw and did; running is the count before it started any."""

    backlog: int
    running: int
    started: int
    stopped: int


def rescale(config: Config, queued: int) -> ScaleResult:
    """Start the workers the backlog needs, then trim any surplus a concurrent call created.

    The queue's counters lag behind recent sends, so the backlog is at least what this call
    has just queued.
    """
    backlog = max(queue_backlog(config), queued)
    running = running_workers(config)
    wanted = workers_to_start(backlog, len(running), config.max_workers, config.files_per_worker)
    started = start_workers(config, wanted)
    stopped = trim_surplus(config, running_workers(config) if started else running)
    return ScaleResult(backlog=backlog, running=len(running), started=started, stopped=stopped)


def queue_backlog(config: Config) -> int:
    """Messages waiting plus messages in work (a worker is busy with each of those)."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = client("sqs").get_queue_attributes(
        QueueUrl=config.job_queue_url, AttributeNames=names
    )["Attributes"]
    return sum(int(attributes.get(name, 0)) for name in names)


@dataclass(frozen=True)
class WorkerTask:
    """A running worker; created orders surplus workers newest first (0 when unknown)."""

    arn: str
    created: float


def running_workers(config: Config) -> list[WorkerTask]:
    """Worker tasks whose desired status is RUNNING (still starting ones included).

    ECS refuses startedBy combined with any other filter (and defaults to RUNNING), while
    moto lists stopped tasks too, so the desired status is read from DescribeTasks.
    """
    pages = (
        client("ecs")
        .get_paginator("list_tasks")
        .paginate(cluster=config.cluster_name, startedBy=config.started_by)
    )
    arns = [arn for page in pages for arn in page.get("taskArns", [])]
    workers: list[WorkerTask] = []
    for start in range(0, len(arns), DESCRIBE_TASKS_LIMIT):
        chunk = arns[start : start + DESCRIBE_TASKS_LIMIT]
        described = client("ecs").describe_tasks(cluster=config.cluster_name, tasks=chunk)
        workers.extend(
            WorkerTask(task["taskArn"], _timestamp(task.get("createdAt")))
            for task in described.get("tasks", [])
            if task.get("desiredStatus") == "RUNNING"
        )
    return workers


def _timestamp(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0


def start_workers(config: Config, count: int) -> int:
    """RunTask in calls of at most ten; returns how many tasks ECS accepted."""
    started = 0
    while started < count:
        batch = min(RUN_TASK_LIMIT, count - started)
        response = client("ecs").run_task(**_run_task_request(config, batch))
        for task in response.get("tasks", []):
            _info("worker started", task_arn=task["taskArn"])
        for failure in response.get("failures", []):
            _warning("worker not started", arn=failure.get("arn"), reason=failure.get("reason"))
        if not response.get("tasks"):
            break
        started += len(response["tasks"])
    return started


def _run_task_request(config: Config, count: int) -> dict[str, Any]:
    request: dict[str, Any] = {
        "cluster": config.cluster_name,
        "taskDefinition": config.task_definition,
        "count": count,
        "launchType": config.launch_type,
        "startedBy": config.started_by,
    }
    if config.subnets:
        vpc: dict[str, Any] = {"subnets": list(config.subnets)}
        if config.security_groups:
            vpc["securityGroups"] = list(config.security_groups)
        if config.launch_type == "FARGATE":
            vpc["assignPublicIp"] = config.assign_public_ip
        request["networkConfiguration"] = {"awsvpcConfiguration": vpc}
    return request


def trim_surplus(config: Config, running: Sequence[WorkerTask]) -> int:
    """Stop the newest workers beyond max_workers, so concurrent calls converge on the cap.

    Every caller orders tasks the same way (creation time, then ARN), so calls that see the
    same surplus stop the same tasks rather than twice as many.
    """
    surplus = len(running) - config.max_workers
    newest = sorted(running, key=lambda task: (task.created, task.arn), reverse=True)
    reason = f"more than MAX_WORKERS={config.max_workers} batch workers were running"
    stopped = 0
    for task in newest[: max(0, surplus)]:
        try:
            client("ecs").stop_task(cluster=config.cluster_name, task=task.arn, reason=reason)
        except ClientError as error:
            _warning("surplus worker not stopped", task_arn=task.arn, reason=str(error))
            continue
        _info("surplus worker stopped", task_arn=task.arn, max_workers=config.max_workers)
        stopped += 1
    return stopped


# --- entry point ----------------------------------------------------------------------------


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Queue every accepted object, rescale the workers, and report what was done."""
    config = load_config()
    token = _request_id.set(getattr(context, "aws_request_id", None))
    try:
        parsed = parse_event(event, config.trigger_suffixes)
        failed = queue_objects(config, parsed.objects)
        queued = len(parsed.objects) - len(failed)
        scale = rescale(config, queued)
        summary = {
            "event": parsed.kind,
            "records": parsed.records,
            "queued": queued,
            "skipped": parsed.skipped,
            "failed": len(failed),
            "backlog": scale.backlog,
            "running": scale.running,
            "started": scale.started,
            "stopped": scale.stopped,
        }
        _info("summary", **summary)
        if failed:
            keys = ", ".join(f"s3://{found.bucket}/{found.key}" for found in failed)
            raise QueueError(f"{len(failed)} object(s) could not be queued: {keys}")
        return summary
    finally:
        _request_id.reset(token)
