"""The local development loop: your model, your changes, your data kept.

Each test owns its cloud (``python -m localcloud up`` as a subprocess on free ports) and
uses it as a developer does: boto3 and the AWS CLI against its port, HTTP to its endpoint.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import tools
from tests.e2e.batch_helpers import WorkerWatch, get_json, report_key, to_parquet, wait_reports
from tests.e2e.cloud_process import REPO_ROOT, LocalCloudProcess, wait_for, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

STACK = "model-endpoint-local"
TRAIN = REPO_ROOT / "scripts" / "train_example.py"
# service/metrics.py's gauge of the model each endpoint process serves.
MODEL_INFO = re.compile(
    r'^endpoint_model_info\{name="(?P<name>[^"]*)",version="(?P<version>[^"]*)"\}'
)


def train(folder: Path, name: str, version: str) -> Path:
    """A bundle of the example model with the given name and version."""
    subprocess.run(
        [sys.executable, str(TRAIN), "--out", str(folder), "--name", name, "--version", version],
        cwd=REPO_ROOT, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return folder


def sample_rows(rows: int = 20) -> bytes:
    sys.path.insert(0, str(TRAIN.parent))
    try:
        from train_example import sample_rows as make_rows
    finally:
        sys.path.remove(str(TRAIN.parent))
    return to_parquet(make_rows(rows))


def served_models(cloud: LocalCloudProcess) -> set[tuple[str, str]]:
    """(name, version) of the models the endpoint reports in /metrics."""
    with urllib.request.urlopen(f"{cloud.endpoint}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = set()
    for line in text.splitlines():
        match = MODEL_INFO.match(line)
        if match:
            found.add((match["name"], match["version"]))
    return found


def upload_folder(cloud: LocalCloudProcess, folder: Path, bucket: str, prefix: str) -> None:
    s3 = cloud.client("s3")
    files = sorted(folder.iterdir(), key=lambda p: p.name == "manifest.json")
    for path in files:
        s3.put_object(Bucket=bucket, Key=prefix + path.name, Body=path.read_bytes())


def aws_cli(cloud: LocalCloudProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """The real AWS CLI (v1, in its own pinned venv: tests/conformance/tools.py) against
    the local cloud."""
    command = tools.venv(tools.AWSCLI_REQUIREMENTS, "awscli") / "aws"
    return subprocess.run(
        [str(command), *args], env=cloud.user_environment(), capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def function_environment(cloud: LocalCloudProcess) -> dict[str, str]:
    configuration = cloud.client("lambda").get_function_configuration(
        FunctionName=cloud.outputs["FunctionName"]
    )
    return configuration["Environment"]["Variables"]


def test_own_model_from_the_start_then_updates_in_place_and_a_broken_one_rolls_back(
    start_local_cloud: Any, tmp_path: Path
) -> None:
    mine = train(tmp_path / "mine-7", "mine", "7")
    cloud = start_local_cloud(
        {"FilesPerWorker": "1", "MaxWorkers": "3"}, extra_args=["--model", str(mine)]
    )
    models = cloud.outputs["ModelBucketName"]
    assert cloud.outputs["ModelUri"] == f"s3://{models}/models/mine/7/"
    assert served_models(cloud) == {("mine", "7")}
    assert cloud.outputs["JobQueueUrl"].startswith(f"{cloud.aws_url}/")
    assert cloud.outputs["DeadLetterQueueUrl"].startswith(f"{cloud.aws_url}/")

    upload_folder(cloud, train(tmp_path / "mine-8", "mine", "8"), models, "models/mine/8/")
    deployed = aws_cli(
        cloud, "cloudformation", "deploy", "--template-file", str(REPO_ROOT / "infra" / "stack.yaml"),
        "--stack-name", STACK, "--capabilities", "CAPABILITY_IAM", "--parameter-overrides",
        "MaxWorkers=1", f"ModelUri=s3://{models}/models/mine/8/",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    stack = cloud.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_COMPLETE"
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs["ModelUri"] == f"s3://{models}/models/mine/8/"
    assert function_environment(cloud)["MAX_WORKERS"] == "1"
    wait_for(lambda: served_models(cloud) == {("mine", "8")}, 120, "the endpoint to serve v8")

    keys = [f"burst/{i}.parquet" for i in range(4)]
    body = sample_rows()
    with WorkerWatch(cloud) as watch:
        for key in keys:
            cloud.client("s3").put_object(
                Bucket=cloud.outputs["InputBucketName"], Key=key, Body=body
            )
        reports = wait_reports(cloud, keys, 300)
    assert {r["status"] for r in reports.values()} == {"succeeded"}
    assert {(r["model_name"], str(r["model_version"])) for r in reports.values()} == {("mine", "8")}
    assert watch.samples > 0 and watch.max_running <= 1, watch

    broken = aws_cli(
        cloud, "cloudformation", "deploy", "--template-file", str(REPO_ROOT / "infra" / "stack.yaml"),
        "--stack-name", STACK, "--capabilities", "CAPABILITY_IAM", "--parameter-overrides",
        "MaxWorkers=2", "LambdaCodeKey=lambda/missing.zip",
    )  # fmt: skip
    assert broken.returncode != 0
    stack = cloud.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"][0]
    assert stack["StackStatus"] == "UPDATE_ROLLBACK_COMPLETE"
    assert function_environment(cloud)["MAX_WORKERS"] == "1"
    wait_for(
        lambda: (
            "update failed, UPDATE_ROLLBACK_COMPLETE" in cloud.log_text()
            and "NoSuchKey" in cloud.log_text()
        ),
        30,
        "the cloud to print the rollback and its reason",
    )

    params = write_params(
        tmp_path / "csv.json",
        {"FilesPerWorker": "1", "OutputFormat": "csv", "ModelUri": f"s3://{models}/models/mine/8/"},
    )
    redeployed = subprocess.run(
        [sys.executable, "-m", "localcloud", "deploy", "--port", str(cloud.port), "--params", str(params)],
        cwd=REPO_ROOT, env=cloud.user_environment(), capture_output=True, text=True, timeout=300,
        check=False,
    )  # fmt: skip
    assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr
    assert "stack model-endpoint-local UPDATE_COMPLETE" in redeployed.stdout
    cloud.client("s3").put_object(
        Bucket=cloud.outputs["InputBucketName"], Key="after/deploy.parquet", Body=body
    )
    report = wait_reports(cloud, ["after/deploy.parquet"], 300)["after/deploy.parquet"]
    assert report["status"] == "succeeded" and report["output_key"].endswith(".csv")


def listing(cloud: LocalCloudProcess) -> dict[str, str]:
    """bucket/key -> ETag of every object of every bucket."""
    s3 = cloud.client("s3")
    found = {}
    for bucket in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for item in page.get("Contents", []):
                found[f"{bucket['Name']}/{item['Key']}"] = item["ETag"]
    return found


def test_stop_and_start_keeps_names_objects_and_reports_and_finishes_late_uploads(
    start_local_cloud: Any, tmp_path: Path
) -> None:
    work = tmp_path / "kept"
    first = start_local_cloud(work_dir=work)
    inputs = first.outputs["InputBucketName"]
    body = sample_rows()
    s3 = first.client("s3")
    s3.put_object(Bucket=inputs, Key="early.parquet", Body=body)
    wait_reports(first, ["early.parquet"], 300)
    # The trigger's events wait (no concurrency left), as when a stop comes before the
    # function has run: the upload is in S3, its job nowhere.
    first.client("lambda").put_function_concurrency(
        FunctionName=first.outputs["FunctionName"], ReservedConcurrentExecutions=0
    )
    s3.put_object(Bucket=inputs, Key="late.parquet", Body=body)
    before = listing(first)
    first.interrupt()
    assert first.wait_exit() == 0
    first.assert_nothing_left()
    late_report = f"{first.outputs['OutputBucketName']}/{report_key(first, 'late.parquet')}"
    assert late_report not in before, "late.parquet was done before the stop: nothing to show"
    assert " object(s) in " in first.log_text(), "the stop did not say what it kept"
    # late.parquet's event, and any scheduled run that also found no concurrency left
    dropped = re.search(r"dropped (\d+) queued event\(s\) on shutdown", first.log_text())
    assert dropped and int(dropped.group(1)) >= 1, first.log_tail()

    second = start_local_cloud(work_dir=work)
    names = (
        "InputBucketName",
        "OutputBucketName",
        "ModelBucketName",
        "ClusterName",
        "FunctionName",
    )
    assert {n: second.outputs[n] for n in names} == {n: first.outputs[n] for n in names}
    after = listing(second)
    missing = {k: v for k, v in before.items() if after.get(k) != v}
    assert missing == {}, f"objects lost or changed by the restart: {missing}"
    assert "queued again 1 input(s) with no report: late.parquet" in second.log_text()
    report = wait_reports(second, ["late.parquet"], 300)["late.parquet"]
    assert report["status"] == "succeeded"
    early = get_json(
        second.client("s3"), second.outputs["OutputBucketName"], report_key(second, "early.parquet")
    )
    assert early is not None and early["status"] == "succeeded"


EDITED_HANDLER = """

