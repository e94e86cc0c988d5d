#!/usr/bin/env python3
"""Promote the project to AWS: image to ECR, Lambda package to S3, stack by change set.

    python scripts/promote.py --params infra/params/aws.json [--dry-run]

Steps: check credentials, region and the parameter file; build the image and push it to ECR
tagged with the git commit; upload the Lambda package under its content hash; create a change
set and show it; execute it and follow the stack's events; smoke-test the endpoint (and,
with --smoke-file, the batch transform); print the stack outputs.

--dry-run changes nothing anywhere: it builds, pushes and uploads nothing, prints the image
and package a real run would publish and, for a deployed stack, the change set against it
(created with the template inline, then deleted). A loopback AWS endpoint (the local cloud)
gets a warning, and a real deployment there needs --yes. --skip-image leaves Docker
alone and takes ImageUri from --image-uri, the parameter file or the deployed stack: for
machines without Docker, and for a dry run against the local cloud (AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from infra.package import lambda_zip  # noqa: E402 - the repository root is on the path now
from infra.template import TemplateError  # noqa: E402
from infra.template import load_template as project_load_template  # noqa: E402
from localcloud.waiting import wait_until  # noqa: E402
from service.batch_contract import report_key  # noqa: E402

DEFAULT_TEMPLATE = REPO_ROOT / "infra" / "stack.yaml"
DEFAULT_REPOSITORY = "model-endpoint"
DEFAULT_STACK = "model-endpoint"
IMAGE_TARGET = "runtime"
IMAGE_PLATFORM = "linux/amd64"

IMAGE_PARAMETER = "ImageUri"
CODE_BUCKET_PARAMETER = "LambdaCodeBucket"
CODE_KEY_PARAMETER = "LambdaCodeKey"
OUTPUT_PREFIX_PARAMETER = "OutputPrefix"
SCHEME_PARAMETER = "LoadBalancerScheme"
COMPUTED_PARAMETERS = frozenset({IMAGE_PARAMETER, CODE_KEY_PARAMETER})
ENDPOINT_OUTPUT = "EndpointUrl"
INPUT_BUCKET_OUTPUT = "InputBucketName"
OUTPUT_BUCKET_OUTPUT = "OutputBucketName"
DEFAULT_OUTPUT_PREFIX = "predictions"

CAPABILITIES = ("CAPABILITY_IAM", "CAPABILITY_NAMED_IAM")
TEMPLATE_BODY_LIMIT = 51_200
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
SUCCEEDED = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE"})
FAILED_AFTER_CREATE = frozenset({"ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED"})
LOOPBACK_HOSTS = ("localhost", "::1")


class PromoteError(Exception):
    """A refusal a person can act on: nothing was deployed. Exit code 2."""

    exit_code = 2


class DeployFailed(PromoteError):
    """The deployment or its smoke test failed after it started. Exit code 1."""

    exit_code = 1


# ---------------------------------------------------------------- pure functions


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation template with infra/template.py, the reader the tests and the
    local cloud use."""
    try:
        return project_load_template(path)
    except (OSError, TemplateError) as error:
        raise PromoteError(f"cannot read the template {path}: {error}") from error


