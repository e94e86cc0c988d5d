"""Deploy infra/stack.yaml on moto's server, as the local cloud does, and check what
it created: the contract outputs, the queue's redrive, the trigger's environment,
the schedule, a worker task, and the bucket settings moto drops and we re-apply."""

from __future__ import annotations

import io
import json
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from infra.template import (
    PARAMS_DIR,
    STACK_PATH,
    load_parameter_file,
    load_template,
    make_context,
    pseudo_parameters,
    resolve,
    s3_bucket_calls,
)
from tests.support import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")

REGION = "us-east-1"
DEADLINE_SECONDS = 30
CONTRACT_OUTPUTS = {
    "InputBucketName",
    "OutputBucketName",
    "ModelBucketName",
    "JobQueueUrl",
    "DeadLetterQueueUrl",
    "ClusterName",
    "EndpointUrl",
    "FunctionName",
    "WorkerTaskDefinition",
    "EndpointServiceName",
    "ScheduleRuleName",
}

Client = Callable[[str], Any]


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    reset = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=10).close()
    try:
        yield url
    finally:
        urllib.request.urlopen(reset, timeout=10).close()
        server.stop()


@pytest.fixture(scope="module")
def client(moto_url: str) -> Client:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    return lambda service: session.client(service, endpoint_url=moto_url)


