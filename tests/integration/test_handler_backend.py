"""lambda/handler.py against real servers: S3, SQS and CloudFormation on the chosen backend
(moto, or LocalStack: tests/backends.py), ECS and EC2 on moto.

The handler runs in this process, as the Lambda runtime imports it (module ``handler``), with
the function's environment and boto3's endpoint variables; its cached configuration and
clients are cleared around every test. Events come from tests/events/. The last test checks
the template's S3 plumbing: infra/stack.yaml's input bucket, with its suffix filters, sends
its events to a queue (LocalStack runs no Lambda function without Docker), and every event
that arrives goes through the handler.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import unquote_plus

import pytest

from infra.template import (
    PARAMS_DIR,
    load_parameter_file,
    load_template,
    make_context,
    pseudo_parameters,
    resolve,
    s3_bucket_calls,
)
from tests import backends
from tests.backends import Backend
from tests.worker_fixtures import wait_for

aws_backend = backends.aws_backend

# moto's CloudFormation has no AWS::SQS::QueuePolicy (and says so); LocalStack's has.
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

REPO = Path(__file__).resolve().parents[2]
EVENTS = REPO / "tests" / "events"
STARTED_BY = "batch-worker"
MAX_WORKERS = 3
DEADLINE_SECONDS = 30
# The AWS example's suffixes (no .gz listed): .csv.gz uploads must still start a job.
TRIGGER_SUFFIXES = load_parameter_file(PARAMS_DIR / "aws.example.json")["TriggerSuffixes"]
SAMPLE_BUCKET = "model-endpoint-local-input"  # the bucket of the sample events
OUTPUT_PREFIX = "predictions"


def _load_handler() -> ModuleType:
    """Import lambda/handler.py as module "handler", the name the Lambda runtime gives it."""
    if "handler" not in sys.modules:
        spec = importlib.util.spec_from_file_location("handler", REPO / "lambda" / "handler.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["handler"] = module
        spec.loader.exec_module(module)
    return sys.modules["handler"]


handler = _load_handler()


def sample_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text(encoding="utf-8"))


def expected_messages(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The contract bodies for an S3 notification's records, read straight from the event."""
    return [
        {
            "bucket": record["s3"]["bucket"]["name"],
            "key": unquote_plus(record["s3"]["object"]["key"]),
            "etag": record["s3"]["object"]["eTag"],
            "size": record["s3"]["object"]["size"],
            "version_id": record["s3"]["object"].get("versionId"),
            "event_time": record["eventTime"],
        }
        for record in event["Records"]
    ]


def by_key(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(messages, key=lambda message: message["key"])


@dataclass
class Trigger:
    """The function's queue (on the backend), cluster (on moto) and environment."""

    backend: Backend
    monkeypatch: pytest.MonkeyPatch
    queue_url: str
    cluster: str
    task_family: str
    output_bucket: str

    def __post_init__(self) -> None:
        self.sqs = self.backend.client("sqs")
        self.ecs = self.backend.client("ecs")

    def report(self, key: str) -> dict[str, Any] | None:
        """The report the function wrote for an input key, if any."""
        s3 = self.backend.client("s3")
        listed = s3.list_objects_v2(
            Bucket=self.output_bucket, Prefix=f"{OUTPUT_PREFIX}/_reports/{key}.json"
        )
        if not listed.get("KeyCount"):
            return None
        body = s3.get_object(Bucket=self.output_bucket, Key=listed["Contents"][0]["Key"])["Body"]
        return json.loads(body.read())

    def invoke(self, event: Any) -> dict[str, Any]:
        context = SimpleNamespace(aws_request_id=str(uuid.uuid4()), function_name="batch-trigger")
        return handler.handler(event, context)

    def configure(self, **changes: str) -> None:
        """Change the function's environment; the next invocation reads it afresh."""
        for name, value in changes.items():
            self.monkeypatch.setenv(name, value)
        if "JOB_QUEUE_URL" in changes:
            self.queue_url = changes["JOB_QUEUE_URL"]
        handler.load_config.cache_clear()

    def messages(self) -> list[dict[str, Any]]:
        """Every message on the job queue, parsed (receiving hides them for the test's length)."""
        bodies: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=300,
                WaitTimeSeconds=0,
            ).get("Messages", [])
            if not batch:
                return bodies
            bodies.extend(json.loads(message["Body"]) for message in batch)

    def seed_backlog(self, count: int) -> None:
        for index in range(count):
            self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps({"n": index}))

    def tasks(self) -> list[dict[str, Any]]:
        """The cluster's worker tasks still meant to run (DescribeTasks, as on AWS)."""
        arns = self.ecs.list_tasks(cluster=self.cluster, startedBy=STARTED_BY)["taskArns"]
        if not arns:
            return []
        described = self.ecs.describe_tasks(cluster=self.cluster, tasks=arns)["tasks"]
        return [task for task in described if task["desiredStatus"] == "RUNNING"]

    def stop(self, count: int) -> None:
        """Workers that died: the scheduled rescale has to replace them."""
        for task in self.tasks()[:count]:
            self.ecs.stop_task(cluster=self.cluster, task=task["taskArn"], reason="test")


