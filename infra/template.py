"""Read the CloudFormation template and parameter files, and resolve intrinsic functions.

The tests read `infra/stack.yaml` with this module, and the local cloud uses it to
re-apply what moto's CloudFormation drops (for instance the input bucket's
`NotificationConfiguration`): it resolves the same template with the same
parameters, so nothing is described twice. Standard library and PyYAML only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STACK_PATH = Path(__file__).with_name("stack.yaml")
PARAMS_DIR = Path(__file__).with_name("params")

NO_VALUE = "AWS::NoValue"


class TemplateError(ValueError):
    """The template or a parameter file cannot be read or resolved as asked."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as text and maps `!Ref x` to `{"Ref": "x"}`."""


def _short_tag(loader: _Loader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _short_tag)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_str)


def load_template(path: str | Path = STACK_PATH) -> dict[str, Any]:
    """Parse a template file (YAML or JSON) into plain dicts in the long `Fn::` form."""
    return parse_template(Path(path).read_text(encoding="utf-8"), str(path))


def parse_template(text: str, source: str = "template") -> dict[str, Any]:
    """Parse a template's text; ``source`` names it in the error."""
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise TemplateError(f"{source} is not YAML or JSON: {exc}") from exc
    if not isinstance(document, dict) or "Resources" not in document:
        raise TemplateError(f"{source} is not a CloudFormation template (no Resources)")
    return document


def load_parameter_file(path: str | Path) -> dict[str, str]:
    """Read a CloudFormation CLI parameter file: a list of ParameterKey/ParameterValue."""
    entries = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(entries, list):
        raise TemplateError(f"{path}: expected a JSON list of ParameterKey/ParameterValue")
    values: dict[str, str] = {}
    for entry in entries:
        if set(entry) != {"ParameterKey", "ParameterValue"}:
            raise TemplateError(f"{path}: bad entry {entry!r}")
        values[entry["ParameterKey"]] = str(entry["ParameterValue"])
    return values


def parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    """Merge given values over the defaults; list types become lists, as Ref returns them."""
    declared = template.get("Parameters", {})
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise TemplateError(f"unknown parameters: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            raw = given[name]
        elif "Default" in spec:
            raw = str(spec["Default"])
        else:
            raise TemplateError(f"parameter {name} has no default and no value")
        kind = str(spec.get("Type", "String"))
        is_list = kind == "CommaDelimitedList" or kind.startswith("List<")
        values[name] = raw.split(",") if is_list else raw
    return values


def pseudo_parameters(
    stack_name: str,
    account_id: str = "123456789012",
    region: str = "us-east-1",
    stack_id: str | None = None,
) -> dict[str, str]:
    """The AWS:: pseudo parameters of a stack (moto's default account unless told)."""
    if stack_id is None:
        stack_id = (
            f"arn:aws:cloudformation:{region}:{account_id}:stack/{stack_name}/"
            "00000000-0000-0000-0000-000000000000"
        )
    return {
        "AWS::AccountId": account_id,
        "AWS::Region": region,
        "AWS::StackName": stack_name,
        "AWS::StackId": stack_id,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
    }


@dataclass
class Context:
    """What Ref and GetAtt resolve to: parameters, pseudo parameters, resource ids.

    `refs` maps a parameter or logical id to its value; `attributes` maps
    "LogicalId.Attribute" to the value GetAtt returns.
    """

    refs: Mapping[str, Any]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    conditions: dict[str, bool] = field(default_factory=dict)


def make_context(
    template: Mapping[str, Any],
    given: Mapping[str, str],
    pseudo: Mapping[str, str],
    physical_ids: Mapping[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Context:
    """A context for one stack: its parameter values, pseudo parameters and resources."""
    refs = {**parameter_values(template, given), **pseudo, **(physical_ids or {})}
    context = Context(refs=refs, attributes=attributes if attributes is not None else {})
    evaluate_conditions(template, context)
    return context


def evaluate_conditions(template: Mapping[str, Any], context: Context) -> dict[str, bool]:
    """Evaluate every entry of the Conditions section (in dependency order)."""
    pending = dict(template.get("Conditions", {}))
    context.conditions = {}

    def condition(name: str) -> bool:
        if name not in context.conditions:
            if name not in pending:
                raise TemplateError(f"unknown condition {name}")
            context.conditions[name] = bool(resolve(pending[name], context))
        return context.conditions[name]

    for name in pending:
        condition(name)
    return context.conditions


def resolve(node: Any, context: Context) -> Any:
    """Resolve intrinsic functions in `node`; `AWS::NoValue` removes the key or item."""
    if isinstance(node, list):
        items = [resolve(item, context) for item in node]
        return [item for item in items if item is not _DROP]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((key, argument),) = node.items()
        function = _FUNCTIONS.get(key)
        if function is not None:
            return function(argument, context)
    resolved = {key: resolve(value, context) for key, value in node.items()}
    return {key: value for key, value in resolved.items() if value is not _DROP}


_DROP = object()


def _ref(name: str, context: Context) -> Any:
    if name == NO_VALUE:
        return _DROP
    if name not in context.refs:
        raise TemplateError(f"cannot resolve Ref {name}")
    return context.refs[name]


def _get_att(argument: list[str], context: Context) -> Any:
    key = ".".join(argument)
    if key not in context.attributes:
        raise TemplateError(f"cannot resolve GetAtt {key}")
    return context.attributes[key]


_SUB_VARIABLE = re.compile(r"\$\{(!?)([^}]+)\}")


def _sub(argument: str | list[Any], context: Context) -> str:
    text, variables = (argument, {}) if isinstance(argument, str) else argument
    local = {name: resolve(value, context) for name, value in variables.items()}

    def replace(match: re.Match[str]) -> str:
        literal, name = match.groups()
        if literal:
            return "${" + name + "}"
        if name in local:
            return str(local[name])
        if "." in name:
            return str(_get_att(name.split(".", 1), context))
        return str(_ref(name, context))

    return _SUB_VARIABLE.sub(replace, text)


def _join(argument: list[Any], context: Context) -> str:
    delimiter, items = argument
    values = resolve(items, context)
    return delimiter.join(str(value) for value in values)


def _select(argument: list[Any], context: Context) -> Any:
    index, items = argument
    values = resolve(items, context)
    position = int(resolve(index, context))
    if not 0 <= position < len(values):
        raise TemplateError(f"Fn::Select index {position} out of range for {values!r}")
    return values[position]


def _split(argument: list[Any], context: Context) -> list[str]:
    delimiter, text = argument
    return str(resolve(text, context)).split(delimiter)


def _if(argument: list[Any], context: Context) -> Any:
    name, when_true, when_false = argument
    if name not in context.conditions:
        raise TemplateError(f"condition {name} not evaluated")
    return resolve(when_true if context.conditions[name] else when_false, context)


def _equals(argument: list[Any], context: Context) -> bool:
    left, right = (resolve(value, context) for value in argument)
    return str(left) == str(right)


def _condition(name: str, context: Context) -> bool:
    if name not in context.conditions:
        raise TemplateError(f"condition {name} not evaluated")
    return context.conditions[name]


_FUNCTIONS: dict[str, Callable[[Any, Context], Any]] = {
    "Ref": _ref,
    "Fn::GetAtt": _get_att,
    "Fn::Sub": _sub,
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::If": _if,
    "Fn::Equals": _equals,
    "Fn::Not": lambda argument, context: not resolve(argument[0], context),
    "Fn::And": lambda argument, context: all(resolve(item, context) for item in argument),
    "Fn::Or": lambda argument, context: any(resolve(item, context) for item in argument),
    "Condition": _condition,
}


def s3_notification_to_api(notification: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a resolved `NotificationConfiguration` into `put_bucket_notification_configuration`'s shape.

    CloudFormation and the S3 API name the same things differently
    (`LambdaConfigurations`/`Function`/`S3Key`/`Rules` against
    `LambdaFunctionConfigurations`/`LambdaFunctionArn`/`Key`/`FilterRules`).
    """
    kinds = {
        "LambdaConfigurations": ("LambdaFunctionConfigurations", "Function", "LambdaFunctionArn"),
        "QueueConfigurations": ("QueueConfigurations", "Queue", "QueueArn"),
        "TopicConfigurations": ("TopicConfigurations", "Topic", "TopicArn"),
    }
    api: dict[str, Any] = {}
    for cfn_key, (api_key, cfn_target, api_target) in kinds.items():
        entries = []
        for entry in notification.get(cfn_key, []):
            converted: dict[str, Any] = {api_target: entry[cfn_target], "Events": [entry["Event"]]}
            rules = entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            if rules:
                converted["Filter"] = {"Key": {"FilterRules": rules}}
            entries.append(converted)
        if entries:
            api[api_key] = entries
    return api


def s3_bucket_calls(properties: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The S3 client calls (method, arguments without Bucket) that apply a resolved bucket's
    notification, versioning and public access block, the properties moto's CloudFormation drops.
    """
    calls: list[tuple[str, dict[str, Any]]] = []
    if "VersioningConfiguration" in properties:
        status = properties["VersioningConfiguration"]["Status"]
        calls.append(("put_bucket_versioning", {"VersioningConfiguration": {"Status": status}}))
    if "PublicAccessBlockConfiguration" in properties:
        block = dict(properties["PublicAccessBlockConfiguration"])
        calls.append(("put_public_access_block", {"PublicAccessBlockConfiguration": block}))
    if "NotificationConfiguration" in properties:
        api = s3_notification_to_api(properties["NotificationConfiguration"])
        calls.append(("put_bucket_notification_configuration", {"NotificationConfiguration": api}))
    return calls