@pytest.fixture(scope="module")
def network(client: Client) -> dict[str, str]:
    """Real ids from moto's default VPC, in place of local.json's "auto" placeholders."""
    ec2 = client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    vpc_filter = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    subnets = ec2.describe_subnets(Filters=vpc_filter)["Subnets"]
    groups = ec2.describe_security_groups(
        Filters=[*vpc_filter, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    return {
        "VpcId": vpc["VpcId"],
        "Subnets": ",".join(subnet["SubnetId"] for subnet in subnets[:2]),
        "SecurityGroups": groups[0]["GroupId"],
    }


def upload_lambda_package(client: Client, bucket: str, key: str) -> None:
    s3 = client("s3")
    if bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=bucket)
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    return event\n")
    s3.put_object(Bucket=bucket, Key=key, Body=package.getvalue())


def deploy(client: Client, stack_name: str, parameters: dict[str, str]) -> dict[str, Any]:
    """Create the stack and wait for a final status; returns the stack description."""
    upload_lambda_package(client, parameters["LambdaCodeBucket"], parameters["LambdaCodeKey"])
    cloudformation = client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=STACK_PATH.read_text(encoding="utf-8"),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM"],
    )

    def settled() -> dict[str, Any] | None:
        (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        return None if stack["StackStatus"].endswith("_IN_PROGRESS") else stack

    return wait_for(settled, DEADLINE_SECONDS, f"{stack_name} to leave *_IN_PROGRESS", 0.2)


def outputs_of(stack: dict[str, Any]) -> dict[str, str]:
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


@pytest.fixture(scope="module")
def local_parameters(network: dict[str, str]) -> dict[str, str]:
    parameters = load_parameter_file(PARAMS_DIR / "local.json")
    placeholders = {name for name, value in parameters.items() if value == "auto"}
    assert placeholders == set(network)
    return {**parameters, **network}


@pytest.fixture(scope="module")
def local_stack(client: Client, local_parameters: dict[str, str]) -> dict[str, Any]:
    stack = deploy(client, "model-endpoint-local", local_parameters)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return stack


@pytest.fixture(scope="module")
def outputs(local_stack: dict[str, Any]) -> dict[str, str]:
    return outputs_of(local_stack)


def test_local_stack_has_the_contract_outputs(outputs: dict[str, str]) -> None:
    assert set(outputs) >= CONTRACT_OUTPUTS
    assert all(outputs[name] for name in CONTRACT_OUTPUTS)
    assert outputs["EndpointUrl"] == "http://127.0.0.1:8080"
    assert outputs["ModelUri"] == f"s3://{outputs['ModelBucketName']}/models/example/1/"


def test_buckets_exist_encrypted(client: Client, outputs: dict[str, str]) -> None:
    s3 = client("s3")
    for name in ("InputBucketName", "OutputBucketName", "ModelBucketName"):
        rules = s3.get_bucket_encryption(Bucket=outputs[name])["ServerSideEncryptionConfiguration"][
            "Rules"
        ]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_job_queue_redrives_to_the_dead_letter_queue(
    client: Client, outputs: dict[str, str]
) -> None:
    sqs = client("sqs")
    job = sqs.get_queue_attributes(QueueUrl=outputs["JobQueueUrl"], AttributeNames=["All"])
    dead = sqs.get_queue_attributes(QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["All"])
    redrive = json.loads(job["Attributes"]["RedrivePolicy"])
    assert redrive == {
        "deadLetterTargetArn": dead["Attributes"]["QueueArn"],
        "maxReceiveCount": 3,
    }
    assert job["Attributes"]["VisibilityTimeout"] == "300"
    assert job["Attributes"]["SqsManagedSseEnabled"] == "true"
    assert dead["Attributes"]["MessageRetentionPeriod"] == "1209600"


def test_batch_trigger_function_environment(
    client: Client, outputs: dict[str, str], local_parameters: dict[str, str]
) -> None:
    function = client("lambda").get_function(FunctionName=outputs["FunctionName"])
    configuration = function["Configuration"]
    assert (configuration["Runtime"], configuration["Handler"]) == (
        "python3.11",
        "handler.handler",
    )
    assert function["Concurrency"]["ReservedConcurrentExecutions"] == 1
    assert configuration["Environment"]["Variables"] == {
        "JOB_QUEUE_URL": outputs["JobQueueUrl"],
        "FAILURE_QUEUE_URL": outputs["TriggerFailureQueueUrl"],
        "INPUT_BUCKET": outputs["InputBucketName"],
        "OUTPUT_BUCKET": outputs["OutputBucketName"],
        "OUTPUT_PREFIX": local_parameters["OutputPrefix"],
        "CLUSTER_NAME": outputs["ClusterName"],
        "TASK_DEFINITION": outputs["WorkerTaskDefinition"],
        "WORKER_CONTAINER": "worker",
        "SUBNETS": local_parameters["Subnets"],
        "SECURITY_GROUPS": local_parameters["SecurityGroups"],
        "ASSIGN_PUBLIC_IP": local_parameters["AssignPublicIp"],
        "MAX_WORKERS": "2",
        "FILES_PER_WORKER": "5",
        "TRIGGER_SUFFIXES": local_parameters["TriggerSuffixes"],
        "STARTED_BY": "batch-worker",
        "LAUNCH_TYPE": "FARGATE",
    }


def test_trigger_may_be_invoked_by_the_input_bucket_and_the_schedule(
    client: Client, outputs: dict[str, str]
) -> None:
    policy = json.loads(client("lambda").get_policy(FunctionName=outputs["FunctionName"])["Policy"])
    sources = {
        statement["Principal"]["Service"]: statement["Condition"]["ArnLike"]["AWS:SourceArn"]
        for statement in policy["Statement"]
    }
    rule = client("events").describe_rule(Name=outputs["ScheduleRuleName"])
    assert sources == {
        "s3.amazonaws.com": f"arn:aws:s3:::{outputs['InputBucketName']}",
        "events.amazonaws.com": rule["Arn"],
    }


def test_schedule_rule_targets_the_trigger(client: Client, outputs: dict[str, str]) -> None:
    events = client("events")
    rule = events.describe_rule(Name=outputs["ScheduleRuleName"])
    assert (rule["ScheduleExpression"], rule["State"]) == ("rate(1 minute)", "ENABLED")
    function_arn = client("lambda").get_function(FunctionName=outputs["FunctionName"])[
        "Configuration"
    ]["FunctionArn"]
    targets = events.list_targets_by_rule(Rule=outputs["ScheduleRuleName"])["Targets"]
    assert [target["Arn"] for target in targets] == [function_arn]


def test_worker_task_starts_as_the_trigger_would_start_it(
    client: Client, outputs: dict[str, str], local_parameters: dict[str, str]
) -> None:
    ecs = client("ecs")
    started = ecs.run_task(
        cluster=outputs["ClusterName"],
        taskDefinition=outputs["WorkerTaskDefinition"],
        launchType="FARGATE",
        startedBy="batch-worker",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": local_parameters["Subnets"].split(","),
                "securityGroups": local_parameters["SecurityGroups"].split(","),
                "assignPublicIp": local_parameters["AssignPublicIp"],
            }
        },
    )
    assert started["failures"] == []
    (task,) = started["tasks"]
    definition = ecs.describe_task_definition(taskDefinition=outputs["WorkerTaskDefinition"])
    (container,) = definition["taskDefinition"]["containerDefinitions"]
    assert (container["name"], container["command"]) == ("worker", ["worker"])
    environment = {item["name"]: item["value"] for item in container["environment"]}
    assert environment["JOB_QUEUE_URL"] == outputs["JobQueueUrl"]
    assert environment["OUTPUT_BUCKET"] == outputs["OutputBucketName"]
    assert environment["MODEL_URI"] == outputs["ModelUri"]
    assert environment["IDLE_SECONDS"] == local_parameters["IdleSeconds"]
    ecs.stop_task(cluster=outputs["ClusterName"], task=task["taskArn"])