def template_parameters(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The template's parameter declarations by name."""
    return {name: dict(spec or {}) for name, spec in (template.get("Parameters") or {}).items()}


def _as_parameter_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return ",".join(str(item) for item in value)
    raise PromoteError(f"parameter {name}: a string, number, boolean or list is expected")


def parse_parameter_file(text: str, source: str = "parameter file") -> dict[str, str]:
    """Read a parameter file: a JSON object of name -> value, or the AWS CLI's list of
    {"ParameterKey", "ParameterValue"}. Lists become comma-separated values."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise PromoteError(f"{source} is not valid JSON: {error}") from error
    if isinstance(document, dict) and isinstance(document.get("Parameters"), dict | list):
        document = document["Parameters"]
    if isinstance(document, dict):
        pairs = list(document.items())
    elif isinstance(document, list) and all(
        isinstance(item, dict) and "ParameterKey" in item for item in document
    ):
        pairs = [(item["ParameterKey"], item.get("ParameterValue", "")) for item in document]
    else:
        raise PromoteError(
            f"{source}: expected a JSON object of parameter names to values, "
            'or a list of {"ParameterKey": ..., "ParameterValue": ...}'
        )
    return {str(name): _as_parameter_value(str(name), value) for name, value in pairs}


def check_parameters(
    declared: Mapping[str, Mapping[str, Any]],
    given: Mapping[str, str],
    computed: Iterable[str] = COMPUTED_PARAMETERS,
) -> list[str]:
    """Every problem of a parameter file against the template, as sentences (empty = fine)."""
    computed = set(computed)
    problems = []
    for name in sorted(set(given) - set(declared)):
        problems.append(f"unknown parameter {name}: the template declares no such parameter")
    for name, spec in declared.items():
        if name == CODE_BUCKET_PARAMETER and not given.get(name):
            problems.append(
                f"missing parameter {name}: the S3 bucket for the Lambda package "
                "(promote creates it when missing)"
            )
        elif name not in given and name not in computed and "Default" not in spec:
            about = spec.get("Description", "").strip()
            problems.append(
                f"missing parameter {name} ({spec.get('Type', 'String')})"
                + (f": {about}" if about else "")
            )
    for name, value in given.items():
        allowed = declared.get(name, {}).get("AllowedValues")
        if allowed and value not in [str(item) for item in allowed]:
            problems.append(f"parameter {name}={value!r} is not one of {allowed}")
    return problems


def image_tag(commit: str, dirty: bool, now: datetime) -> str:
    """The image's tag: the commit, plus a timestamp when the tree had local changes."""
    return f"{commit}-dirty-{now:%Y%m%d%H%M%S}" if dirty else commit


def content_key(prefix: str, data: bytes, suffix: str) -> str:
    """An object key named after its content, so an upload is needed once per version."""
    return f"{prefix}/{hashlib.sha256(data).hexdigest()}{suffix}"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table with columns as wide as their widest cell."""
    cells = [[str(cell) for cell in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def format_changes(changes: Sequence[Mapping[str, Any]]) -> str:
    """A change set's resource changes as a table."""
    rows = []
    for change in changes:
        resource = change.get("ResourceChange", {})
        replacement = resource.get("Replacement", "")
        rows.append(
            (
                resource.get("Action", ""),
                resource.get("LogicalResourceId", ""),
                resource.get("ResourceType", ""),
                "" if replacement in ("", "False") else replacement,
            )
        )
    return format_table(("Action", "Resource", "Type", "Replacement"), rows)


def format_event(event: Mapping[str, Any]) -> str:
    """One stack event as a line of the progress log."""
    stamp = event["Timestamp"]
    when = stamp.strftime("%H:%M:%S") if isinstance(stamp, datetime) else str(stamp)
    reason = event.get("ResourceStatusReason") or ""
    parts = [
        when,
        event.get("ResourceStatus", ""),
        event.get("LogicalResourceId", ""),
        event.get("ResourceType", ""),
        reason,
    ]
    return "  ".join(part for part in parts if part)


def failed_events(events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events that explain a failure: a resource that failed, with AWS's reason."""
    return [
        event
        for event in events
        if event.get("ResourceStatus", "").endswith("_FAILED")
        and event.get("ResourceStatusReason")
        and "cancelled" not in event["ResourceStatusReason"].lower()
    ] or [event for event in events if event.get("ResourceStatus", "").endswith("_FAILED")]


def is_terminal(status: str) -> bool:
    """Whether a stack status is final (CloudFormation does nothing more on its own)."""
    return not status.endswith("_IN_PROGRESS")


def registry_login(token: str, endpoint: str) -> tuple[str, str, str]:
    """(user, password, registry host) from ECR's authorization data."""
    user, _, password = base64.b64decode(token).decode().partition(":")
    return user, password, endpoint.removeprefix("https://").removeprefix("http://")


# ---------------------------------------------------------------- adapters


class Runner:
    """Runs docker and git. Tests replace it to record and check the exact commands."""

    def __init__(self, cwd: Path = REPO_ROOT) -> None:
        self.cwd = cwd

    def run(
        self, cmd: Sequence[str], input: str | None = None, echo: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run cmd; echo=True streams its output (builds and pushes take minutes)."""
        if echo:
            print(f"$ {shlex.join(cmd)}", flush=True)
        result = subprocess.run(
            list(cmd),
            cwd=self.cwd,
            input=input,
            text=True,
            stdout=None if echo else subprocess.PIPE,
            stderr=None if echo else subprocess.PIPE,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()[-5:]
            raise PromoteError(
                f"`{shlex.join(cmd)}` exited with {result.returncode}"
                + (": " + " / ".join(detail) if detail else "")
            )
        return result


@dataclass
class Pacing:
    """How often to poll and for how long; tests make it instantaneous."""

    poll_seconds: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """``localcloud.waiting.wait_until`` at this pacing."""
        return wait_until(
            condition, timeout, what, self.poll_seconds, clock=self.monotonic, sleep=self.sleep
        )


@dataclass
class Aws:
    """The AWS clients promote uses, from one session."""

    session: boto3.Session
    region: str

    def __post_init__(self) -> None:
        self.sts = self.session.client("sts")
        self.ecr = self.session.client("ecr")
        self.s3 = self.session.client("s3")
        self.cloudformation = self.session.client("cloudformation")


def connect(region: str | None) -> Aws:
    """A session that has credentials and a region, or a refusal saying what to set."""
    session = boto3.Session(region_name=region) if region else boto3.Session()
    if not session.region_name:
        raise PromoteError(
            "no AWS region: pass --region, or set AWS_REGION (or a region in your AWS profile)"
        )
    if session.get_credentials() is None:
        raise PromoteError(
            "no AWS credentials: set AWS_PROFILE (after `aws configure` or `aws sso login`) "
            "or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    return Aws(session, session.region_name)


def whoami(aws: Aws) -> dict[str, str]:
    """The caller's identity; a refusal when the credentials do not work."""
    try:
        identity = aws.sts.get_caller_identity()
    except (ClientError, BotoCoreError) as error:
        raise PromoteError(f"the AWS credentials do not work: {error}") from error
    return {"Account": identity["Account"], "Arn": identity["Arn"]}


def git_commit(runner: Runner, allow_dirty: bool) -> tuple[str, bool]:
    """The short commit and whether the tree has changes; refuse changes unless allowed."""
    commit = runner.run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
    changes = runner.run(["git", "status", "--porcelain"]).stdout.splitlines()
    if changes and not allow_dirty:
        shown = "\n  ".join(changes[:10]) + ("\n  ..." if len(changes) > 10 else "")
        raise PromoteError(
            "the work tree has uncommitted changes, so the image would not match commit "
            f"{commit}:\n  {shown}\ncommit them, or pass --allow-dirty to push a "
            f"{commit}-dirty-<time> image"
        )
    return commit, bool(changes)


def ensure_repository(ecr: Any, name: str) -> str:
    """The ECR repository's URI, creating the repository when missing."""
    try:
        return ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        print(f"creating ECR repository {name}")
        created = ecr.create_repository(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}
        )
        return created["repository"]["repositoryUri"]


def image_exists(ecr: Any, repository: str, tag: str) -> bool:
    """Whether ECR already holds repository:tag (a re-run need not build again)."""
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return False
    return bool(found.get("imageDetails"))


def publish_image(
    aws: Aws, runner: Runner, repository: str, tag: str, dirty: bool, platform: str
) -> str:
    """Build, log in to ECR with its authorization token, tag and push; the pushed URI."""
    repository_uri = ensure_repository(aws.ecr, repository)
    image_uri = f"{repository_uri}:{tag}"
    if not dirty and image_exists(aws.ecr, repository, tag):
        print(f"{image_uri} is already in ECR")
        return image_uri
    local = f"{repository}:{tag}"
    runner.run(
        ["docker", "build", "--platform", platform, "--target", IMAGE_TARGET, "--tag", local, "."],
        echo=True,
    )
    data = aws.ecr.get_authorization_token()["authorizationData"][0]
    user, password, registry = registry_login(data["authorizationToken"], data["proxyEndpoint"])
    runner.run(
        ["docker", "login", "--username", user, "--password-stdin", registry], input=password
    )
    runner.run(["docker", "tag", local, image_uri])
    runner.run(["docker", "push", image_uri], echo=True)
    return image_uri


def ensure_bucket(s3: Any, bucket: str, region: str) -> None:
    """Create the artifacts bucket when missing: private, encrypted, in the stack's region."""
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("403", "AccessDenied", "Forbidden"):
            raise PromoteError(
                f"bucket {bucket} exists but this account cannot use it: choose another "
                f"{CODE_BUCKET_PARAMETER}"
            ) from error
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise
    print(f"creating bucket s3://{bucket}")
    where = (
        {}
        if region == "us-east-1"
        else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    )
    s3.create_bucket(Bucket=bucket, **where)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )


def upload_once(s3: Any, bucket: str, key: str, data: bytes, content_type: str) -> bool:
    """Put data at bucket/key unless it is there already (keys are content hashes)."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return False
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
    return True


def publish_lambda(aws: Aws, bucket: str, source: Path) -> str:
    """Upload the Lambda package under its content hash; the key."""
    ensure_bucket(aws.s3, bucket, aws.region)
    data = lambda_zip(source)
    key = content_key("lambda", data, ".zip")
    uploaded = upload_once(aws.s3, bucket, key, data, "application/zip")
    print(f"lambda package s3://{bucket}/{key} ({'uploaded' if uploaded else 'already there'})")
    return key


def template_argument(aws: Aws, text: str, bucket: str) -> dict[str, str]:
    """TemplateBody, or a TemplateURL in the artifacts bucket when the body is too large."""
    data = text.encode()
    if len(data) <= TEMPLATE_BODY_LIMIT:
        return {"TemplateBody": text}
    key = content_key("templates", data, ".yaml")
    upload_once(aws.s3, bucket, key, data, "application/x-yaml")
    return {"TemplateURL": f"https://{bucket}.s3.{aws.region}.amazonaws.com/{key}"}


@dataclass
class Deployer:
    """Creates, shows, executes and follows a change set for one stack."""

    cloudformation: Any
    stack: str
    pacing: Pacing = field(default_factory=Pacing)
    timeout: float = 3600.0

    def status(self) -> str | None:
        """The stack's status, None when there is no stack of that name."""
        try:
            stacks = self.cloudformation.describe_stacks(StackName=self.stack)["Stacks"]
        except ClientError as error:
            if "does not exist" in str(error):
                return None
            raise
        return stacks[0]["StackStatus"] if stacks else None

    def change_set_type(self) -> str:
        """CREATE for a new stack, UPDATE for a deployed one; refuse one that cannot change."""
        status = self.status()
        if status in (None, "REVIEW_IN_PROGRESS"):
            return "CREATE"
        if status in FAILED_AFTER_CREATE:
            raise PromoteError(
                f"stack {self.stack} is {status}: its creation failed, so it cannot be updated. "
                f"Delete it (aws cloudformation delete-stack --stack-name {self.stack}) and run again"
            )
        if not is_terminal(status):
            raise PromoteError(
                f"stack {self.stack} is busy ({status}): wait for it, then run again"
            )
        return "UPDATE"

    def create_change_set(
        self,
        name: str,
        kind: str,
        template: Mapping[str, str],
        parameters: list[dict[str, Any]],
        description: str,
    ) -> str:
        """Create the change set; its name."""
        self.cloudformation.create_change_set(
            StackName=self.stack,
            ChangeSetName=name,
            ChangeSetType=kind,
            Parameters=parameters,
            Capabilities=list(CAPABILITIES),
            Description=description[:1024],
            **template,
        )
        return name

    def wait_change_set(self, name: str) -> list[dict[str, Any]] | None:
        """The change set's changes once computed; None when there is nothing to change."""

        def computed() -> dict[str, Any] | None:
            described = self.cloudformation.describe_change_set(
                StackName=self.stack, ChangeSetName=name
            )
            return described if described["Status"] in ("CREATE_COMPLETE", "FAILED") else None

        try:
            described = self.pacing.wait(computed, 600, f"change set {name}")
        except TimeoutError as error:
            raise PromoteError(f"change set {name}: {error}") from error
        if described["Status"] == "CREATE_COMPLETE":
            return self._all_changes(name, described)
        reason = described.get("StatusReason", "")
        if any(text in reason for text in NO_CHANGES):
            return None
        raise PromoteError(f"change set {name} failed: {reason}")

    def _all_changes(self, name: str, described: Mapping[str, Any]) -> list[dict[str, Any]]:
        changes = list(described.get("Changes", []))
        token = described.get("NextToken")
        while token:
            page = self.cloudformation.describe_change_set(
                StackName=self.stack, ChangeSetName=name, NextToken=token
            )
            changes += page.get("Changes", [])
            token = page.get("NextToken")
        return changes

    def discard(self, name: str, kind: str) -> None:
        """Delete the change set, and the empty stack a CREATE change set leaves behind."""
        self.cloudformation.delete_change_set(StackName=self.stack, ChangeSetName=name)
        if kind == "CREATE" and self.status() == "REVIEW_IN_PROGRESS":
            self.cloudformation.delete_stack(StackName=self.stack)

    def recent_events(self, seen: set[str]) -> list[dict[str, Any]]:
        """Events not seen before, oldest first."""
        fresh = []
        for page in self.cloudformation.get_paginator("describe_stack_events").paginate(
            StackName=self.stack
        ):
            new = [event for event in page["StackEvents"] if event["EventId"] not in seen]
            fresh += new
            if len(new) < len(page["StackEvents"]):
                break
        seen.update(event["EventId"] for event in fresh)
        return fresh[::-1]

    def execute(self, name: str) -> str:
        """Execute the change set, print events as they come, return the final status."""
        seen: set[str] = set()
        self.recent_events(seen)
        self.cloudformation.execute_change_set(StackName=self.stack, ChangeSetName=name)
        events: list[dict[str, Any]] = []

        def finished() -> str | None:
            fresh = self.recent_events(seen)
            events.extend(fresh)
            for event in fresh:
                print(format_event(event), flush=True)
            status = self.status() or "DELETE_COMPLETE"
            return status if is_terminal(status) else None

        try:
            status = self.pacing.wait(finished, self.timeout, f"stack {self.stack}")
        except TimeoutError as error:
            raise DeployFailed(
                f"stack {self.stack} not finished after {self.timeout:.0f} s; "
                "CloudFormation goes on: follow it in the console"
            ) from error
        if status not in SUCCEEDED:
            self._explain_failure(status, events)
        return status

    def _explain_failure(self, status: str, events: list[dict[str, Any]]) -> None:
        failed = failed_events(events)
        print("\nfailed resources:", file=sys.stderr)
        print(
            format_table(
                ("Resource", "Type", "Status", "Reason"),
                [
                    (
                        e.get("LogicalResourceId"),
                        e.get("ResourceType"),
                        e.get("ResourceStatus"),
                        e.get("ResourceStatusReason"),
                    )
                    for e in failed
                ],
            ),
            file=sys.stderr,
        )
        advice = (
            f"; delete it (aws cloudformation delete-stack --stack-name {self.stack}) before "
            "the next run"
            if status in FAILED_AFTER_CREATE
            else ""
        )
        raise DeployFailed(f"stack {self.stack} ended in {status}{advice}")

    def outputs_and_parameters(self) -> tuple[dict[str, str], dict[str, str]]:
        """The stack's outputs and its parameters' current values."""
        stack = self.cloudformation.describe_stacks(StackName=self.stack)["Stacks"][0]
        outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in stack.get("Outputs") or []}
        params = {
            p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters") or []
        }
        return outputs, params