_unedited_handler = handler


def handler(event, context):
    print("EDITED-HANDLER-RAN")
    return _unedited_handler(event, context)
"""


def copy_of_the_repository(target: Path) -> Path:
    """The code a cloud runs, copied, so the test can edit it."""
    for name in ("service", "lambda", "infra", "localcloud", "scripts"):
        shutil.copytree(
            REPO_ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def test_watch_reloads_an_edited_handler_and_the_endpoint(
    start_local_cloud: Any, tmp_path: Path
) -> None:
    repo = copy_of_the_repository(tmp_path / "repo")
    cloud = start_local_cloud(extra_args=["--watch"], repo_root=repo)
    lambdas = cloud.client("lambda")
    event = json.dumps({"source": "aws.events", "detail-type": "Scheduled Event"}).encode()
    lambdas.invoke(FunctionName=cloud.outputs["FunctionName"], Payload=event)
    endpoint_pids = {seen.pid for seen in cloud.processes("-m service serve")}
    assert endpoint_pids

    # Every invocation of the edited code says so: the schedule's own runs (every minute)
    # may import the new module before this test's invocation does.
    handler = repo / "lambda" / "handler.py"
    handler.write_text(handler.read_text() + EDITED_HANDLER)
    wait_for(lambda: "lambda/ changed: new code" in cloud.log_text(), 60, "the lambda reload")
    answer = lambdas.invoke(
        FunctionName=cloud.outputs["FunctionName"], Payload=event, LogType="Tail"
    )
    assert "EDITED-HANDLER-RAN" in base64.b64decode(answer["LogResult"]).decode()

    web = repo / "service" / "web.py"
    web.write_text(web.read_text() + "\n# edited\n")
    wait_for(
        lambda: "service/ changed: replacing the tasks" in cloud.log_text(),
        60,
        "the service reload",
    )

    def replaced() -> bool:
        now = {seen.pid for seen in cloud.processes("-m service serve")}
        return bool(now) and not now & endpoint_pids and cloud.ping() == 200

    wait_for(replaced, 120, "a new endpoint task answering /ping")
    assert os.path.exists(handler)
