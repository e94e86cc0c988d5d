"""``python -m localcloud deploy [--params FILE]``: re-apply the template to the running cloud.

A stack update, as ``aws cloudformation deploy`` makes one: the template from disk, the
file's parameter values, every other parameter at its previous value. The local cloud's own
values (network ids given as ``auto``, the endpoint's local URL) keep their previous value.
The Lambda package is rebuilt and, when it changed, the function's code updated.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.package import lambda_zip
from infra.template import load_parameter_file, load_template
from localcloud.deploy import (
    AUTO,
    CODE_BUCKET_PARAMETER,
    CODE_KEY_PARAMETER,
    ENDPOINT_URL_PARAMETER,
    DeployError,
)
from localcloud.settings import LocalCloudSettings
from localcloud.waiting import wait_until

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
NO_CHANGES = "No updates are to be performed"
KEPT_LOCAL = {ENDPOINT_URL_PARAMETER}
Say = Callable[[str], None]


def update_parameters(
    declared: Mapping[str, Any], current: Mapping[str, str], given: Mapping[str, str] | None
) -> list[dict[str, Any]]:
    """The file's values; every other parameter the stack has keeps its previous value."""
    parameters: list[dict[str, Any]] = []
    for name in declared:
        value = (given or {}).get(name)
        if value is not None and value != AUTO and name not in KEPT_LOCAL:
            parameters.append({"ParameterKey": name, "ParameterValue": value})
        elif name in current:
            parameters.append({"ParameterKey": name, "UsePreviousValue": True})
    return parameters


def _describe(cfn: Any, name: str) -> dict[str, Any]:
    try:
        return cfn.describe_stacks(StackName=name)["Stacks"][0]
    except (ClientError, BotoCoreError) as exc:
        raise DeployError(
            f"no stack {name} at the local cloud ({exc}); is `python -m localcloud up` running "
            "on this port?"
        ) from exc


def _settled(cfn: Any, name: str) -> dict[str, Any] | None:
    stack = _describe(cfn, name)
    return None if str(stack["StackStatus"]).endswith("_IN_PROGRESS") else stack


def update_code(
    session: Any, outputs: Mapping[str, str], current: Mapping[str, str], source: Path
) -> bool:
    """Upload the Lambda package and give the function the new code; False if unchanged."""
    code = lambda_zip(source)
    bucket, key = current.get(CODE_BUCKET_PARAMETER), current.get(CODE_KEY_PARAMETER)
    if bucket and key:
        session.client("s3").put_object(Bucket=bucket, Key=key, Body=code)
    function = outputs.get("FunctionName")
    if not function:
        return False
    client = session.client("lambda")
    digest = base64.b64encode(hashlib.sha256(code).digest()).decode("ascii")
    if client.get_function(FunctionName=function)["Configuration"]["CodeSha256"] == digest:
        return False
    client.update_function_code(FunctionName=function, ZipFile=code)
    return True


def redeploy(settings: LocalCloudSettings, session: Any, params_file: Path | None, say: Say) -> str:
    """Update the stack and wait; its final status (``UPDATE_COMPLETE``, a rollback, or
    ``UNCHANGED``)."""
    cfn = session.client("cloudformation")
    name = settings.stack_name
    stack = _describe(cfn, name)
    current = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    try:
        declared = load_template(settings.template).get("Parameters", {})
        given = load_parameter_file(params_file) if params_file else None
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the template or parameters: {exc}") from exc
    if update_code(session, outputs, current, settings.lambda_source):
        say(f"new Lambda code for {outputs.get('FunctionName')}")
    try:
        cfn.update_stack(
            StackName=name,
            TemplateBody=settings.template.read_text(encoding="utf-8"),
            Parameters=update_parameters(declared, current, given),
            Capabilities=CAPABILITIES,
        )
    except ClientError as exc:
        if NO_CHANGES in str(exc):
            say(f"stack {name}: no changes")
            return "UNCHANGED"
        raise DeployError(f"CloudFormation refused the update: {exc}") from exc
    say(f"updating stack {name}")
    final = wait_until(lambda: _settled(cfn, name), settings.deploy_timeout, f"stack {name}")
    status = str(final["StackStatus"])
    if status != "UPDATE_COMPLETE":
        say(f"stack {name} {status}: {rollback_reason(cfn, name)}")
    else:
        for output in sorted(final.get("Outputs", []), key=lambda o: o["OutputKey"]):
            say(f"{output['OutputKey']:<24} {output['OutputValue']}")
        say(f"stack {name} {status}")
    return status


def rollback_reason(cfn: Any, name: str) -> str:
    """The reason of the latest failed update, from the stack's events."""
    for event in cfn.describe_stack_events(StackName=name)["StackEvents"]:
        status = str(event.get("ResourceStatus", ""))
        if status.endswith("FAILED") or status == "UPDATE_ROLLBACK_IN_PROGRESS":
            return f"{event.get('LogicalResourceId')}: {event.get('ResourceStatusReason')}"
    return "no event names a reason"
