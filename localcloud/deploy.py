"""Deploy the project's template into the local cloud, then apply what moto's CloudFormation drops.

The template and parameter file are the ones used on AWS; only values the local cloud must
supply are filled in: network ids given as ``auto`` (from moto's default VPC) and the Lambda
code package (uploaded to ``LambdaCodeBucket``/``LambdaCodeKey``). Properties moto ignores
(S3 notifications, versioning, public access blocks) are re-applied by resolving the same
template with ``infra.template``, so nothing is described twice. Bucket policies stay
dropped: moto enforces them, and the local endpoint is plain HTTP, so a policy denying
``aws:SecureTransport = false`` (ours does) would refuse every local request.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from moto.cloudformation.models import cloudformation_backends

from infra.package import lambda_zip
from infra.template import (
    Context,
    evaluate_conditions,
    load_parameter_file,
    load_template,
    make_context,
    parameter_values,
    pseudo_parameters,
    resolve,
    s3_bucket_calls,
)
from localcloud.bundles import BundleError, bundle_prefix, upload_bundle
from localcloud.console import Console
from localcloud.procs import Child, base_environment
from localcloud.settings import LocalCloudSettings
from localcloud.stack_updates import stable_stack_id
from localcloud.state import StateStore
from localcloud.waiting import wait_until

AUTO = "auto"
CODE_BUCKET_PARAMETER = "LambdaCodeBucket"
CODE_KEY_PARAMETER = "LambdaCodeKey"
ENDPOINT_URL_PARAMETER = "EndpointUrlWhenNoLoadBalancer"
EXAMPLE_MODEL_PREFIX = "models/example/1/"
MODEL_BUCKET_RESOURCE = "ModelBucket"
_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
_FAILED_SUFFIXES = ("FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_IN_PROGRESS")


class DeployError(RuntimeError):
    """The stack could not be deployed; the message says why and what to check."""


@dataclass(frozen=True)
class DeployedStack:
    """A stack as the rest of the local cloud needs it."""

    name: str
    stack_id: str
    parameters: dict[str, str]
    outputs: dict[str, str]
    # Parameters the local cloud fills in at every start ("auto" network ids).
    auto: frozenset[str] = frozenset()

    def kept_parameters(self) -> dict[str, str]:
        """The parameters to start with next time: filled-in values as ``auto`` again, the
        endpoint's URL left to the next start's port."""
        return {
            name: AUTO if name in self.auto else value
            for name, value in self.parameters.items()
            if name != ENDPOINT_URL_PARAMETER
        }


def default_network(ec2: Any) -> dict[str, str]:
    """The default VPC's id, subnets and default security group, as parameter values."""
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise DeployError("the local cloud has no default VPC")
    vpc = vpcs[0]["VpcId"]
    by_vpc = [{"Name": "vpc-id", "Values": [vpc]}]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets(Filters=by_vpc)["Subnets"]]
    groups = ec2.describe_security_groups(
        Filters=[*by_vpc, {"Name": "group-name", "Values": ["default"]}]
    )["SecurityGroups"]
    return {
        "AWS::EC2::VPC::Id": vpc,
        "List<AWS::EC2::Subnet::Id>": ",".join(sorted(subnets)),
        "AWS::EC2::Subnet::Id": sorted(subnets)[0],
        "List<AWS::EC2::SecurityGroup::Id>": ",".join(g["GroupId"] for g in groups),
        "AWS::EC2::SecurityGroup::Id": groups[0]["GroupId"],
    }


def fill_auto_parameters(
    template: Mapping[str, Any], given: Mapping[str, str], network: Mapping[str, str]
) -> dict[str, str]:
    """Replace ``auto`` in network-typed parameters with the default VPC's ids."""
    declared = template.get("Parameters", {})
    filled = dict(given)
    for name, value in given.items():
        if value != AUTO:
            continue
        kind = str(declared.get(name, {}).get("Type", "String"))
        if kind not in network:
            raise DeployError(f"parameter {name} is 'auto' but its type {kind} is not a network id")
        filled[name] = network[kind]
    return filled