def ping(url: str, timeout: float, pacing: Pacing) -> None:
    """GET url/ping until it answers 200 (a new task may need a minute), or fail."""
    target = url.rstrip("/") + "/ping"
    last = [""]

    def answered() -> bool:
        try:
            with urllib.request.urlopen(target, timeout=10) as answer:  # noqa: S310 - stack output  # nosec B310
                print(f"smoke test: GET {target} -> {answer.status}")
                return True
        except (urllib.error.URLError, OSError) as error:
            last[0] = str(error)
        return False

    try:
        pacing.wait(answered, timeout, f"GET {target}")
    except TimeoutError as error:
        raise DeployFailed(
            f"smoke test: GET {target} did not answer 200 within {timeout:.0f} s ({last[0]})"
        ) from error


def smoke_file(
    s3: Any,
    path: Path,
    buckets: tuple[str, str],
    output_prefix: str,
    timeout: float,
    pacing: Pacing,
) -> dict[str, Any]:
    """Upload path to the input bucket and wait for the worker's report on it."""
    input_bucket, output_bucket = buckets
    key = f"smoke/{pacing.now():%Y%m%dT%H%M%S}-{path.name}"
    s3.put_object(Bucket=input_bucket, Key=key, Body=path.read_bytes())
    print(f"smoke test: uploaded s3://{input_bucket}/{key}; waiting for its report")
    where = report_key(output_prefix, key)

    def written() -> dict[str, Any] | None:
        try:
            return json.loads(s3.get_object(Bucket=output_bucket, Key=where)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    try:
        report = pacing.wait(written, timeout, f"the report {where}")
    except TimeoutError as error:
        raise DeployFailed(
            f"smoke test: no report at s3://{output_bucket}/{where} within {timeout:.0f} s; "
            "see `python scripts/jobs.py` and the worker's logs"
        ) from error
    if report.get("status") != "succeeded":
        raise DeployFailed(
            f"smoke test: the batch transform failed: {report.get('message') or report}"
        )
    print(
        f"smoke test: {report.get('rows')} rows in {report.get('seconds')} s -> "
        f"s3://{report.get('output_bucket')}/{report.get('output_key')}"
    )
    return report


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="promote.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 deployed (or dry run shown), 1 deployment or smoke test failed, "
        "2 refused before deploying.",
    )
    parser.add_argument("--params", required=True, type=Path, help="parameter file (JSON)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build, push and upload nothing: show what a run would do and the change set",
    )
    parser.add_argument(
        "--yes", action="store_true", help="deploy even when the AWS endpoint is this machine"
    )
    parser.add_argument(
        "--allow-dirty", action="store_true", help="push an image of uncommitted changes"
    )
    parser.add_argument("--stack-name", help=f"default: {DEFAULT_STACK}[-EnvironmentName]")
    parser.add_argument("--region", help="default: the AWS profile's or AWS_REGION")
    parser.add_argument(
        "--smoke-file", type=Path, help="a data file to run through the batch transform"
    )
    parser.add_argument("--smoke-timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--skip-smoke", action="store_true", help="no /ping, no smoke file")
    parser.add_argument("--timeout", type=float, default=3600.0, help="stack deployment seconds")
    parser.add_argument(
        "--skip-image",
        action="store_true",
        help="no Docker: ImageUri from --image-uri, the parameter file or the deployed stack",
    )
    parser.add_argument("--image-uri", help="with --skip-image: the image to deploy")
    parser.add_argument("--repository", default=DEFAULT_REPOSITORY, help="ECR repository name")
    parser.add_argument("--platform", default=IMAGE_PLATFORM, help="docker build --platform")
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--lambda-source", type=Path, default=REPO_ROOT / "lambda")
    return parser.parse_args(argv)


