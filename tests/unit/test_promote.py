"""scripts/promote.py against in-process moto, with docker and git replaced by a recorder."""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
ACCOUNT = "123456789012"
REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
COMMIT = "abc1234"


def _load_promote():
    spec = importlib.util.spec_from_file_location("promote", ROOT / "scripts" / "promote.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["promote"] = module
    spec.loader.exec_module(module)
    return module


promote = _load_promote()

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Parameters:
  ImageUri: {Type: String}
  LambdaCodeBucket: {Type: String}
  LambdaCodeKey: {Type: String}
  EnvironmentName: {Type: String, Default: model-endpoint}
  MaxWorkers: {Type: Number, Default: "4"}
  OutputFormat: {Type: String, Default: parquet, AllowedValues: [parquet, csv, jsonl]}
  OutputPrefix: {Type: String, Default: predictions}
  EndpointUrlValue: {Type: String, Default: ""}
  Subnets:
    Type: List<AWS::EC2::Subnet::Id>
    Description: Subnets of the tasks.
Conditions:
  HasEndpoint: !Not [!Equals [!Ref EndpointUrlValue, ""]]
Resources:
  InputBucket:
    Type: AWS::S3::Bucket
  OutputBucket:
    Type: AWS::S3::Bucket
  JobQueue:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub "${EnvironmentName}-jobs"
Outputs:
  InputBucketName: {Value: !Ref InputBucket}
  OutputBucketName: {Value: !Ref OutputBucket}
  JobQueueUrl: {Value: !Ref JobQueue}
  EndpointUrl:
    Condition: HasEndpoint
    Value: !Ref EndpointUrlValue
"""

PARAMS = {"LambdaCodeBucket": "artifacts-bucket", "Subnets": ["subnet-1", "subnet-2"]}


class FakeRunner:
    """Records every command; answers git like a clean (or dirty) checkout."""

    def __init__(self, dirty: str = "") -> None:
        self.commands: list[list[str]] = []
        self.inputs: list[str | None] = []
        self.dirty = dirty

    def run(self, cmd, input=None, echo=False):
        self.commands.append(list(cmd))
        self.inputs.append(input)
        stdout = ""
        if cmd[:2] == ["git", "rev-parse"]:
            stdout = COMMIT + "\n"
        elif cmd[:2] == ["git", "status"]:
            stdout = self.dirty
        return subprocess.CompletedProcess(cmd, 0, stdout, "")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws(clean_env):
    with mock_aws():
        yield boto3.Session(region_name=REGION)


@pytest.fixture
def project(tmp_path):
    """A template, a parameter file and a Lambda source folder."""
    (tmp_path / "stack.yaml").write_text(TEMPLATE)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    source = tmp_path / "lambda"
    source.mkdir()
    (source / "handler.py").write_text("def handler(event, context):\n    return event\n")
    return tmp_path


def fast_pacing():
    return promote.Pacing(poll_seconds=0.0, sleep=lambda _: None)


def argv(project: Path, *extra: str, params: str = "params.json") -> list[str]:
    return [
        "--params", str(project / params), "--template", str(project / "stack.yaml"),
        "--lambda-source", str(project / "lambda"), "--region", REGION, *extra,
    ]  # fmt: skip


def run(project, runner, *extra, params="params.json"):
    return promote.main(argv(project, *extra, params=params), runner=runner, pacing=fast_pacing())


def expected_key(project: Path) -> str:
    return promote.content_key("lambda", promote.lambda_zip(project / "lambda"), ".zip")


# ---------------------------------------------------------------- pure functions


@pytest.fixture
def template_file(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text(TEMPLATE)
    return path


def test_check_parameters_names_missing_unknown_and_disallowed(template_file):
    declared = promote.template_parameters(promote.load_template(template_file))
    problems = promote.check_parameters(
        declared, {"MaxWorker": "3", "OutputFormat": "xml", "LambdaCodeBucket": "b"}
    )
    assert "unknown parameter MaxWorker: the template declares no such parameter" in problems
    assert (
        "missing parameter Subnets (List<AWS::EC2::Subnet::Id>): Subnets of the tasks." in problems
    )
    assert "parameter OutputFormat='xml' is not one of ['parquet', 'csv', 'jsonl']" in problems
    assert not [p for p in problems if "ImageUri" in p or "LambdaCodeKey" in p]


def test_check_parameters_needs_a_code_bucket_once(template_file):
    declared = promote.template_parameters(promote.load_template(template_file))
    for given in ({"Subnets": "s"}, {"Subnets": "s", "LambdaCodeBucket": ""}):
        problems = promote.check_parameters(declared, given)
        assert problems == [
            "missing parameter LambdaCodeBucket: the S3 bucket for the Lambda package "
            "(promote creates it when missing)"
        ]


def test_check_parameters_accepts_a_complete_file(template_file):
    declared = promote.template_parameters(promote.load_template(template_file))
    assert (
        promote.check_parameters(declared, promote.parse_parameter_file(json.dumps(PARAMS))) == []
    )


def test_template_reader_without_the_project_module(template_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "infra.template", None)
    template = promote.load_template(template_file)
    assert template["Outputs"]["JobQueueUrl"] == {"Value": {"Ref": "JobQueue"}}
    assert promote.template_parameters(template)["MaxWorkers"] == {"Type": "Number", "Default": "4"}


def test_parameter_file_shapes_agree():
    plain = promote.parse_parameter_file(json.dumps({"A": 1, "B": True, "C": ["x", "y"]}))
    cli = promote.parse_parameter_file(
        json.dumps(
            [
                {"ParameterKey": "A", "ParameterValue": "1"},
                {"ParameterKey": "B", "ParameterValue": "true"},
                {"ParameterKey": "C", "ParameterValue": "x,y"},
            ]
        )
    )
    assert plain == cli == {"A": "1", "B": "true", "C": "x,y"}
    with pytest.raises(promote.PromoteError, match="not valid JSON"):
        promote.parse_parameter_file("{")


def test_lambda_zip_is_reproducible_and_keyed_by_content(tmp_path):
    source = tmp_path / "lambda"
    (source / "__pycache__").mkdir(parents=True)
    (source / "handler.py").write_text("x = 1\n")
    (source / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"junk")
    first = promote.lambda_zip(source)
    time.sleep(0.01)
    (source / "handler.py").write_text("x = 1\n")  # same content, new mtime
    assert promote.lambda_zip(source) == first
    key = promote.content_key("lambda", first, ".zip")
    assert (
        key.startswith("lambda/") and key.endswith(".zip") and len(key) == len("lambda/.zip") + 64
    )
    (source / "handler.py").write_text("x = 2\n")
    assert promote.content_key("lambda", promote.lambda_zip(source), ".zip") != key
    import io
    import zipfile

    assert zipfile.ZipFile(io.BytesIO(first)).namelist() == [
        "handler.py",
        "service/__init__.py",
        "service/batch_contract.py",
        "service/jsonlog.py",
    ]


def test_format_changes_is_a_table():
    table = promote.format_changes([
        {"ResourceChange": {"Action": "Add", "LogicalResourceId": "JobQueue",
                            "ResourceType": "AWS::SQS::Queue"}},
        {"ResourceChange": {"Action": "Modify", "LogicalResourceId": "Fn",
                            "ResourceType": "AWS::Lambda::Function", "Replacement": "True"}},
    ])  # fmt: skip
    lines = table.splitlines()
    assert lines[0].split() == ["Action", "Resource", "Type", "Replacement"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["Add", "JobQueue", "AWS::SQS::Queue"]
    assert lines[3].split() == ["Modify", "Fn", "AWS::Lambda::Function", "True"]


def test_registry_login_decodes_the_token():
    token = base64.b64encode(b"AWS:secret-password").decode()
    assert promote.registry_login(token, f"https://{REGISTRY}") == (
        "AWS",
        "secret-password",
        REGISTRY,
    )


def test_image_tag_marks_uncommitted_changes():
    from datetime import UTC, datetime

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert promote.image_tag(COMMIT, False, now) == COMMIT
    assert promote.image_tag(COMMIT, True, now) == f"{COMMIT}-dirty-20260102030405"


# ---------------------------------------------------------------- refusals


def test_missing_parameter_is_refused_before_anything_runs(aws, project, capsys):
    (project / "partial.json").write_text(json.dumps({"LambdaCodeBucket": "b"}))
    runner = FakeRunner()
    assert run(project, runner, params="partial.json") == 2
    err = capsys.readouterr().err
    assert "does not fit" in err
    assert "missing parameter Subnets" in err
    assert runner.commands == []


def test_unknown_parameter_is_refused(aws, project, capsys):
    (project / "typo.json").write_text(json.dumps({**PARAMS, "MaxWorker": 2}))
    assert run(project, FakeRunner(), params="typo.json") == 2
    assert "unknown parameter MaxWorker" in capsys.readouterr().err


def test_dirty_tree_is_refused(aws, project, capsys):
    runner = FakeRunner(dirty=" M service/web.py\n")
    assert run(project, runner) == 2
    err = capsys.readouterr().err
    assert "uncommitted changes" in err and "--allow-dirty" in err and "service/web.py" in err
    assert all(cmd[0] == "git" for cmd in runner.commands)
    assert aws.client("ecr").describe_repositories()["repositories"] == []


def test_missing_credentials_are_refused(clean_env, project, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert run(project, FakeRunner()) == 2
    assert "no AWS credentials" in capsys.readouterr().err


def test_missing_region_is_refused(aws, project, monkeypatch, capsys):
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    args = [a for a in argv(project) if a not in ("--region", REGION)]
    assert promote.main(args, runner=FakeRunner(), pacing=fast_pacing()) == 2
    assert "no AWS region" in capsys.readouterr().err


def test_skip_image_on_a_new_stack_needs_an_image(aws, project, capsys):
    assert run(project, FakeRunner(), "--skip-image", "--skip-smoke") == 2
    assert "--image-uri" in capsys.readouterr().err


# ---------------------------------------------------------------- dry run


def test_dry_run_builds_pushes_and_uploads_nothing(aws, project, capsys):
    runner = FakeRunner()
    assert run(project, runner, "--dry-run") == 0
    out = capsys.readouterr().out
    assert [cmd[:2] for cmd in runner.commands] == [["git", "rev-parse"], ["git", "status"]]
    assert f"would push image {REGISTRY}/model-endpoint:{COMMIT}" in out
    key = expected_key(project)
    assert f"would upload the lambda package to s3://artifacts-bucket/{key}" in out
    assert "stack model-endpoint does not exist: a real run creates it" in out
    assert "dry run: nothing deployed, nothing uploaded" in out
    assert aws.client("ecr").describe_repositories()["repositories"] == []
    assert aws.client("s3").list_buckets()["Buckets"] == []
    assert aws.client("cloudformation").list_stacks()["StackSummaries"] == []


def test_a_loopback_endpoint_needs_yes_before_anything_happens(aws, project, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    runner = FakeRunner()
    assert run(project, runner, "--skip-smoke") == 2
    captured = capsys.readouterr()
    assert "warning: the AWS endpoint is http://127.0.0.1:4566" in captured.out
    assert "without --yes" in captured.err
    assert runner.commands == []


def test_dry_run_on_a_deployed_stack_keeps_it(aws, project, capsys):
    cloudformation = aws.client("cloudformation")
    cloudformation.create_stack(
        StackName="model-endpoint", TemplateBody=TEMPLATE,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in {
            "ImageUri": "old", "LambdaCodeBucket": "artifacts-bucket", "LambdaCodeKey": "old",
            "Subnets": "subnet-1,subnet-2"}.items()],
    )  # fmt: skip
    assert run(project, FakeRunner(), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "UPDATE change set" in out
    stack = cloudformation.describe_stacks(StackName="model-endpoint")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    assert cloudformation.list_change_sets(StackName="model-endpoint")["Summaries"] == []


def test_second_run_reuses_the_image_and_the_package(aws, project, capsys):
    ecr = aws.client("ecr")
    ecr.create_repository(repositoryName="model-endpoint")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"digest": "sha256:" + "0" * 64, "size": 1, "mediaType": "x"}, "layers": []}  # fmt: skip
    ecr.put_image(
        repositoryName="model-endpoint", imageManifest=json.dumps(manifest), imageTag=COMMIT
    )
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="artifacts-bucket")
    s3.put_object(Bucket="artifacts-bucket", Key=expected_key(project), Body=b"same")
    runner = FakeRunner()
    assert run(project, runner, "--skip-smoke") == 0
    out = capsys.readouterr().out
    assert [cmd[0] for cmd in runner.commands] == ["git", "git"]
    assert f"{REGISTRY}/model-endpoint:{COMMIT} is already in ECR" in out
    assert "(already there)" in out


def test_allow_dirty_pushes_a_marked_tag(aws, project):
    runner = FakeRunner(dirty="?? notes.txt\n")
    assert run(project, runner, "--skip-smoke", "--allow-dirty") == 0
    pushed = runner.commands[-1]
    assert pushed[:2] == ["docker", "push"] and f":{COMMIT}-dirty-" in pushed[2]


def test_large_template_goes_through_the_artifacts_bucket(aws):
    connection = promote.Aws(aws, REGION)
    connection.s3.create_bucket(Bucket="artifacts-bucket")
    body = TEMPLATE + "#" * promote.TEMPLATE_BODY_LIMIT
    argument = promote.template_argument(connection, body, "artifacts-bucket")
    key = argument["TemplateURL"].split(".amazonaws.com/", 1)[1]
    assert key.startswith("templates/")
    assert (
        connection.s3.get_object(Bucket="artifacts-bucket", Key=key)["Body"].read() == body.encode()
    )
    assert promote.template_argument(connection, TEMPLATE, "x") == {"TemplateBody": TEMPLATE}
    deployer = promote.Deployer(connection.cloudformation, "big", fast_pacing())
    parameters = [{"ParameterKey": "ImageUri", "ParameterValue": "i"},
                  {"ParameterKey": "LambdaCodeBucket", "ParameterValue": "artifacts-bucket"},
                  {"ParameterKey": "LambdaCodeKey", "ParameterValue": "k"},
                  {"ParameterKey": "Subnets", "ParameterValue": "s"}]  # fmt: skip
    deployer.create_change_set("cs", "CREATE", argument, parameters, "test")
    assert len(deployer.wait_change_set("cs")) == 3


# ---------------------------------------------------------------- execute


class _Ping(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ping" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ping)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def deployed(aws, endpoint_url: str):
    """A stack created outright (moto gives outputs only to stacks made by CreateStack)."""
    aws.client("cloudformation").create_stack(
        StackName="model-endpoint", TemplateBody=TEMPLATE,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in {
            "ImageUri": "old", "LambdaCodeBucket": "artifacts-bucket", "LambdaCodeKey": "old",
            "Subnets": "subnet-1", "EndpointUrlValue": endpoint_url}.items()],
    )  # fmt: skip


def test_execute_waits_smoke_tests_and_prints_outputs(aws, project, endpoint, capsys):
    deployed(aws, endpoint)
    (project / "params.json").write_text(json.dumps({**PARAMS, "EndpointUrlValue": endpoint}))
    assert run(project, FakeRunner()) == 0
    out = capsys.readouterr().out
    assert "UPDATE change set" in out
    assert "UPDATE_COMPLETE  model-endpoint  AWS::CloudFormation::Stack" in out
    assert "stack model-endpoint: UPDATE_COMPLETE" in out
    assert f"smoke test: GET {endpoint}/ping -> 200" in out
    table = out[out.index("Output  ") :]
    assert f"EndpointUrl       {endpoint}" in table
    assert "InputBucketName" in table and "JobQueueUrl" in table
    stack = aws.client("cloudformation").describe_stacks(StackName="model-endpoint")["Stacks"][0]
    values = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert values["ImageUri"] == f"{REGISTRY}/model-endpoint:{COMMIT}"
    assert values["LambdaCodeKey"] == expected_key(project)


def test_an_internal_load_balancer_is_not_pinged(aws, project, capsys):
    deployed(aws, "http://127.0.0.1:9")
    body = TEMPLATE.replace(
        "  Subnets:\n", "  LoadBalancerScheme: {Type: String, Default: internal}\n  Subnets:\n"
    )
    (project / "stack.yaml").write_text(body)
    assert run(project, FakeRunner()) == 0
    assert "the load balancer is internal (not reachable from here); skipping /ping" in (
        capsys.readouterr().out
    )


def test_smoke_file_waits_for_the_workers_report(aws, project, capsys):
    deployed(aws, "")
    s3 = aws.client("s3")
    stack = aws.client("cloudformation").describe_stacks(StackName="model-endpoint")["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    sample = project / "sample.csv"
    sample.write_text("id,x\n1,2\n")
    stop = threading.Event()

    def worker():
        while not stop.is_set():
            listed = s3.list_objects_v2(Bucket=outputs["InputBucketName"], Prefix="smoke/")
            for item in listed.get("Contents", []):
                report = {"status": "succeeded", "rows": 1, "seconds": 0.1,
                          "output_bucket": outputs["OutputBucketName"], "output_key": "out.parquet"}  # fmt: skip
                s3.put_object(Bucket=outputs["OutputBucketName"], Body=json.dumps(report).encode(),
                              Key=f"predictions/_reports/{item['Key']}.json")  # fmt: skip
                return
            time.sleep(0.01)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        pacing = promote.Pacing(poll_seconds=0.01)
        code = promote.main(argv(project, "--smoke-file", str(sample), "--smoke-timeout", "20"),
                            runner=FakeRunner(), pacing=pacing)  # fmt: skip
    finally:
        stop.set()
        thread.join()
    assert code == 0
    out = capsys.readouterr().out
    assert "smoke test: the stack has no EndpointUrl; skipping /ping" in out
    assert "smoke test: 1 rows in 0.1 s -> s3://" in out


class FailingCloudFormation:
    """moto's client, except that executing a change set makes the stack roll back."""

    def __init__(self, real):
        self._real = real
        self._executed = False
        self._polls = 0
        self.exceptions = real.exceptions

    def __getattr__(self, name):
        return getattr(self._real, name)

    def execute_change_set(self, **kwargs):
        self._executed = True

    def describe_stacks(self, **kwargs):
        answer = self._real.describe_stacks(**kwargs)
        if self._executed:
            self._polls += 1
            answer["Stacks"][0]["StackStatus"] = (
                "ROLLBACK_IN_PROGRESS" if self._polls < 3 else "ROLLBACK_COMPLETE"
            )
        return answer

    def get_paginator(self, name):
        assert name == "describe_stack_events"
        events = []
        if self._executed:
            from datetime import UTC, datetime

            when = datetime.now(UTC)
            events = [
                {"EventId": "3", "Timestamp": when, "LogicalResourceId": "model-endpoint",
                 "ResourceType": "AWS::CloudFormation::Stack", "ResourceStatus": "ROLLBACK_IN_PROGRESS",
                 "ResourceStatusReason": "The following resource(s) failed to create: [JobQueue]."},
                {"EventId": "2", "Timestamp": when, "LogicalResourceId": "JobQueue",
                 "ResourceType": "AWS::SQS::Queue", "ResourceStatus": "CREATE_FAILED",
                 "ResourceStatusReason": "Resource handler returned message: quota exceeded"},
                {"EventId": "1", "Timestamp": when, "LogicalResourceId": "JobQueue",
                 "ResourceType": "AWS::SQS::Queue", "ResourceStatus": "CREATE_IN_PROGRESS"},
            ]  # fmt: skip

        class Pages:
            def paginate(self, **kwargs):
                return [{"StackEvents": events}]

        return Pages()


def test_failed_deployment_prints_failed_events_and_exits_non_zero(
    aws, project, monkeypatch, capsys
):
    connect = promote.connect

    def failing_connect(region):
        connection = connect(region)
        connection.cloudformation = FailingCloudFormation(connection.cloudformation)
        return connection

    monkeypatch.setattr(promote, "connect", failing_connect)
    assert run(project, FakeRunner()) == 1
    captured = capsys.readouterr()
    assert "CREATE_IN_PROGRESS  JobQueue  AWS::SQS::Queue" in captured.out
    assert "failed resources:" in captured.err
    failed_row = [line for line in captured.err.splitlines() if line.startswith("JobQueue")]
    assert (
        len(failed_row) == 1
        and "CREATE_FAILED" in failed_row[0]
        and "quota exceeded" in failed_row[0]
    )
    assert "ended in ROLLBACK_COMPLETE" in captured.err and "delete-stack" in captured.err
    assert "smoke test" not in captured.out


# ---------------------------------------------------------------- the real template


def test_the_project_template_declares_what_promote_fills_in():
    template = ROOT / "infra" / "stack.yaml"
    declared = promote.template_parameters(promote.load_template(template))
    assert {"ImageUri", "LambdaCodeBucket", "LambdaCodeKey"} <= set(declared)
    example = ROOT / "infra" / "params" / "aws.example.json"
    given = promote.parse_parameter_file(example.read_text())
    assert [p for p in promote.check_parameters(declared, given) if "unknown" in p] == []
