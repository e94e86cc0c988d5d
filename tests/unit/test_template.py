"""Checks on infra/stack.yaml and its parameter files: lint, least privilege,
encryption, the queue's redrive and timing, and the contract names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint_file

from infra.template import (
    PARAMS_DIR,
    STACK_PATH,
    Context,
    TemplateError,
    load_parameter_file,
    load_template,
    make_context,
    parameter_values,
    pseudo_parameters,
    resolve,
    s3_bucket_calls,
)
from service.batch_contract import is_triggered

WORKER_VISIBILITY_SECONDS = 120  # service/settings.py WorkerSettings default

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
CONTRACT_PARAMETERS = {
    "MaxWorkers",
    "FilesPerWorker",
    "TriggerSuffixes",
    "OutputPrefix",
    "OutputFormat",
    "ModelUri",
    "ImageUri",
    "LambdaCodeBucket",
    "LambdaCodeKey",
    "Subnets",
    "SecurityGroups",
    "AssignPublicIp",
    "WorkerCpu",
    "WorkerMemory",
    "EndpointCpu",
    "EndpointMemory",
    "EndpointDesiredCount",
    "EndpointMinCount",
    "EndpointMaxCount",
    "EnableLoadBalancer",
    "VpcId",
    "IdleSeconds",
    "LogRetentionDays",
    "EnvironmentName",
}
LAMBDA_ENVIRONMENT = {
    "JOB_QUEUE_URL",
    "FAILURE_QUEUE_URL",
    "INPUT_BUCKET",
    "OUTPUT_BUCKET",
    "OUTPUT_PREFIX",
    "CLUSTER_NAME",
    "TASK_DEFINITION",
    "WORKER_CONTAINER",
    "SUBNETS",
    "SECURITY_GROUPS",
    "ASSIGN_PUBLIC_IP",
    "MAX_WORKERS",
    "FILES_PER_WORKER",
    "TRIGGER_SUFFIXES",
    "STARTED_BY",
    "LAUNCH_TYPE",
}
BATCH_TRIGGER_ACTIONS = {
    "sqs:SendMessage",
    "sqs:GetQueueAttributes",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "s3:PutObject",
    "ecs:RunTask",
    "ecs:ListTasks",
    "ecs:DescribeTasks",
    "ecs:StopTask",
    "iam:PassRole",
    "logs:CreateLogStream",
    "logs:PutLogEvents",
}
# Actions AWS only authorises on Resource "*"; each must be named here with why.
WILDCARD_RESOURCE_ACTIONS = {
    "ecr:GetAuthorizationToken": "has no resource type",
    "ecs:ListTasks": "is authorised before any task exists; scoped by an ecs:cluster condition",
}
POLICY_TYPES = {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::S3::BucketPolicy"}
PLACEHOLDER = "auto"
STACK_NAME = "model-endpoint-local"


class AnyAttribute(dict):
    """GetAtt values for tests: every "Logical.Attribute" resolves to a readable fake."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        logical_id, attribute = key.split(".", 1)
        if attribute == "Arn":
            return f"arn:aws:test:::{logical_id}"
        return f"{logical_id}-{attribute}"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template(STACK_PATH)


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    return template["Resources"]