def stack_name(args: argparse.Namespace, given: Mapping[str, str]) -> str:
    """--stack-name, or model-endpoint[-EnvironmentName]."""
    if args.stack_name:
        return args.stack_name
    environment = given.get("EnvironmentName", "")
    if environment and environment != DEFAULT_STACK:
        return f"{DEFAULT_STACK}-{environment}"
    return DEFAULT_STACK


def read_inputs(args: argparse.Namespace) -> tuple[str, dict[str, dict[str, Any]], dict[str, str]]:
    """Template text, its parameter declarations, and the checked parameter file."""
    for path, what in ((args.params, "parameter file"), (args.template, "template")):
        if not path.is_file():
            raise PromoteError(f"{what} {path} not found")
    text = args.template.read_text()
    declared = template_parameters(load_template(args.template))
    given = parse_parameter_file(args.params.read_text(), str(args.params))
    problems = check_parameters(declared, given)
    if problems:
        raise PromoteError(
            f"{args.params} does not fit {args.template}:\n  " + "\n  ".join(problems)
        )
    return text, declared, given


def choose_image(
    args: argparse.Namespace, aws: Aws, runner: Runner, given: Mapping[str, str], pacing: Pacing
) -> str | None:
    """The ImageUri to deploy; None means keep the deployed stack's."""
    if args.skip_image:
        return args.image_uri or given.get(IMAGE_PARAMETER) or None
    commit, dirty = git_commit(runner, args.allow_dirty)
    tag = image_tag(commit, dirty, pacing.now())
    return publish_image(aws, runner, args.repository, tag, dirty, args.platform)


