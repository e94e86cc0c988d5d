"""Batch trigger: every upload to the input bucket becomes a queue message or a report, and
the queue's backlog becomes ECS workers.

Entry point ``handler.handler(event, context)``. It accepts an S3 event notification (every
record), an S3 event delivered through EventBridge ("Object Created"), an EventBridge
scheduled event, or an empty event. For each object created in the input bucket it queues
one job when the name is a supported one (``service.batch_contract.is_triggered``: a
``TRIGGER_SUFFIXES`` suffix in any letter case, ``.gz`` variants included) and writes a
``skipped`` report for any other name; objects of other buckets are refused with a log line.

Nothing is lost: an object that cannot be queued is parked in the failure queue (the
asynchronous invocations' on-failure destination), and every invocation first redrives what
waits there. The handler raises only when an object could be neither queued nor parked, so
Lambda's retry repeats the event; a scaling failure (RunTask) is logged and counted, never
raised, so a retry never queues the same objects twice. Every invocation ends by reconciling
the number of worker tasks with the queue's backlog, so a scheduled invocation restarts
work that would otherwise strand. Only the standard library, boto3 and the package's copy
of ``service.batch_contract`` and ``service.jsonlog`` are used.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import unquote_plus

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from service import jsonlog
from service.batch_contract import (
    DEFAULT_OUTPUT_PREFIX,
    MESSAGE_FIELDS,
    file_format,
    is_triggered,
    job_message,
    readable_suffixes,
    report_key,
    skipped_report,
    unsupported_reason,
)

__all__ = ["MESSAGE_FIELDS", "handler"]

SEND_BATCH_LIMIT = 10
RUN_TASK_LIMIT = 10
DESCRIBE_TASKS_LIMIT = 100
SEND_ATTEMPTS = 4
RETRY_BASE_SECONDS = 0.2
REDRIVE_MAX_MESSAGES = 100
REDRIVE_VISIBILITY_SECONDS = 120
LAUNCH_TYPES = ("FARGATE", "EC2", "EXTERNAL")
PUBLIC_IP_CHOICES = ("ENABLED", "DISABLED")
STARTED_BY_PATTERN = re.compile(r"[A-Za-z0-9_/-]{1,128}")
PARKED_CONDITION = "NotQueued"

log = logging.getLogger("batch_trigger")


class ConfigError(ValueError):
    """An environment variable is missing or holds a value the function cannot use."""


class QueueError(RuntimeError):
    """Some objects could be neither queued nor parked; raising makes Lambda redeliver the
    whole event."""


def _setup_logging() -> None:
    """Log JSON to stdout and keep the runtime's own root handler from printing it twice."""
    if not log.handlers:
        log.addHandler(jsonlog.json_handler(sys.stdout))
    log.setLevel(logging.INFO)
    log.propagate = False


_setup_logging()


def _info(event: str, **fields: Any) -> None:
    jsonlog.log_event(log, logging.INFO, event, **fields)


def _warning(event: str, **fields: Any) -> None:
    jsonlog.log_event(log, logging.WARNING, event, **fields)


# --- configuration ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """The function's environment, validated once per container."""

    job_queue_url: str
    failure_queue_url: str
    input_bucket: str
    output_bucket: str
    output_prefix: str
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
    unreadable = [item for item in suffixes if file_format("x" + item) is None]
    if unreadable:
        readable = ", ".join(readable_suffixes())
        raise ConfigError(
            f"{name}={raw!r} names {', '.join(unreadable)}, which the worker cannot read; "
            f"accepts suffixes among {readable}"
        )
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
    "failure_queue_url": lambda env: env.get("FAILURE_QUEUE_URL", "").strip(),
    "input_bucket": lambda env: _required(env, "INPUT_BUCKET", "the input bucket's name"),
    "output_bucket": lambda env: _required(env, "OUTPUT_BUCKET", "the output bucket's name"),
    "output_prefix": lambda env: env.get("OUTPUT_PREFIX", DEFAULT_OUTPUT_PREFIX).strip().strip("/"),
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
        encoded: bool = True,
    ) -> S3Object:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RecordError(f"object size {size!r} is not a whole number")
        key = unquote_plus(str(encoded_key)) if encoded else str(encoded_key or "")
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
        return job_message(
            self.bucket, self.key, self.etag, self.size, self.version_id, self.event_time
        )

    @classmethod
    def from_message(cls, body: Mapping[str, Any]) -> S3Object:
        """A job message parked in the failure queue, read back."""
        if not isinstance(body, Mapping):
            raise RecordError("a parked job is not a JSON object")
        return cls._build(
            bucket=body.get("bucket"),
            encoded_key=body.get("key"),
            etag=body.get("etag"),
            size=body.get("size"),
            version_id=body.get("version_id"),
            event_time=body.get("event_time"),
            encoded=False,
        )


