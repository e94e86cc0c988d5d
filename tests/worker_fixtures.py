"""Fixtures for the batch worker's integration tests: real AWS emulators on 127.0.0.1 (moto,
or LocalStack for S3 and SQS: tests/backends.py), per-test buckets and queues (with a
dead-letter queue), a model bundle written by scripts/train_example.py, and workers run as
`python -m service worker` subprocesses."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.backends import Backend, backend_for_tests
from tests.support import wait_for

REPO = Path(__file__).resolve().parent.parent


def load_script(name: str) -> Any:
    """Import scripts/<name>.py (scripts/ is not a package), once per process."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


STACK_SECONDS = 60


@dataclass
class Cloud:
    """Clients bound to the test backend (moto, or LocalStack for S3, SQS and CloudFormation).

    CreateStack returns once the stack is complete, as moto's does: LocalStack (like AWS)
    creates stacks in the background, and tests read a new stack's outputs at once.
    """

    backend: Backend

    def __post_init__(self) -> None:
        self.s3 = self.backend.client("s3")
        self.sqs = self.backend.client("sqs")
        self.cloudformation = self.backend.client("cloudformation")
        self.cloudformation.meta.events.register(
            "after-call.cloudformation.CreateStack", self._wait_for_stack
        )

    def _wait_for_stack(self, parsed: dict[str, Any], **_: Any) -> None:
        stack_id = parsed.get("StackId")
        if not stack_id:
            return

        def finished() -> bool:
            [stack] = self.cloudformation.describe_stacks(StackName=stack_id)["Stacks"]
            return not stack["StackStatus"].endswith("_IN_PROGRESS")

        wait_for(finished, STACK_SECONDS, f"stack {stack_id} to be created", interval=0.2)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to the backend and nothing else."""
        env = self.backend.env()
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        return env

    def queue_attributes(self, url: str) -> dict[str, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
        return {k: int(v) for k, v in attributes["Attributes"].items()}

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return None

    def read_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@dataclass
class Stack:
    """One test's buckets and queues, named uniquely so tests never share state."""

    cloud: Cloud
    model_uri: str
    input_bucket: str = ""
    output_bucket: str = ""
    queue_url: str = ""
    dlq_url: str = ""
    prefix: str = "predictions"

    def create(self, visibility: int = 2, max_receive: int = 3) -> Stack:
        suffix = uuid.uuid4().hex[:10]
        self.input_bucket = f"input-{suffix}"
        self.output_bucket = f"output-{suffix}"
        for bucket in (self.input_bucket, self.output_bucket):
            self.cloud.s3.create_bucket(Bucket=bucket)
        sqs = self.cloud.sqs
        self.dlq_url = sqs.create_queue(QueueName=f"jobs-dlq-{suffix}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive)}
        self.queue_url = sqs.create_queue(
            QueueName=f"jobs-{suffix}",
            Attributes={
                "VisibilityTimeout": str(visibility),
                "RedrivePolicy": json.dumps(redrive),
            },
        )["QueueUrl"]
        return self

    def put(self, key: str, data: bytes, **extra: Any) -> None:
        self.cloud.s3.put_object(Bucket=self.input_bucket, Key=key, Body=data, **extra)

    def send(self, key: str, **overrides: Any) -> dict[str, Any]:
        """Queue the job message the Lambda would send for the object now at `key`."""
        head = self.cloud.s3.head_object(Bucket=self.input_bucket, Key=key)
        body = {
            "bucket": self.input_bucket,
            "key": key,
            "etag": head["ETag"].strip('"'),
            "size": head["ContentLength"],
            "version_id": None,
            "event_time": datetime.now(UTC).isoformat(),
        }
        body.update(overrides)
        self.send_raw(json.dumps(body))
        return body

    def send_raw(self, body: str) -> None:
        self.cloud.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def worker_env(self, **overrides: Any) -> dict[str, str]:
        env = self.cloud.env
        env.update(
            MODEL_URI=self.model_uri,
            MODEL_POLL_SECONDS="1",
            JOB_QUEUE_URL=self.queue_url,
            OUTPUT_BUCKET=self.output_bucket,
            OUTPUT_PREFIX=self.prefix,
            OUTPUT_FORMAT="parquet",
            IDLE_SECONDS="3",
            WAIT_SECONDS="1",
            VISIBILITY_SECONDS="2",
            BATCH_ROWS="65536",
            LOG_LEVEL="INFO",
        )
        env.update({k: str(v) for k, v in overrides.items()})
        return env

    def report(self, key: str) -> dict[str, Any] | None:
        return self.cloud.read_json(self.output_bucket, f"{self.prefix}/_reports/{key}.json")

    def output_key(self, key: str, fmt: str = "parquet", version: str = "1") -> str:
        """The contract layout, written out: the whole input key plus the format's extension."""
        return f"{self.prefix}/model=example/version={version}/{key}.{fmt}"

    def read_output(self, key: str, fmt: str) -> pd.DataFrame:
        body = self.cloud.s3.get_object(Bucket=self.output_bucket, Key=key)["Body"].read()
        return read_frame(body, fmt)

    def queue_empty(self) -> bool:
        counts = self.cloud.queue_attributes(self.queue_url)
        return sum(counts.values()) == 0

    def dlq_bodies(self) -> list[dict[str, Any]]:
        """Read the DLQ without consuming it for long (visibility 0 on every read)."""
        response = self.cloud.sqs.receive_message(
            QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0
        )
        return [json.loads(m["Body"]) for m in response.get("Messages", [])]


@dataclass
class WorkerProcess:
    """`python -m service worker` with its output in a file (a full pipe never blocks it)."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "worker"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The JSON log lines so far (optionally only one event kind)."""
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (event is None or entry.get("event") == event):
                entries.append(entry)
        return entries

    def files(self, status: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events("file") if status is None or e.get("status") == status]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker still running after {timeout} s; log:\n{self.log_text()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


@pytest.fixture(scope="module")
def cloud() -> Iterator[Cloud]:
    """The backend tests/backends.py chooses from TEST_AWS_BACKEND, for one test module."""
    with backend_for_tests() as backend:
        yield Cloud(backend)


@pytest.fixture(scope="module")
def model_uri(cloud: Cloud) -> str:
    """The example bundle, written into the moto server by scripts/train_example.py."""
    bucket = f"models-{uuid.uuid4().hex[:10]}"
    cloud.s3.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/models/example/"
    train_bundle(cloud, uri, version="1")
    return uri


def train_bundle(cloud: Cloud, uri: str, version: str, regularisation: float = 1.0) -> None:
    command = [
        sys.executable,
        str(REPO / "scripts" / "train_example.py"),
        "--out",
        uri,
        "--version",
        version,
        "--regularisation",
        str(regularisation),
    ]
    subprocess.run(command, cwd=REPO, env=cloud.env, check=True, capture_output=True, timeout=120)


@pytest.fixture
def stack(cloud: Cloud, model_uri: str) -> Stack:
    return Stack(cloud, model_uri).create()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (env from Stack.worker_env); every one is killed at the end."""
    started: list[WorkerProcess] = []

    def start(env: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def local_bundle(cloud: Cloud, uri: str, folder: Path) -> Any:
    """Load the bundle the workers use, in this process, from a copy of its files."""
    from service.artifacts import load_bundle

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    folder.mkdir(parents=True, exist_ok=True)
    for key in cloud.keys(bucket, prefix):
        (folder / key[len(prefix) :]).write_bytes(
            cloud.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        )
    return load_bundle(str(folder))


def sample_rows(rows: int, seed: int = 1) -> pd.DataFrame:
    return load_script("train_example").sample_rows(rows, seed=seed)


def encode_frame(frame: pd.DataFrame, key: str) -> bytes:
    """The bytes of `frame` in the format the key's extension names."""
    gzipped = key.endswith(".gz")
    name = key.removesuffix(".gz")
    if name.endswith(".parquet"):
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        data = buffer.getvalue()
    elif name.endswith(".csv"):
        data = frame.to_csv(index=False).encode()
    elif name.endswith(".jsonl"):
        data = frame.to_json(orient="records", lines=True).encode()
    else:
        raise ValueError(key)
    return gzip.compress(data, mtime=0) if gzipped else data


def read_frame(body: bytes, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(io.BytesIO(body))
    if fmt == "csv":
        return pd.read_csv(io.BytesIO(body))
    return pd.read_json(io.BytesIO(body), lines=True)