def context_for(template: dict[str, Any], **given: str) -> Context:
    base = load_parameter_file(PARAMS_DIR / "local.json")
    base.update(given)
    physical = {name: f"{name}-id" for name in template["Resources"]}
    return make_context(template, base, pseudo_parameters(STACK_NAME), physical, AnyAttribute())


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def policy_documents(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every permission policy in the template (trust policies are not permissions)."""
    for name, resource in resources.items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                yield name, policy["PolicyDocument"]
        elif resource["Type"] in POLICY_TYPES:
            yield name, properties["PolicyDocument"]


def statements(resources: dict[str, Any], effect: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, document in policy_documents(resources):
        for statement in as_list(document["Statement"]):
            if statement["Effect"] == effect:
                yield name, statement


def role_actions(resources: dict[str, Any], role: str) -> set[str]:
    return {
        action
        for name, statement in statements(resources, "Allow")
        if name == role
        for action in as_list(statement["Action"])
    }


def of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: value for name, value in resources.items() if value["Type"] == kind}


def container(resources: dict[str, Any], task_definition: str) -> dict[str, Any]:
    (definition,) = resources[task_definition]["Properties"]["ContainerDefinitions"]
    return definition


# ------------------------------------------------------------------ loader


def test_loader_turns_short_tags_into_long_form(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "Version: 2012-10-17\n"
        "Resources:\n"
        "  A:\n"
        "    Type: X\n"
        "    Properties:\n"
        "      R: !Ref B\n"
        "      G: !GetAtt B.Arn\n"
        "      S: !Sub ['${x}', {x: !If [C, 1, 2]}]\n"
        "      N: !Not [!Condition C]\n"
    )
    loaded = load_template(path)
    properties = loaded["Resources"]["A"]["Properties"]
    assert loaded["Version"] == "2012-10-17"
    assert properties["R"] == {"Ref": "B"}
    assert properties["G"] == {"Fn::GetAtt": ["B", "Arn"]}
    assert properties["S"] == {"Fn::Sub": ["${x}", {"x": {"Fn::If": ["C", 1, 2]}}]}
    assert properties["N"] == {"Fn::Not": [{"Condition": "C"}]}


def test_resolver_drops_no_value_and_rejects_unknown_references(
    template: dict[str, Any],
) -> None:
    context = context_for(template)
    node = [{"Fn::If": ["UseLoadBalancer", "lb", {"Ref": "AWS::NoValue"}]}, "kept"]
    assert resolve(node, context) == ["kept"]
    with pytest.raises(TemplateError):
        resolve({"Ref": "NoSuchThing"}, context)


# ------------------------------------------------------------------ lint


def test_cfn_lint_reports_no_errors_or_warnings() -> None:
    matches = lint_file(STACK_PATH, config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    problems = [f"{m.rule.id} line {m.linenumber}: {m.message}" for m in matches]
    assert problems == []


# ------------------------------------------------------------------ least privilege


def test_no_allow_statement_grants_a_wildcard_action(resources: dict[str, Any]) -> None:
    offending = [
        (name, action)
        for name, statement in statements(resources, "Allow")
        for action in as_list(statement.get("Action", []))
        if "*" in action
    ]
    assert offending == []
    assert not [name for name, st in statements(resources, "Allow") if "NotAction" in st]


def test_wildcard_deny_statements_only_guard_transport(resources: dict[str, Any]) -> None:
    for name, statement in statements(resources, "Deny"):
        if any("*" in action for action in as_list(statement["Action"])):
            assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}, name


def test_wildcard_resources_only_where_aws_requires_them(resources: dict[str, Any]) -> None:
    for name, statement in statements(resources, "Allow"):
        if "*" not in as_list(statement["Resource"]):
            continue
        actions = as_list(statement["Action"])
        assert set(actions) <= set(WILDCARD_RESOURCE_ACTIONS), (name, actions)
        if "ecs:ListTasks" in actions:
            assert "ecs:cluster" in statement["Condition"]["ArnEquals"], name


def test_batch_trigger_role_has_exactly_the_actions_it_needs(resources: dict[str, Any]) -> None:
    assert role_actions(resources, "BatchTriggerRole") == BATCH_TRIGGER_ACTIONS


def test_batch_trigger_runs_only_the_worker_task_in_its_cluster(
    resources: dict[str, Any],
) -> None:
    by_action = {
        action: statement
        for name, statement in statements(resources, "Allow")
        if name == "BatchTriggerRole"
        for action in as_list(statement["Action"])
    }
    run_task = by_action["ecs:RunTask"]
    assert run_task["Resource"] == {"Ref": "WorkerTaskDefinition"}
    assert run_task["Condition"]["ArnEquals"]["ecs:cluster"] == {"Fn::GetAtt": ["Cluster", "Arn"]}
    pass_role = by_action["iam:PassRole"]
    assert pass_role["Resource"] == [
        {"Fn::GetAtt": ["WorkerTaskRole", "Arn"]},
        {"Fn::GetAtt": ["TaskExecutionRole", "Arn"]},
    ]
    assert pass_role["Condition"]["StringEquals"]["iam:PassedToService"] == (
        "ecs-tasks.amazonaws.com"
    )
    assert by_action["logs:PutLogEvents"]["Resource"] == {
        "Fn::GetAtt": ["BatchTriggerLogGroup", "Arn"]
    }


def test_endpoint_role_only_reads_the_model(resources: dict[str, Any]) -> None:
    assert role_actions(resources, "EndpointTaskRole") == {"s3:GetObject", "s3:ListBucket"}


def test_worker_role_reads_input_writes_output_and_consumes_jobs(
    resources: dict[str, Any],
) -> None:
    assert role_actions(resources, "WorkerTaskRole") == {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:ListBucket",
        "s3:PutObject",
        "s3:AbortMultipartUpload",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
    }


# ------------------------------------------------------------------ storage and queues


def test_every_bucket_is_encrypted_and_blocks_public_access(resources: dict[str, Any]) -> None:
    buckets = of_type(resources, "AWS::S3::Bucket")
    assert set(buckets) == {"InputBucket", "OutputBucket", "ModelBucket"}
    for name, bucket in buckets.items():
        properties = bucket["Properties"]
        (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
        block = properties["PublicAccessBlockConfiguration"]
        assert block == dict.fromkeys(
            ["BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"],
            True,
        ), name


def test_every_bucket_denies_plain_http(resources: dict[str, Any]) -> None:
    guarded = {
        policy["Properties"]["Bucket"]["Ref"]
        for policy in of_type(resources, "AWS::S3::BucketPolicy").values()
        if any(
            st["Effect"] == "Deny" and "aws:SecureTransport" in st["Condition"]["Bool"]
            for st in policy["Properties"]["PolicyDocument"]["Statement"]
        )
    }
    assert guarded == set(of_type(resources, "AWS::S3::Bucket"))


def test_input_bucket_is_versioned(resources: dict[str, Any]) -> None:
    properties = resources["InputBucket"]["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}


def test_every_queue_is_encrypted(resources: dict[str, Any]) -> None:
    queues = of_type(resources, "AWS::SQS::Queue")
    assert set(queues) == {"JobQueue", "DeadLetterQueue", "TriggerFailureQueue"}
    for name, queue in queues.items():
        properties = queue["Properties"]
        assert properties.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in properties, (
            name
        )


def test_job_queue_redrives_to_the_dead_letter_queue_after_three_receives(
    resources: dict[str, Any],
) -> None:
    redrive = resources["JobQueue"]["Properties"]["RedrivePolicy"]
    assert redrive == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": 3,
    }
    fourteen_days = 14 * 24 * 3600
    assert resources["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] == fourteen_days


def test_job_queue_visibility_outlasts_the_worker_heartbeat(resources: dict[str, Any]) -> None:
    timeout = resources["JobQueue"]["Properties"]["VisibilityTimeout"]
    assert timeout >= 2 * WORKER_VISIBILITY_SECONDS


def test_every_log_group_has_a_retention(resources: dict[str, Any]) -> None:
    groups = of_type(resources, "AWS::Logs::LogGroup")
    assert len(groups) == 3
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


# ------------------------------------------------------------------ batch trigger


def test_batch_trigger_environment_is_the_contract(resources: dict[str, Any]) -> None:
    function = resources["BatchTriggerFunction"]["Properties"]
    variables = function["Environment"]["Variables"]
    assert set(variables) == LAMBDA_ENVIRONMENT
    assert variables["STARTED_BY"] == "batch-worker"
    assert variables["WORKER_CONTAINER"] == "worker"
    assert variables["LAUNCH_TYPE"] == "FARGATE"
    assert variables["TASK_DEFINITION"] == {"Ref": "WorkerTaskDefinition"}
    assert (function["Runtime"], function["Handler"]) == ("python3.11", "handler.handler")
    assert function["Code"] == {
        "S3Bucket": {"Ref": "LambdaCodeBucket"},
        "S3Key": {"Ref": "LambdaCodeKey"},
    }
    assert 30 <= function["Timeout"] <= 120


def test_batch_trigger_reserves_a_concurrency_of_one_by_default(
    template: dict[str, Any],
) -> None:
    function = template["Resources"]["BatchTriggerFunction"]["Properties"]
    default = resolve(function, context_for(template))
    assert default["ReservedConcurrentExecutions"] == 1
    unreserved = resolve(function, context_for(template, ReserveTriggerConcurrency="false"))
    assert "ReservedConcurrentExecutions" not in unreserved


def test_schedule_rule_invokes_the_trigger_every_minute(resources: dict[str, Any]) -> None:
    rule = resources["ScheduleRule"]["Properties"]
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert rule["State"] == "ENABLED"
    assert [t["Arn"] for t in rule["Targets"]] == [{"Fn::GetAtt": ["BatchTriggerFunction", "Arn"]}]
    permission = resources["ScheduleInvokePermission"]["Properties"]
    assert permission["Principal"] == "events.amazonaws.com"
    assert permission["SourceArn"] == {"Fn::GetAtt": ["ScheduleRule", "Arn"]}


def input_notification(template: dict[str, Any], **given: str) -> list[dict[str, Any]]:
    """The notification call the template's input bucket resolves to, as S3's API takes it."""
    properties = resolve(
        template["Resources"]["InputBucket"]["Properties"], context_for(template, **given)
    )
    calls = dict(s3_bucket_calls(properties))
    assert calls["put_bucket_versioning"] == {"VersioningConfiguration": {"Status": "Enabled"}}
    notification = calls["put_bucket_notification_configuration"]["NotificationConfiguration"]
    return notification["LambdaFunctionConfigurations"]


@pytest.mark.parametrize("file_name", ["local.json", "aws.example.json"])
def test_every_object_notifies_the_trigger_whatever_its_suffix(
    template: dict[str, Any], file_name: str
) -> None:
    """S3's suffix filter is literal (case-sensitive, .csv misses .csv.gz), so there is none:
    the trigger decides, and with the AWS parameters a .csv.gz upload reaches it too."""
    given = load_parameter_file(PARAMS_DIR / file_name)
    [config] = input_notification(template, **given)
    assert config == {
        "LambdaFunctionArn": "arn:aws:test:::BatchTriggerFunction",
        "Events": ["s3:ObjectCreated:*"],
    }
    suffixes = given["TriggerSuffixes"].split(",")
    for key in ("in/rows.csv.gz", "in/ROWS.CSV", "in/e.jsonl.gz", "in/a.parquet"):
        assert is_triggered(key, suffixes), key


def test_an_input_prefix_limits_the_notification(template: dict[str, Any]) -> None:
    [config] = input_notification(template, InputPrefix="incoming/")
    assert config["Filter"] == {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}


def test_failed_trigger_events_go_to_an_encrypted_queue_the_trigger_redrives(
    resources: dict[str, Any],
) -> None:
    config = resources["BatchTriggerEventInvokeConfig"]["Properties"]
    assert config["FunctionName"] == {"Ref": "BatchTriggerFunction"}
    assert config["DestinationConfig"] == {
        "OnFailure": {"Destination": {"Fn::GetAtt": ["TriggerFailureQueue", "Arn"]}}
    }
    assert config["MaximumRetryAttempts"] == 2 and config["MaximumEventAgeInSeconds"] <= 21600
    variables = resources["BatchTriggerFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["FAILURE_QUEUE_URL"] == {"Ref": "TriggerFailureQueue"}
    allowed = {
        action
        for name, statement in statements(resources, "Allow")
        if name == "BatchTriggerRole"
        and statement["Resource"] == {"Fn::GetAtt": ["TriggerFailureQueue", "Arn"]}
        for action in as_list(statement["Action"])
    }
    assert allowed == {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage"}


def test_outputs_are_versioned_and_old_versions_expire(resources: dict[str, Any]) -> None:
    properties = resources["OutputBucket"]["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    [rule] = properties["LifecycleConfiguration"]["Rules"]
    assert rule["Status"] == "Enabled" and rule["NoncurrentVersionExpiration"]["NoncurrentDays"] > 0


def test_trigger_permission_and_worker_role_name_the_input_bucket(
    template: dict[str, Any],
) -> None:
    context = context_for(template)
    resources = template["Resources"]
    bucket = resolve(resources["InputBucket"]["Properties"]["BucketName"], context)
    assert re.fullmatch(r"model-endpoint-local-input-123456789012-[0-9a-f]{8}", bucket)
    permission = resolve(resources["InputBucketInvokePermission"]["Properties"], context)
    assert permission["SourceArn"] == f"arn:aws:s3:::{bucket}"
    assert permission["SourceAccount"] == "123456789012"
    assert resources["InputBucket"]["DependsOn"] == "InputBucketInvokePermission"
    role = resolve(resources["WorkerTaskRole"]["Properties"], context)
    (read_input,) = [
        st for st in role["Policies"][0]["PolicyDocument"]["Statement"] if st["Sid"] == "ReadInput"
    ]
    assert read_input["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


# ------------------------------------------------------------------ containers


def test_worker_task_definition(resources: dict[str, Any]) -> None:
    properties = resources["WorkerTaskDefinition"]["Properties"]
    assert properties["RequiresCompatibilities"] == ["FARGATE"]
    assert properties["NetworkMode"] == "awsvpc"
    assert (properties["Cpu"], properties["Memory"]) == (
        {"Ref": "WorkerCpu"},
        {"Ref": "WorkerMemory"},
    )
    worker = container(resources, "WorkerTaskDefinition")
    assert worker["Name"] == "worker"
    assert worker["Command"] == ["worker"]
    assert worker["Image"] == {"Ref": "ImageUri"}
    assert worker["Memory"] == {"Ref": "WorkerMemory"}
    names = {item["Name"] for item in worker["Environment"]}
    assert {
        "MODEL_URI",
        "JOB_QUEUE_URL",
        "OUTPUT_BUCKET",
        "OUTPUT_PREFIX",
        "OUTPUT_FORMAT",
        "IDLE_SECONDS",
        "VISIBILITY_SECONDS",
    } <= names
    visibility = next(i for i in worker["Environment"] if i["Name"] == "VISIBILITY_SECONDS")
    assert visibility["Value"] == {"Fn::Sub": "${WorkerVisibilitySeconds}"}
    poll = next(i for i in worker["Environment"] if i["Name"] == "WAIT_SECONDS")
    assert poll["Value"] == {"Fn::Sub": "${WorkerPollSeconds}"}
    assert worker["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": "WorkerLogGroup"}


def test_endpoint_task_definition_and_service(resources: dict[str, Any]) -> None:
    endpoint = container(resources, "EndpointTaskDefinition")
    assert endpoint["Name"] == "endpoint"
    assert endpoint["Command"] == ["serve"]
    assert endpoint["PortMappings"][0]["ContainerPort"] == 8080
    assert endpoint["Memory"] == {"Ref": "EndpointMemory"}
    assert "MODEL_URI" in {item["Name"] for item in endpoint["Environment"]}
    service = resources["EndpointService"]["Properties"]
    assert service["TaskDefinition"] == {"Ref": "EndpointTaskDefinition"}
    assert service["DesiredCount"] == {"Ref": "EndpointDesiredCount"}
    target_group = resources["TargetGroup"]["Properties"]
    assert target_group["HealthCheckPath"] == "/ping"
    assert target_group["Port"] == 8080


@pytest.mark.parametrize(
    ("model_uri", "expected"),
    [("", "s3://ModelBucket-id/models/example/1/"), ("s3://other/m/2/", "s3://other/m/2/")],
)
def test_model_uri_defaults_to_the_example_prefix(
    template: dict[str, Any], model_uri: str, expected: str
) -> None:
    context = context_for(template, ModelUri=model_uri)
    for task_definition in ("WorkerTaskDefinition", "EndpointTaskDefinition"):
        environment = resolve(container(template["Resources"], task_definition), context)
        values = {item["Name"]: item["Value"] for item in environment["Environment"]}
        assert values["MODEL_URI"] == expected
    assert resolve(template["Outputs"]["ModelUri"]["Value"], context) == expected
    role = resolve(template["Resources"]["EndpointTaskRole"]["Properties"], context)
    (statement,) = role["Policies"][0]["PolicyDocument"]["Statement"]
    bucket = expected.split("/")[2]
    assert statement["Resource"] == [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]


def test_load_balancer_resources_exist_only_when_enabled(resources: dict[str, Any]) -> None:
    balancing = {
        name
        for name, resource in resources.items()
        if resource["Type"].startswith("AWS::ElasticLoadBalancingV2::")
        or resource["Type"] == "AWS::EC2::SecurityGroup"
    }
    assert balancing == {
        "LoadBalancer",
        "TargetGroup",
        "Listener",
        "LoadBalancerSecurityGroup",
        "EndpointSecurityGroup",
    }
    assert {resources[name].get("Condition") for name in balancing} == {"UseLoadBalancer"}


def test_endpoint_auto_scaling_tracks_cpu(resources: dict[str, Any]) -> None:
    target = resources["EndpointScalableTarget"]["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (
        {"Ref": "EndpointMinCount"},
        {"Ref": "EndpointMaxCount"},
    )
    policy = resources["EndpointScalingPolicy"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"


@pytest.mark.parametrize(
    ("enabled", "certificate", "expected"),
    [
        ("false", "", "http://127.0.0.1:8080"),
        ("true", "", "http://LoadBalancer-DNSName"),
        (
            "true",
            "arn:aws:acm:us-east-1:123456789012:certificate/x",
            "https://LoadBalancer-DNSName",
        ),
    ],
)
def test_endpoint_url_output(
    template: dict[str, Any], enabled: str, certificate: str, expected: str
) -> None:
    context = context_for(template, EnableLoadBalancer=enabled, CertificateArn=certificate)
    assert resolve(template["Outputs"]["EndpointUrl"]["Value"], context) == expected


# ------------------------------------------------------------------ contract names


def test_contract_outputs_are_present(template: dict[str, Any]) -> None:
    assert set(template["Outputs"]) >= CONTRACT_OUTPUTS


def test_contract_parameters_are_present(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert set(parameters) >= CONTRACT_PARAMETERS
    assert parameters["TriggerSuffixes"]["Default"] == ".parquet,.csv,.jsonl"
    assert parameters["ModelUri"]["Default"] == ""
    assert parameters["EnableLoadBalancer"]["AllowedValues"] == ["true", "false"]


def test_every_parameter_is_documented(template: dict[str, Any]) -> None:
    document = (STACK_PATH.parent / "PARAMETERS.md").read_text(encoding="utf-8")
    undocumented = [name for name in template["Parameters"] if f"`{name}`" not in document]
    assert undocumented == []


# ------------------------------------------------------------------ parameter files


def violations(spec: dict[str, Any], value: str) -> list[str]:
    """What is wrong with a parameter value, by the template's own constraints."""
    problems = []
    if "AllowedValues" in spec and value not in [str(v) for v in spec["AllowedValues"]]:
        problems.append(f"{value!r} not in {spec['AllowedValues']}")
    if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], value):
        problems.append(f"{value!r} does not match {spec['AllowedPattern']}")
    if len(value) < int(spec.get("MinLength", 0)):
        problems.append(f"{value!r} shorter than {spec['MinLength']}")
    if spec.get("Type") == "Number":
        number = float(value)
        if "MinValue" in spec and number < float(spec["MinValue"]):
            problems.append(f"{value} below {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            problems.append(f"{value} above {spec['MaxValue']}")
    return problems


@pytest.mark.parametrize("file_name", ["local.json", "aws.example.json"])
def test_parameter_file_is_complete_and_valid(template: dict[str, Any], file_name: str) -> None:
    given = load_parameter_file(PARAMS_DIR / file_name)
    declared = template["Parameters"]
    assert set(given) <= set(declared), sorted(set(given) - set(declared))
    required = {name for name, spec in declared.items() if "Default" not in spec}
    assert required <= set(given), sorted(required - set(given))
    problems = {
        name: violations(declared[name], value)
        for name, value in given.items()
        if value != PLACEHOLDER
    }
    assert {name: found for name, found in problems.items() if found} == {}
    parameter_values(template, given)


def test_local_parameters_suit_the_local_cloud() -> None:
    given = load_parameter_file(PARAMS_DIR / "local.json")
    assert given["EnableLoadBalancer"] == "false"
    assert {given[name] for name in ("Subnets", "SecurityGroups", "VpcId")} == {PLACEHOLDER}
    assert given["ImageUri"] == "local/model-endpoint:latest"
    assert (given["MaxWorkers"], given["FilesPerWorker"]) == ("2", "5")
    assert given["EndpointDesiredCount"] == "1"
    assert int(given["IdleSeconds"]) <= 15


def test_aws_example_has_no_local_placeholders() -> None:
    given = load_parameter_file(PARAMS_DIR / "aws.example.json")
    assert PLACEHOLDER not in given.values()
    assert given["EnableLoadBalancer"] == "true"
    assert given["VpcId"].startswith("vpc-")
    assert all(subnet.startswith("subnet-") for subnet in given["Subnets"].split(","))
