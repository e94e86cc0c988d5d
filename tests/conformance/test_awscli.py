"""The AWS CLI v1 (the awscli package, in its own venv) against the local cloud, set up
with the README's environment line: s3 cp, sqs, ecs, logs, cloudformation.

CLI v1 honours AWS_ENDPOINT_URL for every service we use but sqs, whose own endpoint
handler wins (EMULATORS.md, "Measured in round 2"): sqs gets --endpoint-url, as the
README and `up`'s banner say. It reads the region from AWS_DEFAULT_REGION only.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conformance import tools
from tests.e2e.cloud_process import STACK_NAME, LocalCloudProcess


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloudProcess]:
    process = LocalCloudProcess(tmp_path_factory.mktemp("localcloud"))
    try:
        process.start()
        process.wait_ready()
        yield process
    finally:
        if not process.exited():
            process.terminate()
            process.wait_exit()
        process.kill_everything()


@pytest.fixture(scope="module")
def aws(cloud: LocalCloudProcess) -> Any:
    """`aws ...` with only the README's variables (no AWS_REGION, no config files)."""
    binary = tools.venv(tools.AWSCLI_REQUIREMENTS, "awscli") / "aws"
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=cloud.aws_url,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="local",
        AWS_SECRET_ACCESS_KEY="local",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )

    def run(*args: str) -> Any:
        done = subprocess.run(
            [str(binary), *args, "--output", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"aws {' '.join(args)}: {done.stderr[-2000:]}"
        if args[0] == "s3":  # the high-level s3 commands print progress, not JSON
            return done.stdout
        return json.loads(done.stdout) if done.stdout.strip() else None

    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
    assert (version.stdout + version.stderr).startswith("aws-cli/1.")
    return run


def test_cloudformation_s3_sqs_ecs_logs(aws: Any, cloud: LocalCloudProcess, tmp_path: Path) -> None:
    stack = aws("cloudformation", "describe-stacks", "--stack-name", STACK_NAME)["Stacks"][0]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    assert outputs == cloud.outputs

    notes = tmp_path / "notes.txt"
    notes.write_text("not a batch input: the trigger writes a skipped report\n")
    copied = aws("s3", "cp", str(notes), f"s3://{outputs['InputBucketName']}/conformance/notes.txt")
    assert "upload: " in copied, copied
    listed = aws(
        "s3api",
        "list-objects-v2",
        "--bucket",
        outputs["InputBucketName"],
        "--prefix",
        "conformance/",
    )
    assert [item["Key"] for item in listed["Contents"]] == ["conformance/notes.txt"]

    queue = aws(
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        outputs["JobQueueUrl"],
        "--attribute-names",
        "QueueArn",
        "--endpoint-url",
        cloud.aws_url,
    )
    assert queue["Attributes"]["QueueArn"].endswith(outputs["JobQueueUrl"].rsplit("/", 1)[1])

    clusters = aws("ecs", "describe-clusters", "--clusters", outputs["ClusterName"])["clusters"]
    assert [c["clusterName"] for c in clusters] == [outputs["ClusterName"]]
    aws("ecs", "list-tasks", "--cluster", outputs["ClusterName"])

    groups = aws("logs", "describe-log-groups")["logGroups"]
    assert groups, "the stack's log groups are listed"