def _field(container: Any, name: str) -> Any:
    if not isinstance(container, Mapping) or container.get(name) in (None, ""):
        raise RecordError(f"missing field {name!r}")
    return container[name]


@dataclass(frozen=True)
class ParsedEvent:
    """The objects an event announces as created, and how many records it set aside."""

    kind: str
    records: int
    objects: tuple[S3Object, ...]
    malformed: int


def parse_event(event: Any) -> ParsedEvent:
    """Turn any accepted event shape into the created objects; unknown shapes only rescale."""
    if isinstance(event, Mapping) and isinstance(event.get("Records"), list):
        return _parse_notification(event["Records"])
    if isinstance(event, Mapping) and event.get("Event") == "s3:TestEvent":
        _info("ignored S3 test event", bucket=event.get("Bucket"))
        return ParsedEvent("s3-test", 0, (), 0)
    if isinstance(event, Mapping) and event.get("source") == "aws.s3":
        return _parse_eventbridge(event)
    if isinstance(event, Mapping) and event.get("detail-type") == "Scheduled Event":
        return ParsedEvent("schedule", 0, (), 0)
    if event:
        shape = sorted(map(str, event)) if isinstance(event, Mapping) else type(event).__name__
        _warning("unrecognised event; rescaling only", event_shape=shape)
    return ParsedEvent("manual", 0, (), 0)


def _parse_notification(records: list[Any]) -> ParsedEvent:
    objects: list[S3Object] = []
    for index, record in enumerate(records):
        name = record.get("eventName", "") if isinstance(record, Mapping) else ""
        if not str(name).startswith("ObjectCreated:"):
            _warning("skipped record: not an ObjectCreated event", index=index, event_name=name)
            continue
        found = _accept(S3Object.from_notification, record, index)
        if found:
            objects.append(found)
    return ParsedEvent("s3", len(records), tuple(objects), len(records) - len(objects))


def _parse_eventbridge(event: Mapping[str, Any]) -> ParsedEvent:
    if event.get("detail-type") != "Object Created":
        _warning("skipped S3 EventBridge event", detail_type=event.get("detail-type"))
        return ParsedEvent("eventbridge-s3", 1, (), 1)
    found = _accept(S3Object.from_eventbridge, event, 0)
    return ParsedEvent("eventbridge-s3", 1, (found,) if found else (), 0 if found else 1)


def _accept(
    parse: Callable[[Mapping[str, Any]], S3Object], source: Mapping[str, Any], index: int
) -> S3Object | None:
    """Parse one record; a broken one is logged and skipped so it never costs the others."""
    try:
        return parse(source)
    except RecordError as error:
        _warning("skipped record: malformed", index=index, reason=str(error))
        return None


# --- settling each object: a job, a skipped report, or a refusal ----------------------------


@dataclass
class Settled:
    """What became of an invocation's objects."""

    queued: int = 0
    skipped: int = 0
    refused: int = 0
    parked: int = 0