def upload_lambda_code(s3: Any, bucket: str, key: str, code: bytes) -> None:
    """Put the code package where the template's function expects it."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=code)


def deploy_stack(
    cfn: Any, name: str, template_body: str, parameters: Mapping[str, str], timeout: float
) -> DeployedStack:
    """Create the stack and wait for CREATE_COMPLETE; a failure lists the failed resources."""
    try:
        cfn.create_stack(
            StackName=name,
            TemplateBody=template_body,
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
        )
    except (ClientError, BotoCoreError, ResponseParserError) as exc:
        raise DeployError(f"CloudFormation refused stack {name}: {exc}") from exc
    try:
        stack = wait_until(lambda: _settled(cfn, name), timeout, f"stack {name} to be created")
    except TimeoutError as exc:
        raise DeployError(str(exc)) from exc
    status = stack["StackStatus"]
    if status not in _DONE:
        raise DeployError(f"stack {name} is {status}: {failure_reasons(cfn, name)}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return DeployedStack(name, stack["StackId"], dict(parameters), outputs)


def _settled(cfn: Any, name: str) -> dict[str, Any] | None:
    """The stack once it is no longer in progress."""
    stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
    status = str(stack["StackStatus"])
    done = status in _DONE or status.endswith(_FAILED_SUFFIXES)
    return stack if done and not status.endswith("_IN_PROGRESS") else None


def failure_reasons(cfn: Any, name: str) -> str:
    events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    failed = [
        f"{e.get('LogicalResourceId')}: {e.get('ResourceStatusReason')}"
        for e in events
        if str(e.get("ResourceStatus", "")).endswith("FAILED")
    ]
    return "; ".join(failed) or "no resource reported a reason"


class _MotoAttributes(Mapping[str, Any]):
    """``LogicalId.Attribute`` -> value, read from moto's own model of the stack."""

    def __init__(self, resource_map: Any) -> None:
        self._resources = resource_map

    def __getitem__(self, key: str) -> Any:
        logical_id, attribute = key.split(".", 1)
        resource = self._resources[logical_id]
        if resource is None:
            raise KeyError(key)
        return resource.get_cfn_attribute(attribute)

    def __contains__(self, key: object) -> bool:
        try:
            self[str(key)]
        except Exception:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def stack_context(
    settings: LocalCloudSettings, cfn: Any, template: Mapping[str, Any], stack: DeployedStack
) -> Context:
    """Resolve the template as the deployed stack: its parameters, ids and attributes."""
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=stack.name)["StackResources"]
        if r.get("LogicalResourceId") and r.get("PhysicalResourceId")
    }
    pseudo = pseudo_parameters(stack.name, settings.account_id, settings.region, stack.stack_id)
    refs = {**parameter_values(template, stack.parameters), **pseudo, **physical}
    backend = cloudformation_backends[settings.account_id][settings.region]
    resource_map = backend.describe_stacks(stack.stack_id)[0].resource_map
    context = Context(refs=refs, attributes=_MotoAttributes(resource_map))
    evaluate_conditions(template, context)
    return context


def dropped_calls(
    template: Mapping[str, Any], context: Context
) -> list[tuple[str, dict[str, Any]]]:
    """The S3 calls that apply what moto's CloudFormation ignored, for every bucket."""
    calls: list[tuple[str, dict[str, Any]]] = []
    for logical_id, resource in template["Resources"].items():
        condition = resource.get("Condition")
        if condition and not context.conditions.get(condition, False):
            continue
        kind = resource.get("Type")
        if kind == "AWS::S3::Bucket":
            bucket = context.refs[logical_id]
            properties = resolve(resource.get("Properties", {}), context)
            calls += [
                (method, {"Bucket": bucket, **args}) for method, args in s3_bucket_calls(properties)
            ]
    return calls


def event_invoke_configs(template: Mapping[str, Any], context: Context) -> list[dict[str, Any]]:
    """``put_function_event_invoke_config`` arguments for each ``AWS::Lambda::EventInvokeConfig``
    (retries, maximum event age, on-failure destination): moto's CloudFormation skips the
    type, and the resource's properties are the API's own names."""
    configs = []
    for resource in template["Resources"].values():
        condition = resource.get("Condition")
        if condition and not context.conditions.get(condition, False):
            continue
        if resource.get("Type") == "AWS::Lambda::EventInvokeConfig":
            configs.append(resolve(resource.get("Properties", {}), context))
    return configs