@pytest.fixture(scope="module")
def network(aws_backend: Backend) -> dict[str, str]:
    """Subnets and a security group of moto's default VPC, as FARGATE's RunTask needs."""
    ec2 = aws_backend.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    subnets = ec2.describe_subnets(Filters=in_vpc)["Subnets"]
    groups = ec2.describe_security_groups(
        Filters=[*in_vpc, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    return {
        "SUBNETS": ",".join(subnet["SubnetId"] for subnet in subnets[:2]),
        "SECURITY_GROUPS": groups[0]["GroupId"],
    }


@pytest.fixture
def trigger(
    aws_backend: Backend, network: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Trigger]:
    """A job queue with a dead-letter queue, a cluster with a worker task definition, the
    function's environment pointing at them, and a cold handler."""
    name = f"trigger-{uuid.uuid4().hex[:10]}"
    sqs = aws_backend.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})
    queue_url = sqs.create_queue(QueueName=name, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
    failure_url = sqs.create_queue(QueueName=f"{name}-failures")["QueueUrl"]
    aws_backend.client("s3").create_bucket(Bucket=f"{name}-output")
    ecs = aws_backend.client("ecs")
    ecs.create_cluster(clusterName=name)
    ecs.register_task_definition(
        family=name,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256",
        memory="512",
        containerDefinitions=[
            {
                "name": "worker",
                "image": "model-endpoint:local",
                "memory": 512,
                "command": ["worker"],
            }
        ],
    )
    for variable in [variable for variable in os.environ if variable.startswith("AWS_")]:
        monkeypatch.delenv(variable)
    for variable, value in aws_backend.env(base={}).items():
        monkeypatch.setenv(variable, value)
    function_env = {
        "JOB_QUEUE_URL": queue_url,
        "FAILURE_QUEUE_URL": failure_url,
        "INPUT_BUCKET": SAMPLE_BUCKET,
        "OUTPUT_BUCKET": f"{name}-output",
        "OUTPUT_PREFIX": OUTPUT_PREFIX,
        "CLUSTER_NAME": name,
        "TASK_DEFINITION": name,
        "WORKER_CONTAINER": "worker",
        "ASSIGN_PUBLIC_IP": "ENABLED",
        "MAX_WORKERS": str(MAX_WORKERS),
        "FILES_PER_WORKER": "1",
        "TRIGGER_SUFFIXES": TRIGGER_SUFFIXES,
        "STARTED_BY": STARTED_BY,
        "LAUNCH_TYPE": "FARGATE",
        **network,
    }
    for variable, value in function_env.items():
        monkeypatch.setenv(variable, value)
    handler.load_config.cache_clear()
    handler.client.cache_clear()
    try:
        yield Trigger(aws_backend, monkeypatch, queue_url, name, name, f"{name}-output")
    finally:
        handler.load_config.cache_clear()
        handler.client.cache_clear()


def test_queue_urls_name_the_server_that_serves_sqs(trigger: Trigger) -> None:
    """LocalStack runs with SQS_ENDPOINT_STRATEGY=path, so its queue URLs stay on loopback."""
    assert trigger.queue_url.startswith(trigger.backend.endpoint("sqs") + "/")


def test_each_object_becomes_one_contract_message_and_workers_start(trigger: Trigger) -> None:
    event = sample_event("s3_put_several")
    summary = trigger.invoke(event)

    assert by_key(trigger.messages()) == by_key(expected_messages(event))
    assert summary["queued"] == 3 and summary["parked"] == 0 and summary["started"] == 3
    tasks = trigger.tasks()
    assert len(tasks) == 3
    for task in tasks:
        assert task["startedBy"] == STARTED_BY
        assert task["launchType"] == "FARGATE"
        assert f":task-definition/{trigger.task_family}:" in task["taskDefinitionArn"]


def test_encoded_keys_are_decoded_and_max_workers_caps_the_start(trigger: Trigger) -> None:
    event = sample_event("s3_put_encoded_keys")
    first = trigger.invoke(event)
    again = trigger.invoke(event)

    keys = sorted(message["key"] for message in trigger.messages())
    assert keys == sorted(
        2
        * [
            "incoming/quarterly report 2026.csv",
            "incoming/data set/part 1.parquet",
            "incoming/résumé/日本語.jsonl",
            "incoming/a+b+c.csv",
            "incoming/year=2026/month=11/part.v1.2.final.parquet",
            "incoming/deep/nested/prefix/with+plus and space/x.y.z.CSV.gz",
        ]
    )
    assert (first["queued"], first["started"]) == (6, MAX_WORKERS)
    assert (again["queued"], again["running"], again["started"]) == (6, MAX_WORKERS, 0)
    assert len(trigger.tasks()) == MAX_WORKERS


def test_eventbridge_object_created_event_queues_its_object(trigger: Trigger) -> None:
    summary = trigger.invoke(sample_event("eventbridge_s3_object_created"))

    [message] = trigger.messages()
    assert message == {
        "bucket": "model-endpoint-local-input",
        "key": "incoming/event bridge/batch 1.parquet",
        "etag": "b1946ac92492d2347c6235b4d2611184",
        "size": 5,
        "version_id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
        "event_time": "2026-11-25T12:02:00Z",
    }
    assert (summary["event"], summary["started"]) == ("eventbridge-s3", 1)


def test_s3_test_event_on_an_empty_queue_starts_nothing(trigger: Trigger) -> None:
    summary = trigger.invoke(sample_event("s3_test_event"))

    assert (summary["event"], summary["queued"], summary["started"]) == ("s3-test", 0, 0)
    assert trigger.messages() == [] and trigger.tasks() == []


def test_scheduled_event_rescales_from_the_backlog(trigger: Trigger) -> None:
    scheduled = sample_event("eventbridge_scheduled")
    trigger.configure(FILES_PER_WORKER="2")
    trigger.seed_backlog(4)

    first = trigger.invoke(scheduled)
    assert (first["event"], first["backlog"], first["started"]) == ("schedule", 4, 2)
    assert len(trigger.tasks()) == 2

    trigger.stop(1)
    second = trigger.invoke(scheduled)
    assert (second["running"], second["started"]) == (1, 1), "a stopped worker is replaced"
    assert len(trigger.tasks()) == 2

    trigger.seed_backlog(4)
    third = trigger.invoke(scheduled)
    assert (third["backlog"], third["started"]) == (8, MAX_WORKERS - 2), "never above the cap"
    assert len(trigger.tasks()) == MAX_WORKERS


# --- the template's S3 -> queue plumbing --------------------------------------------------------

PLUMBING_RESOURCES = ("InputBucket", "JobQueue", "DeadLetterQueue")
REFERENCED_NAMES = (r'"Ref": "(\w+)"', r"\$\{(\w+)\}")
CONDITION_NAMES = r'"Fn::If": \["(\w+)"'


def _retarget(node: Any) -> Any:
    """The bucket's trigger-function targets, pointed at the EventQueue instead."""
    if isinstance(node, list):
        return [_retarget(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        ("Queue" if key == "Function" else key): (
            {"Fn::GetAtt": ["EventQueue", "Arn"]} if key == "Function" else _retarget(value)
        )
        for key, value in node.items()
    }


def _mentions(node: Any, *patterns: str) -> set[str]:
    """The names a template fragment mentions, found with regular expressions in its JSON."""
    text = json.dumps(node)
    return {name for pattern in patterns for name in re.findall(pattern, text)}


def plumbing_template() -> dict[str, Any]:
    """infra/stack.yaml's input bucket (its notification included), job queue
    and dead-letter queue, the bucket notifying an SQS queue in place of the function."""
    template = load_template()
    resources = {name: copy.deepcopy(template["Resources"][name]) for name in PLUMBING_RESOURCES}
    bucket = resources["InputBucket"]
    bucket["DependsOn"] = "EventQueuePolicy"
    notification = bucket["Properties"]["NotificationConfiguration"]
    notification["QueueConfigurations"] = _retarget(notification.pop("LambdaConfigurations"))
    resources["EventQueue"] = {"Type": "AWS::SQS::Queue"}
    resources["EventQueuePolicy"] = {
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {
            "Queues": [{"Ref": "EventQueue"}],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "s3.amazonaws.com"},
                        "Action": "sqs:SendMessage",
                        "Resource": {"Fn::GetAtt": ["EventQueue", "Arn"]},
                        "Condition": {
                            "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
                        },
                    }
                ],
            },
        },
    }
    conditions = {
        name: template["Conditions"][name] for name in _mentions(resources, CONDITION_NAMES)
    }
    referenced = _mentions([resources, conditions], *REFERENCED_NAMES)
    return {
        "Parameters": {
            name: spec for name, spec in template["Parameters"].items() if name in referenced
        },
        "Conditions": conditions,
        "Resources": resources,
        "Outputs": {
            "InputBucketName": {"Value": {"Ref": "InputBucket"}},
            "JobQueueUrl": {"Value": {"Ref": "JobQueue"}},
            "DeadLetterQueueUrl": {"Value": {"Ref": "DeadLetterQueue"}},
            "EventQueueUrl": {"Value": {"Ref": "EventQueue"}},
        },
    }