def stack_parameters(
    given: Mapping[str, str], image: str | None, code_key: str
) -> list[dict[str, Any]]:
    """The change set's parameters: the file's values with the computed ones in place."""
    values = {**given, CODE_KEY_PARAMETER: code_key}
    values.pop(IMAGE_PARAMETER, None)
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in sorted(values.items())]
    if image:
        parameters.append({"ParameterKey": IMAGE_PARAMETER, "ParameterValue": image})
    else:
        parameters.append({"ParameterKey": IMAGE_PARAMETER, "UsePreviousValue": True})
    return parameters


def smoke_test(args: argparse.Namespace, aws: Aws, deployer: Deployer) -> dict[str, str]:
    """Ping the endpoint and run the smoke file, when the stack offers them; the outputs."""
    outputs, current = deployer.outputs_and_parameters()
    if args.skip_smoke:
        return outputs
    if current.get(SCHEME_PARAMETER) == "internal":
        print("smoke test: the load balancer is internal (not reachable from here); skipping /ping")
    elif outputs.get(ENDPOINT_OUTPUT):
        ping(outputs[ENDPOINT_OUTPUT], args.smoke_timeout, deployer.pacing)
    else:
        print("smoke test: the stack has no EndpointUrl; skipping /ping")
    if args.smoke_file:
        buckets = (outputs.get(INPUT_BUCKET_OUTPUT, ""), outputs.get(OUTPUT_BUCKET_OUTPUT, ""))
        if not all(buckets):
            raise DeployFailed(
                "smoke test: the stack has no InputBucketName/OutputBucketName outputs"
            )
        prefix = current.get(OUTPUT_PREFIX_PARAMETER) or DEFAULT_OUTPUT_PREFIX
        smoke_file(aws.s3, args.smoke_file, buckets, prefix, args.smoke_timeout, deployer.pacing)
    return outputs