def apply_event_invoke_configs(
    lambda_client: Any, template: Mapping[str, Any], context: Context, console: Console
) -> None:
    for config in event_invoke_configs(template, context):
        lambda_client.put_function_event_invoke_config(**config)
        console.line("localcloud", f"applied the event invoke config of {config['FunctionName']}")


def apply_dropped(s3: Any, calls: list[tuple[str, dict[str, Any]]], console: Console) -> None:
    for method, args in calls:
        getattr(s3, method)(**args)
        console.line("localcloud", f"applied {method} to {args['Bucket']}")


def model_prefix(stack: DeployedStack) -> tuple[str, str] | None:
    """(bucket, prefix) of the model the stack serves, when it is an S3 URI."""
    uri = stack.outputs.get("ModelUri") or stack.parameters.get("ModelUri") or ""
    if not uri and "ModelBucketName" in stack.outputs:
        uri = f"s3://{stack.outputs['ModelBucketName']}/{EXAMPLE_MODEL_PREFIX}"
    if not uri.startswith("s3://"):
        return None
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    return bucket, prefix


class ExampleBundle:
    """The example model's bundle, trained once into the state folder, in the background.

    Training takes seconds (scikit-learn imports, fitting); starting it before the stack is
    deployed hides most of that, and the cached folder makes every later ``up`` instant.
    """

    MANIFEST = "manifest.json"

    def __init__(self, settings: LocalCloudSettings, console: Console) -> None:
        self.settings = settings
        self.folder = settings.state_dir / "example-model" / "1"
        self._console = console
        self._staging = self.folder.with_name(".training")
        self._child: Child | None = None

    def start(self) -> None:
        """Start training unless a complete bundle is already cached."""
        if (self.folder / self.MANIFEST).exists() or self._child is not None:
            return
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.parent.mkdir(parents=True, exist_ok=True)
        script = self.settings.repo_root / "scripts" / "train_example.py"
        self._child = Child(
            [sys.executable, str(script), "--out", str(self._staging), "--version", "1"],
            name="train",
            console=self._console,
            env={**base_environment(), **self.settings.extra_env},
            cwd=self.settings.repo_root,
        )

    def wait(self) -> Path:
        """The bundle folder, once training has finished."""
        self.start()
        if self._child is not None:
            code = self._child.wait()
            self._child = None
            if code != 0 or not (self._staging / self.MANIFEST).exists():
                raise DeployError(f"training the example model failed (exit {code})")
            shutil.rmtree(self.folder, ignore_errors=True)
            self._staging.replace(self.folder)
        return self.folder

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop(5)
            self._child = None

    def upload(self, s3: Any, bucket: str, prefix: str) -> None:
        """Copy the bundle to S3, manifest last so no reader sees half a bundle."""
        folder = self.wait()
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != self.MANIFEST)
        for path in [*files, folder / self.MANIFEST]:
            s3.upload_file(str(path), bucket, f"{prefix}{path.name}")


def ensure_example_model(
    s3: Any, stack: DeployedStack, example: ExampleBundle, console: Console
) -> None:
    """Upload the example bundle when the stack's model prefix is still empty."""
    location = model_prefix(stack)
    if location is None:
        return
    bucket, prefix = location
    if s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0):
        return
    uri = f"s3://{bucket}/{prefix}"
    if not prefix.endswith(EXAMPLE_MODEL_PREFIX):
        console.line("localcloud", f"warning: no model at {uri}; upload a bundle there")
        return
    example.upload(s3, bucket, prefix)
    console.line("localcloud", f"uploaded the example model to {uri}")


def stack_parameters(
    settings: LocalCloudSettings,
    template: Mapping[str, Any],
    store: StateStore,
    console: Console,
) -> dict[str, str]:
    """The parameter file's values, or the ones the stack last had when its state was kept
    (an explicit ``--params`` wins); ``--model`` and the endpoint port are applied later."""
    declared = template.get("Parameters", {})
    saved = None if settings.params_explicit else store.stack_parameters(settings.stack_name)
    if saved is not None:
        console.line("localcloud", f"parameters of {settings.stack_name} as last deployed")
        return {k: v for k, v in saved.items() if k in declared}
    try:
        return load_parameter_file(settings.params) if settings.params.exists() else {}
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the parameters: {exc}") from exc