def deploy(backend: Backend, template: dict[str, Any], parameters: dict[str, str]) -> str:
    """Create the stack on the backend and wait for CREATE_COMPLETE; returns its name."""
    name = f"plumbing-{uuid.uuid4().hex[:8]}"
    cloudformation = backend.client("cloudformation")
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )

    def finished() -> dict[str, Any] | None:
        [stack] = cloudformation.describe_stacks(StackName=name)["Stacks"]
        return None if stack["StackStatus"].endswith("_IN_PROGRESS") else stack

    stack = wait_for(finished, DEADLINE_SECONDS, f"stack {name}", interval=0.3)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return name


def apply_dropped_bucket_properties(
    backend: Backend, template: dict[str, Any], parameters: dict[str, str], stack_name: str
) -> None:
    """Apply the bucket settings moto's CloudFormation ignores (its notification among them)
    with the S3 API, as the local cloud does: the template resolved as deployed."""
    cloudformation = backend.client("cloudformation")
    [stack] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    resources = cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
    physical = {
        resource["LogicalResourceId"]: resource["PhysicalResourceId"]
        for resource in resources
        if resource.get("LogicalResourceId") and resource.get("PhysicalResourceId")
    }
    queue_arn = backend.client("sqs").get_queue_attributes(
        QueueUrl=physical["EventQueue"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    account = stack["StackId"].split(":")[4]
    pseudo = pseudo_parameters(stack_name, account, stack_id=stack["StackId"])
    context = make_context(
        template, parameters, pseudo, physical, attributes={"EventQueue.Arn": queue_arn}
    )
    properties = resolve(template["Resources"]["InputBucket"]["Properties"], context)
    s3 = backend.client("s3")
    for method, arguments in s3_bucket_calls(properties):
        getattr(s3, method)(Bucket=physical["InputBucket"], **arguments)


@pytest.fixture
def plumbing(aws_backend: Backend) -> dict[str, str]:
    """The plumbing stack's outputs; its notification is in force on either backend."""
    template = plumbing_template()
    parameters = {"EnvironmentName": f"batch-{uuid.uuid4().hex[:8]}"}
    name = deploy(aws_backend, template, parameters)
    if not aws_backend.cloudformation_applies_s3_notifications:
        apply_dropped_bucket_properties(aws_backend, template, parameters, name)
    [stack] = aws_backend.client("cloudformation").describe_stacks(StackName=name)["Stacks"]
    return {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}


def s3_events(sqs: Any, queue_url: str, keys: set[str]) -> list[dict[str, Any]]:
    """Every event body on the queue until records for all `keys` have arrived."""
    bodies: list[dict[str, Any]] = []

    def arrived() -> bool:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in batch:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        seen = {
            unquote_plus(record["s3"]["object"]["key"])
            for body in bodies
            for record in body.get("Records", [])
        }
        return keys <= seen

    wait_for(arrived, DEADLINE_SECONDS, f"S3 events for {sorted(keys)}", interval=0)
    return bodies


def test_uploads_reach_the_handler_through_the_templates_bucket_notification(
    trigger: Trigger, plumbing: dict[str, str]
) -> None:
    """Spaces in keys arrive as %20 from LocalStack and as + from moto and AWS; the message
    carries the key as uploaded either way. Every upload reaches the function, which
    queues the supported names (.csv.gz too, with the AWS example's suffixes) and reports
    the others as skipped."""
    bucket = plumbing["InputBucketName"]
    trigger.configure(JOB_QUEUE_URL=plumbing["JobQueueUrl"], INPUT_BUCKET=bucket)
    s3 = trigger.backend.client("s3")
    s3.put_object(Bucket=bucket, Key="incoming/notes.txt", Body=b"not a batch file")
    uploads = {
        "incoming/data set/part 1+2.parquet": b"parquet bytes",
        "incoming/résumé/year=2026.csv.gz": b"gzip bytes",
        "incoming/ROWS.CSV": b"a,b\n1,2\n",
    }
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    events = s3_events(trigger.sqs, plumbing["EventQueueUrl"], {*uploads, "incoming/notes.txt"})
    summaries = [trigger.invoke(event) for event in events]

    notifications = [event for event in events if "Records" in event]
    expected = [message for event in notifications for message in expected_messages(event)]
    assert sorted(message["key"] for message in expected) == sorted(
        [*uploads, "incoming/notes.txt"]
    ), "one event per upload, whatever its name"
    expected = [message for message in expected if message["key"] in uploads]
    assert sum(summary["queued"] for summary in summaries) == len(uploads)
    assert sum(summary["skipped"] for summary in summaries) == 1
    assert trigger.report("incoming/notes.txt")["status"] == "skipped"
    messages = trigger.messages()
    assert by_key(messages) == by_key(expected)
    for message in messages:
        head = s3.head_object(Bucket=bucket, Key=message["key"])
        assert message["bucket"] == bucket
        assert message["etag"] == head["ETag"].strip('"')
        assert message["size"] == len(uploads[message["key"]]) == head["ContentLength"]
        if message["version_id"] is not None:  # moto's events leave the version out
            assert message["version_id"] == head["VersionId"]
    redrive = trigger.sqs.get_queue_attributes(
        QueueUrl=plumbing["JobQueueUrl"], AttributeNames=["RedrivePolicy"]
    )["Attributes"]["RedrivePolicy"]
    dead_letters = trigger.sqs.get_queue_attributes(
        QueueUrl=plumbing["DeadLetterQueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    assert json.loads(redrive) == {"deadLetterTargetArn": dead_letters, "maxReceiveCount": 3}
    assert len(trigger.tasks()) == len(uploads)