def settle(config: Config, objects: Sequence[S3Object]) -> tuple[Settled, list[S3Object]]:
    """Queue the supported objects of the input bucket and report the others as skipped;
    returns the tally and the objects that could be neither queued nor reported."""
    tally = Settled()
    ours = [found for found in objects if _ours(config, found)]
    tally.refused = len(objects) - len(ours)
    wanted = [found for found in ours if is_triggered(found.key, config.trigger_suffixes)]
    unsettled = queue_objects(config, wanted)
    tally.queued = len(wanted) - len(unsettled)
    for found in ours:
        if is_triggered(found.key, config.trigger_suffixes):
            continue
        if write_skipped(config, found):
            tally.skipped += 1
        else:
            unsettled.append(found)
    return tally, unsettled


def _ours(config: Config, found: S3Object) -> bool:
    if found.bucket == config.input_bucket:
        return True
    _warning("refused object of another bucket", bucket=found.bucket, key=found.key)
    return False


def write_skipped(config: Config, found: S3Object) -> bool:
    """The ``skipped`` report of a name no job is started for; False if it was not written."""
    reason = unsupported_reason(found.key, config.trigger_suffixes)
    report = skipped_report(found.bucket, found.key, found.etag, found.version_id, reason)
    try:
        client("s3").put_object(
            Bucket=config.output_bucket,
            Key=report_key(config.output_prefix, found.key),
            Body=report.to_json(),
            ContentType="application/json",
        )
    except (ClientError, BotoCoreError) as error:
        _warning("skipped report not written", key=found.key, reason=str(error))
        return False
    _info("skipped", bucket=found.bucket, key=found.key, reason=reason)
    return True


def park(config: Config, unsettled: Sequence[S3Object]) -> None:
    """Put objects that could not be settled in the failure queue, in the shape of a Lambda
    destination record, for the next invocation's redrive; QueueError if that fails too."""
    keys = ", ".join(f"s3://{found.bucket}/{found.key}" for found in unsettled)
    record = {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "requestContext": {"condition": PARKED_CONDITION, "approximateInvokeCount": 1},
        "requestPayload": {"jobs": [found.message() for found in unsettled]},
    }
    if not config.failure_queue_url:
        raise QueueError(f"{len(unsettled)} object(s) could not be queued: {keys}")
    try:
        client("sqs").send_message(
            QueueUrl=config.failure_queue_url, MessageBody=json.dumps(record)
        )
    except (ClientError, BotoCoreError) as error:
        raise QueueError(
            f"{len(unsettled)} object(s) could be neither queued nor parked ({error}): {keys}"
        ) from error
    _warning("parked in the failure queue", objects=len(unsettled), keys=keys)


# --- queue ----------------------------------------------------------------------------------


def queue_objects(config: Config, objects: Sequence[S3Object]) -> list[S3Object]:
    """Send one message per object, ten per call; returns the objects that could not be sent."""
    failed: list[S3Object] = []
    for start in range(0, len(objects), SEND_BATCH_LIMIT):
        failed.extend(_send_batch(config, objects[start : start + SEND_BATCH_LIMIT]))
    return failed