def loopback_endpoint(aws: Aws) -> str | None:
    """The AWS endpoint when it is this machine (the local cloud), else None."""
    url = aws.cloudformation.meta.endpoint_url
    host = urlsplit(url).hostname or ""
    if host in LOOPBACK_HOSTS:
        return url
    try:
        return url if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


def check_target(args: argparse.Namespace, aws: Aws) -> None:
    """Warn when "AWS" is this machine; a real deployment there needs --yes."""
    local = loopback_endpoint(aws)
    if local is None:
        return
    print(f"warning: the AWS endpoint is {local}, this machine (the local cloud?), not AWS")
    if not args.dry_run and not args.yes:
        raise PromoteError(
            f"refusing to deploy to {local} without --yes (unset AWS_ENDPOINT_URL to reach AWS)"
        )


def planned_image(args: argparse.Namespace, aws: Aws, runner: Runner, pacing: Pacing) -> str:
    """The image a real run would push, built and pushed by nobody (dry run)."""
    if args.skip_image:
        return args.image_uri or ""
    commit, dirty = git_commit(runner, allow_dirty=True)
    account = whoami(aws)["Account"]
    tag = image_tag(commit, dirty, pacing.now())
    return f"{account}.dkr.ecr.{aws.region}.amazonaws.com/{args.repository}:{tag}"


