"""Fixtures for the batch trigger's unit tests (lambda/handler.py): in-process moto with a
queue, a cluster and a worker task definition, the function's environment, its JSON logs."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from moto import mock_aws

from service.jsonlog import JsonFormatter

REPO = Path(__file__).resolve().parents[2]


def _load_handler() -> ModuleType:
    """Import lambda/handler.py as module "handler", the name the Lambda runtime gives it."""
    if "handler" not in sys.modules:
        spec = importlib.util.spec_from_file_location("handler", REPO / "lambda" / "handler.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["handler"] = module
        spec.loader.exec_module(module)
    return sys.modules["handler"]


handler = _load_handler()

STARTED_BY = "batch-worker"
INPUT_BUCKET = "model-endpoint-local-input"  # the bucket of the sample events in tests/events
REGION = "us-east-1"
_names = itertools.count()


@dataclass
class Cloud:
    """The AWS side of a test: clients, resource names and the function's environment."""

    sqs: Any
    ecs: Any
    s3: Any
    queue_url: str
    failure_queue_url: str
    output_bucket: str
    cluster: str
    env: dict[str, str]

    def report(self, key: str) -> dict[str, Any] | None:
        """The report the function wrote for an input key, if any."""
        try:
            body = self.s3.get_object(
                Bucket=self.output_bucket, Key=f"predictions/_reports/{key}.json"
            )["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def failure_records(self) -> list[dict[str, Any]]:
        """Every record in the failure queue, parsed (receiving hides them)."""
        messages = self.sqs.receive_message(
            QueueUrl=self.failure_queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300
        ).get("Messages", [])
        return [json.loads(message["Body"]) for message in messages]

    def running(self) -> list[str]:
        """Worker tasks moto reports as desired RUNNING (moto honours both filters together)."""
        return self.ecs.list_tasks(
            cluster=self.cluster, startedBy=STARTED_BY, desiredStatus="RUNNING"
        )["taskArns"]

    def messages(self) -> list[dict[str, Any]]:
        """Every message on the job queue, parsed; receiving hides them, which tests don't mind."""
        bodies: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, VisibilityTimeout=300
            ).get("Messages", [])
            if not batch:
                return bodies
            bodies.extend(json.loads(message["Body"]) for message in batch)

    def seed_backlog(self, count: int) -> None:
        for index in range(count):
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps({"n": index}))

    def start_workers(self, count: int) -> list[str]:
        """Workers that were already running before the invocation under test."""
        arns: list[str] = []
        for _ in range(count):
            response = self.ecs.run_task(
                cluster=self.cluster,
                taskDefinition="worker",
                launchType="FARGATE",
                startedBy=STARTED_BY,
                networkConfiguration={
                    "awsvpcConfiguration": {
                        "subnets": self.env["SUBNETS"].split(","),
                        "securityGroups": self.env["SECURITY_GROUPS"].split(","),
                    }
                },
            )
            arns.extend(task["taskArn"] for task in response["tasks"])
        return arns

    def configure(self, monkeypatch: pytest.MonkeyPatch, **changes: str) -> None:
        """Change the function's environment; the next invocation reads it afresh."""
        for name, value in changes.items():
            monkeypatch.setenv(name, value)
        handler.load_config.cache_clear()


@dataclass(frozen=True)
class Network:
    subnets: list[str]
    security_groups: list[str]


@pytest.fixture(scope="module")
def lambda_moto() -> Iterator[Network]:
    """One in-process moto per test module (starting one costs about half a second); each
    test gets its own queue and cluster inside it. Returns the default VPC's network."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", REGION)
        patch.setenv("AWS_REGION", REGION)
        with mock_aws():
            ec2 = boto3.client("ec2", region_name=REGION)
            yield Network(
                subnets=[item["SubnetId"] for item in ec2.describe_subnets()["Subnets"]][:2],
                security_groups=[
                    item["GroupId"] for item in ec2.describe_security_groups()["SecurityGroups"]
                ][:1],
            )


@pytest.fixture
def lambda_cloud(lambda_moto: Network, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """A fresh queue and cluster with a FARGATE worker task definition, the function's
    environment pointing at them, and a cold handler (no cached config or clients)."""
    handler.load_config.cache_clear()
    handler.client.cache_clear()
    name = f"t{next(_names)}"
    sqs = boto3.client("sqs", region_name=REGION)
    ecs = boto3.client("ecs", region_name=REGION)
    s3 = boto3.client("s3", region_name=REGION)
    queue_url = sqs.create_queue(QueueName=f"{name}-jobs")["QueueUrl"]
    failure_queue_url = sqs.create_queue(QueueName=f"{name}-trigger-failures")["QueueUrl"]
    output_bucket = f"{name}-output"
    s3.create_bucket(Bucket=output_bucket)
    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(
        family="worker",
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[{"name": "worker", "image": "model-endpoint:local", "memory": 512}],
    )
    env = {
        "JOB_QUEUE_URL": queue_url,
        "FAILURE_QUEUE_URL": failure_queue_url,
        "INPUT_BUCKET": INPUT_BUCKET,
        "OUTPUT_BUCKET": output_bucket,
        "OUTPUT_PREFIX": "predictions",
        "CLUSTER_NAME": name,
        "TASK_DEFINITION": "worker",
        "WORKER_CONTAINER": "worker",
        "SUBNETS": ",".join(lambda_moto.subnets),
        "SECURITY_GROUPS": ",".join(lambda_moto.security_groups),
        "ASSIGN_PUBLIC_IP": "ENABLED",
        "MAX_WORKERS": "3",
        "FILES_PER_WORKER": "1",
        "TRIGGER_SUFFIXES": ".parquet,.csv,.jsonl",
        "STARTED_BY": STARTED_BY,
        "LAUNCH_TYPE": "FARGATE",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Cloud(
        sqs=sqs,
        ecs=ecs,
        s3=s3,
        queue_url=queue_url,
        failure_queue_url=failure_queue_url,
        output_bucket=output_bucket,
        cluster=name,
        env=env,
    )


@pytest.fixture
def lambda_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Returns a reader of the function's log lines so far, each parsed from its JSON."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    collector = Collect()
    collector.setFormatter(JsonFormatter())
    handler.log.addHandler(collector)
    try:
        yield lambda: [json.loads(line) for line in lines]
    finally:
        handler.log.removeHandler(collector)


@pytest.fixture
def no_send_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "RETRY_BASE_SECONDS", 0.0)