def _send_batch(config: Config, batch: Sequence[S3Object]) -> list[S3Object]:
    """Retry the entries SQS reports as failed, with jittered backoff, a few times; a queue
    that cannot be reached at all leaves the whole batch unsent."""
    pending = {str(index): found for index, found in enumerate(batch)}
    for attempt in range(SEND_ATTEMPTS):
        if attempt:
            time.sleep(RETRY_BASE_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        try:
            response = client("sqs").send_message_batch(
                QueueUrl=config.job_queue_url,
                Entries=[
                    {"Id": entry_id, "MessageBody": json.dumps(found.message())}
                    for entry_id, found in pending.items()
                ],
            )
        except (ClientError, BotoCoreError) as error:
            _warning("queue unreachable", attempt=attempt + 1, reason=str(error))
            continue
        for sent in response.get("Successful", []):
            found = pending.pop(sent["Id"])
            _info("queued", bucket=found.bucket, key=found.key, etag=found.etag, size=found.size)
        if not _log_failures(response.get("Failed", []), pending):
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


# --- redrive --------------------------------------------------------------------------------


def redrive(config: Config) -> Settled:
    """Settle what waits in the failure queue (events whose invocations kept failing, objects
    parked): a record leaves the queue once all of its objects are queued or reported."""
    total = Settled()
    if not config.failure_queue_url:
        return total
    for _ in range(0, REDRIVE_MAX_MESSAGES, SEND_BATCH_LIMIT):
        messages = (
            client("sqs")
            .receive_message(
                QueueUrl=config.failure_queue_url,
                MaxNumberOfMessages=SEND_BATCH_LIMIT,
                VisibilityTimeout=REDRIVE_VISIBILITY_SECONDS,
                WaitTimeSeconds=0,
            )
            .get("Messages", [])
        )
        for message in messages:
            _add(total, _redrive_one(config, message))
        if not messages:
            break
    return total


def _redrive_one(config: Config, message: Mapping[str, Any]) -> Settled:
    objects = failed_objects(message.get("Body", ""))
    tally, unsettled = settle(config, objects)
    if unsettled:
        _warning("redrive incomplete; kept for the next run", left=len(unsettled))
        return tally
    client("sqs").delete_message(
        QueueUrl=config.failure_queue_url, ReceiptHandle=message["ReceiptHandle"]
    )
    _info("redriven", objects=len(objects), queued=tally.queued, skipped=tally.skipped)
    return tally


def failed_objects(body: str) -> list[S3Object]:
    """The objects of a failure-queue message: a Lambda destination record whose
    ``requestPayload`` is the original event, or objects this function parked."""
    try:
        record = json.loads(body)
    except ValueError:
        _warning("unreadable failure record dropped", body=body[:300])
        return []
    payload = record.get("requestPayload") if isinstance(record, Mapping) else None
    if isinstance(payload, Mapping) and isinstance(payload.get("jobs"), list):
        return [
            found
            for index, item in enumerate(payload["jobs"])
            if (found := _accept(S3Object.from_message, item, index))
        ]
    return list(parse_event(payload).objects)


def _add(total: Settled, part: Settled) -> None:
    for name in ("queued", "skipped", "refused", "parked"):
        setattr(total, name, getattr(total, name) + getattr(part, name))


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
    """Redrive the failure queue, settle every created object, rescale the workers, and
    report what was done (objects parked now wait for the next invocation)."""
    config = load_config()
    token = jsonlog.request_id.set(getattr(context, "aws_request_id", None))
    try:
        redriven = _redrive_safely(config)
        parsed = parse_event(event)
        tally, unsettled = settle(config, parsed.objects)
        if unsettled:
            park(config, unsettled)
            tally.parked = len(unsettled)
        summary = {
            "event": parsed.kind,
            "records": parsed.records,
            "malformed": parsed.malformed,
            **{name: getattr(tally, name) for name in ("queued", "skipped", "refused", "parked")},
            "redriven": redriven.queued + redriven.skipped,
            **_rescale_safely(config, tally.queued + redriven.queued),
        }
        _info("summary", source=parsed.kind, **{k: v for k, v in summary.items() if k != "event"})
        return summary
    finally:
        jsonlog.request_id.reset(token)


def _redrive_safely(config: Config) -> Settled:
    """A failure queue that cannot be read now is read by the next invocation."""
    try:
        return redrive(config)
    except (ClientError, BotoCoreError) as error:
        _warning("redrive failed; left to the next run", reason=str(error))
        return Settled()


def _rescale_safely(config: Config, queued: int) -> dict[str, int]:
    """Scaling errors are logged and counted, never raised: raising would make Lambda retry
    the event and queue its objects again; the next scheduled run scales instead."""
    try:
        scale = rescale(config, queued)
    except (ClientError, BotoCoreError) as error:
        _warning("rescale failed; left to the next scheduled run", reason=str(error))
        return {"backlog": queued, "running": 0, "started": 0, "stopped": 0, "scale_failed": 1}
    return {
        "backlog": scale.backlog,
        "running": scale.running,
        "started": scale.started,
        "stopped": scale.stopped,
        "scale_failed": 0,
    }