def test_endpoint_service_has_the_desired_count(client: Client, outputs: dict[str, str]) -> None:
    (service,) = client("ecs").describe_services(
        cluster=outputs["ClusterName"], services=[outputs["EndpointServiceName"]]
    )["services"]
    assert service["desiredCount"] == 1
    assert service["taskDefinition"].split("/")[-1].startswith("model-endpoint-local-endpoint:")


def test_dropped_input_bucket_settings_can_be_reapplied(
    client: Client,
    local_stack: dict[str, Any],
    outputs: dict[str, str],
    local_parameters: dict[str, str],
) -> None:
    s3 = client("s3")
    bucket = outputs["InputBucketName"]
    assert "LambdaFunctionConfigurations" not in s3.get_bucket_notification_configuration(
        Bucket=bucket
    )
    function_arn = client("lambda").get_function(FunctionName=outputs["FunctionName"])[
        "Configuration"
    ]["FunctionArn"]
    template = load_template(STACK_PATH)
    pseudo = pseudo_parameters(local_stack["StackName"], stack_id=local_stack["StackId"])
    context = make_context(
        template,
        local_parameters,
        pseudo,
        attributes={"BatchTriggerFunction.Arn": function_arn},
    )
    properties = resolve(template["Resources"]["InputBucket"]["Properties"], context)
    assert properties["BucketName"] == bucket
    for method, arguments in s3_bucket_calls(properties):
        getattr(s3, method)(Bucket=bucket, **arguments)

    notification = s3.get_bucket_notification_configuration(Bucket=bucket)
    [config] = notification["LambdaFunctionConfigurations"]
    assert (config["LambdaFunctionArn"], config["Events"]) == (
        function_arn,
        ["s3:ObjectCreated:*"],
    )
    assert "Filter" not in config, "every object notifies the trigger (no InputPrefix set)"
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert s3.put_object(Bucket=bucket, Key="probe.txt", Body=b"x")["VersionId"]


def test_stack_with_load_balancer_completes(
    client: Client, local_parameters: dict[str, str]
) -> None:
    parameters = {**local_parameters, "EnableLoadBalancer": "true"}
    stack = deploy(client, "model-endpoint-with-lb", parameters)
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    cloudformation, elbv2 = client("cloudformation"), client("elbv2")

    # moto's DescribeStackResource fails on this stack and its list has entries
    # without ids (skipped resource types), hence the list and .get.
    listed = cloudformation.describe_stack_resources(StackName=stack["StackName"])
    physical = {
        resource.get("LogicalResourceId"): resource.get("PhysicalResourceId")
        for resource in listed["StackResources"]
    }

    (balancer,) = elbv2.describe_load_balancers(LoadBalancerArns=[physical["LoadBalancer"]])[
        "LoadBalancers"
    ]
    assert outputs_of(stack)["EndpointUrl"] == f"http://{balancer['DNSName']}"
    (group,) = elbv2.describe_target_groups(TargetGroupArns=[physical["TargetGroup"]])[
        "TargetGroups"
    ]
    assert (group["HealthCheckPath"], group["Port"]) == ("/ping", 8080)