def dry_run(
    args: argparse.Namespace, aws: Aws, runner: Runner, deployer: Deployer, inputs: tuple
) -> None:
    """Show what a real run would do and the change set against the current stack; build,
    push and upload nothing."""
    text, _, given = inputs
    kind = deployer.change_set_type()
    image = planned_image(args, aws, runner, deployer.pacing) or given.get(IMAGE_PARAMETER)
    code = lambda_zip(args.lambda_source)
    code_key = content_key("lambda", code, ".zip")
    bucket = given[CODE_BUCKET_PARAMETER]
    print(
        f"would push image {image or '(the deployed one)'}"
        + ("" if not args.skip_image else " (--skip-image: not built)")
    )
    print(f"would upload the lambda package to s3://{bucket}/{code_key} ({len(code)} bytes)")
    if kind == "CREATE":
        print(f"stack {deployer.stack} does not exist: a real run creates it with")
        parameters = {**given, CODE_KEY_PARAMETER: code_key, IMAGE_PARAMETER: image or ""}
        print(format_table(("Parameter", "Value"), sorted(parameters.items())))
        print("dry run: nothing deployed, nothing uploaded")
        return
    if len(text.encode()) > TEMPLATE_BODY_LIMIT:
        print(
            "the template is over the TemplateBody limit: a real run uploads it; no change set shown"
        )
        return
    name = f"promote-dry-run-{deployer.pacing.now():%Y%m%d%H%M%S}"
    deployer.create_change_set(
        name, kind, {"TemplateBody": text}, stack_parameters(given, image, code_key), "dry run"
    )
    print(f"{kind} change set {name} for stack {deployer.stack}")
    try:
        changes = deployer.wait_change_set(name)
        print(format_changes(changes) if changes else "no changes")
    finally:
        deployer.discard(name, kind)
    print("dry run: change set deleted, nothing deployed, nothing uploaded")


