"""scripts/promote.py --dry-run --skip-image against the local cloud (no Docker, no AWS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from localcloud.procs import aws_environment
from tests.support import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
LOCAL_STACK = "model-endpoint-local"
READY_SECONDS = 180

pytestmark = pytest.mark.e2e


def aws_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(aws_environment(endpoint, REGION), NO_COLOR="1")
    return env


def stack_status(cloudformation, name: str) -> str | None:
    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise


def deployed(cloudformation) -> bool:
    try:
        return stack_status(cloudformation, LOCAL_STACK) == "CREATE_COMPLETE"
    except (BotoCoreError, ClientError, ResponseParserError):
        return False  # not listening yet, or busy deploying


@pytest.fixture(scope="module")
def local_cloud(tmp_path_factory):
    """`python -m localcloud up` on a free port, until its stack is deployed."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    state = tmp_path_factory.mktemp("localcloud")
    log = (state / "localcloud.log").open("w")
    options = ["--port", str(port), "--endpoint-port", str(free_port()), "--state-dir", str(state)]
    process = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "up", *options],
        cwd=ROOT,
        env=aws_env(endpoint),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cloudformation = boto3.client(
        "cloudformation", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    try:
        wait_for(
            lambda: process.poll() is not None or deployed(cloudformation),
            READY_SECONDS,
            f"the local cloud to deploy {LOCAL_STACK}",
            interval=1,
            context=lambda: (state / "localcloud.log").read_text()[-3000:],
        )
        assert process.poll() is None, (state / "localcloud.log").read_text()[-3000:]
        wait_for(
            lambda: "ready (Ctrl-C stops everything)" in (state / "localcloud.log").read_text(),
            READY_SECONDS,
            "the local cloud's ready line",
        )
        yield endpoint, cloudformation
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def promote(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/promote.py", "--params", "infra/params/local.json",
         "--dry-run", "--region", REGION, *args],
        cwd=ROOT, env=aws_env(endpoint), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def snapshot(endpoint: str) -> dict[str, object]:
    """Everything a deployment could create or change, as listings."""
    session = boto3.Session(
        region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )

    def client(name: str):
        return session.client(name, endpoint_url=endpoint)

    s3, cloudformation = client("s3"), client("cloudformation")
    objects = {
        f"{bucket['Name']}/{item['Key']}": item["ETag"]
        for bucket in s3.list_buckets()["Buckets"]
        for item in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", [])
    }
    stacks = sorted(
        (s["StackName"], s["StackStatus"]) for s in cloudformation.list_stacks()["StackSummaries"]
    )
    ecr = client("ecr")
    repositories = {
        r["repositoryName"]: ecr.list_images(repositoryName=r["repositoryName"])["imageIds"]
        for r in ecr.describe_repositories()["repositories"]
    }
    functions = sorted(
        (f["FunctionName"], f["CodeSha256"]) for f in client("lambda").list_functions()["Functions"]
    )
    change_sets = cloudformation.list_change_sets(StackName=LOCAL_STACK)["Summaries"]
    return {
        "objects": objects, "stacks": stacks, "repositories": repositories,
        "functions": functions, "change_sets": change_sets,
    }  # fmt: skip


def test_dry_run_of_a_new_stack_changes_nothing(local_cloud):
    endpoint, cloudformation = local_cloud
    before = snapshot(endpoint)
    result = promote(endpoint, "--stack-name", "promote-dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: the AWS endpoint is {endpoint}" in result.stdout
    assert "would push image 123456789012.dkr.ecr.us-east-1.amazonaws.com/model-endpoint:" in (
        result.stdout
    )
    assert "would upload the lambda package to s3://model-endpoint-local-artifacts/lambda/" in (
        result.stdout
    )
    assert "stack promote-dry-run does not exist: a real run creates it" in result.stdout
    assert snapshot(endpoint) == before
    assert stack_status(cloudformation, "promote-dry-run") is None


def test_dry_run_of_the_deployed_stack_shows_the_change_set_and_changes_nothing(local_cloud):
    endpoint, _ = local_cloud
    before = snapshot(endpoint)
    result = promote(endpoint, "--stack-name", LOCAL_STACK, "--skip-image")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "UPDATE change set promote-dry-run-" in result.stdout
    assert "Modify  BatchTriggerFunction" in result.stdout
    assert "dry run: change set deleted, nothing deployed, nothing uploaded" in result.stdout
    assert snapshot(endpoint) == before


def test_a_real_run_against_the_local_cloud_needs_yes(local_cloud):
    endpoint, _ = local_cloud
    before = snapshot(endpoint)
    result = subprocess.run(
        [sys.executable, "scripts/promote.py", "--params", "infra/params/local.json",
         "--skip-image", "--region", REGION, "--stack-name", LOCAL_STACK],
        cwd=ROOT, env=aws_env(endpoint), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "without --yes" in result.stderr
    assert snapshot(endpoint) == before