def planned_model_bucket(
    settings: LocalCloudSettings, template: Mapping[str, Any], given: Mapping[str, str]
) -> str:
    """The model bucket's name before the stack exists (its stack id is stable)."""
    stack_id = stable_stack_id(settings.stack_name, settings.region, settings.account_id)
    pseudo = pseudo_parameters(settings.stack_name, settings.account_id, settings.region, stack_id)
    context = make_context(template, given, pseudo)
    properties = template["Resources"][MODEL_BUCKET_RESOURCE]["Properties"]
    return str(resolve(properties["BucketName"], context))


def deploy(
    settings: LocalCloudSettings,
    session: Any,
    console: Console,
    example: ExampleBundle,
    store: StateStore,
) -> DeployedStack:
    """Everything ``up`` does before starting compute: code, stack, kept objects, dropped
    properties, model."""
    try:
        template = load_template(settings.template)
    except (OSError, ValueError) as exc:
        raise DeployError(f"cannot read the template: {exc}") from exc
    given = stack_parameters(settings, template, store, console)
    auto = frozenset(name for name, value in given.items() if value == AUTO)
    s3 = session.client("s3")
    given = _local_parameters(settings, session, s3, template, given)
    if not given.get("ModelUri"):
        example.start()
    _upload_code(settings, s3, given, console)
    cfn = session.client("cloudformation")
    console.line("localcloud", f"deploying {settings.template.name} as {settings.stack_name}")
    body = Path(settings.template).read_text(encoding="utf-8")
    stack = replace(
        deploy_stack(cfn, settings.stack_name, body, given, settings.deploy_timeout), auto=auto
    )
    kept = store.restore_s3()
    if kept.objects:
        console.line("localcloud", f"restored {kept.objects} object(s) from {store.folder}")
    if settings.model:
        upload_bundle(s3, settings.model, given["ModelUri"])
        console.line("localcloud", f"uploaded the bundle {settings.model} to {given['ModelUri']}")
    context = stack_context(settings, cfn, template, stack)
    apply_dropped(s3, dropped_calls(template, context), console)
    apply_event_invoke_configs(session.client("lambda"), template, context, console)
    ensure_example_model(s3, stack, example, console)
    store.save_stack(stack.name, stack.kept_parameters())
    return stack


def _local_parameters(
    settings: LocalCloudSettings,
    session: Any,
    s3: Any,
    template: Mapping[str, Any],
    given: Mapping[str, str],
) -> dict[str, str]:
    """The parameters with this machine's values: the default network for ``auto``, the
    endpoint's host port, and the bundle given with ``--model``."""
    local = fill_auto_parameters(template, given, default_network(session.client("ec2")))
    if settings.endpoint_port and ENDPOINT_URL_PARAMETER in template.get("Parameters", {}):
        local[ENDPOINT_URL_PARAMETER] = f"http://{settings.host}:{settings.endpoint_port}"
    if settings.model:
        local["ModelUri"] = _bundle_uri(
            settings, s3, planned_model_bucket(settings, template, local)
        )
    return local


def _upload_code(
    settings: LocalCloudSettings, s3: Any, given: Mapping[str, str], console: Console
) -> None:
    if CODE_BUCKET_PARAMETER in given and CODE_KEY_PARAMETER in given:
        code = lambda_zip(settings.lambda_source)
        upload_lambda_code(s3, given[CODE_BUCKET_PARAMETER], given[CODE_KEY_PARAMETER], code)
        console.line("localcloud", f"uploaded {settings.lambda_source.name}/ ({len(code)} bytes)")


def _bundle_uri(settings: LocalCloudSettings, s3: Any, bucket: str) -> str:
    try:
        return f"s3://{bucket}/{bundle_prefix(s3, settings.model)}"
    except BundleError as exc:
        raise DeployError(str(exc)) from exc