def promote(args: argparse.Namespace, runner: Runner, pacing: Pacing) -> None:
    """The whole promotion; raises PromoteError / DeployFailed."""
    inputs = read_inputs(args)
    text, _, given = inputs
    if args.smoke_file and not args.smoke_file.is_file():
        raise PromoteError(f"smoke file {args.smoke_file} not found")
    aws = connect(args.region)
    check_target(args, aws)
    identity = whoami(aws)
    print(f"AWS account {identity['Account']} as {identity['Arn']}, region {aws.region}")
    deployer = Deployer(aws.cloudformation, stack_name(args, given), pacing, args.timeout)
    if args.dry_run:
        dry_run(args, aws, runner, deployer, inputs)
        return
    kind = deployer.change_set_type()
    image = choose_image(args, aws, runner, given, pacing)
    if image is None and kind == "CREATE":
        raise PromoteError(
            f"--skip-image on a new stack needs an image: pass --image-uri or set {IMAGE_PARAMETER} "
            f"in {args.params}"
        )
    code_key = publish_lambda(aws, given[CODE_BUCKET_PARAMETER], args.lambda_source)
    template = template_argument(aws, text, given[CODE_BUCKET_PARAMETER])
    name = f"promote-{pacing.now():%Y%m%d%H%M%S}"
    deployer.create_change_set(
        name,
        kind,
        template,
        stack_parameters(given, image, code_key),
        f"scripts/promote.py: image {image or '(unchanged)'}, lambda {code_key}",
    )
    print(f"{kind} change set {name} for stack {deployer.stack}")
    changes = deployer.wait_change_set(name)
    print(format_changes(changes) if changes else "no changes")
    if changes is None:
        deployer.discard(name, kind)
        print("nothing to deploy")
    else:
        status = deployer.execute(name)
        print(f"stack {deployer.stack}: {status}")
    outputs = smoke_test(args, aws, deployer)
    print(format_table(("Output", "Value"), sorted(outputs.items())) if outputs else "(no outputs)")


def main(
    argv: Sequence[str] | None = None, runner: Runner | None = None, pacing: Pacing | None = None
) -> int:
    args = parse_args(argv)
    try:
        promote(args, runner or Runner(), pacing or Pacing())
    except PromoteError as error:
        print(f"promote: {error}", file=sys.stderr)
        return error.exit_code
    except (ClientError, BotoCoreError) as error:
        print(f"promote: AWS refused: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
