"""CloudFormation stack updates as AWS runs them, where moto's differ.

moto 5.2.5 updates a stack inside the UpdateStack call and, measured on our template:

- ``UsePreviousValue`` reads the values given at creation only, so a parameter left at its
  default (``WorkerStorageGiB``) fails with ``KeyError`` (a 500; the AWS CLI's ``deploy``
  sends it for every parameter);
- a resource is updated only when its own JSON or a parameter it names with ``Ref`` changed:
  ``!Sub "${MaxWorkers}"`` is not seen, and a resource that refers to an updated one (the
  Lambda's ``TASK_DEFINITION``, the service's task definition) keeps the old value;
- a failure leaves the stack half-updated, answers 500 and never rolls back; an executed
  UPDATE change set leaves the stack's parameters and outputs as they were.

While the local cloud runs, these are replaced: dependents are updated in dependency order,
a failure rolls every resource back to the previous template and parameters
(``UPDATE_ROLLBACK_COMPLETE``, the reason in the stack's events), and ``on_change`` runs in
the background after each update (the local cloud applies what moto drops), the stack
reaching ``UPDATE_COMPLETE`` only then, as AWS's ``UPDATE_COMPLETE_CLEANUP_IN_PROGRESS``.

Two naming rules of the local cloud live here too: a stack's id is derived from its name
(so bucket names built from it are the same on every start), and the ``Ref`` of an SQS queue
is the URL it answers at, not ``https://sqs.<region>.amazonaws.com/...``.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

from moto.awslambda.models import LambdaFunction
from moto.cloudformation import models as cfn_models
from moto.cloudformation import parsing
from moto.core.utils import pascal_to_camelcase, remap_nested_keys
from moto.ecs.models import TaskDefinition, ecs_backends
from moto.sqs.models import Queue

StackHook = Callable[[Any, str], None]

_SUB_NAME = re.compile(r"\$\{([^}!][^}.]*)")
_ID_NAMESPACE = uuid.UUID("6f1d52a4-5b8e-4c55-9a0e-7e0a6f3c1d10")
_saved: dict[str, Any] = {}
_state: dict[str, Any] = {"hook": None, "endpoint": ""}


def stable_stack_id(stack_name: str, region: str, account: str) -> str:
    """The same id for the same stack name, account and region, on every start."""
    key = uuid.uuid5(_ID_NAMESPACE, f"{account}/{region}/{stack_name}")
    return f"arn:aws:cloudformation:{region}:{account}:stack/{stack_name}/{key}"


def references(node: Any) -> set[str]:
    """Names a template fragment refers to: Ref, GetAtt and ``${...}`` in Sub."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= references(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else str(value).split(".")[0])
            elif key == "Fn::Sub":
                text, local = (value, {}) if isinstance(value, str) else (value[0], value[1])
                found |= set(_SUB_NAME.findall(text)) - set(local)
                found |= references(local)
            else:
                found |= references(value)
    return found


def _updatable(resource: dict[str, Any]) -> bool:
    try:
        kind = parsing.resource_class_from_type(resource["Type"])
    except Exception:
        return False
    method = getattr(kind, "update_from_cloudformation_json", None)
    return method is not None and not hasattr(method, "__isabstractmethod__")


def _diff_with_dependents(
    self: parsing.ResourceMap, other: dict[str, Any], parameters: dict[str, Any] | None = None
) -> dict[str, Any]:
    actions = _saved["build_resource_diff"](self, other, None)
    new, old = other["Resources"], self._resource_json_map
    current = {k: _text_value(v) for k, v in self.resolved_parameters.items()}
    declared = other.get("Parameters", {})
    wanted = {
        name: str((parameters or {}).get(name, spec.get("Default", "")))
        for name, spec in declared.items()
    }
    changed = {name for name, value in wanted.items() if current.get(name) != value}
    touched = changed | set(actions["Add"]) | set(actions["Modify"])
    modify = list(actions["Modify"])
    grew = True
    while grew:
        grew = False
        for name, resource in new.items():
            exists = name in old and self._parsed_resources.get(name) is not None
            linked = exists and name not in touched and references(resource) & touched
            if linked and _updatable(resource):
                modify.append(name)
                touched.add(name)
                grew = True
    actions["Modify"] = _dependency_order(modify, new)
    return actions


def _dependency_order(names: list[str], resources: dict[str, Any]) -> list[str]:
    """Resources before the ones that refer to them (moto updates in list order)."""
    pending, ordered = list(names), []
    while pending:
        ready = [n for n in pending if not references(resources[n]) & (set(pending) - {n})]
        ready = ready or pending[:1]
        ordered += ready
        pending = [n for n in pending if n not in ready]
    return ordered


def _update_task_definition(
    cls: type,
    original_resource: Any,
    new_resource_name: str,
    cloudformation_json: Any,
    account_id: str,
    region_name: str,
) -> Any:
    """A new revision with the container definitions in the API's casing, as moto's create
    writes them (its update keeps CloudFormation's ``Command``, which no agent reads)."""
    properties = cloudformation_json["Properties"]
    definitions = remap_nested_keys(properties.get("ContainerDefinitions", []), pascal_to_camelcase)
    volumes = remap_nested_keys(properties.get("Volumes", []), pascal_to_camelcase)
    family = properties.get("Family", original_resource.family)
    if (family, definitions, volumes) == (
        original_resource.family,
        original_resource.container_definitions,
        original_resource.volumes,
    ):
        return original_resource
    backend = ecs_backends[account_id][region_name]
    backend.deregister_task_definition(original_resource.arn)
    return backend.register_task_definition(
        family=family,
        container_definitions=definitions,
        volumes=volumes,
        memory=properties.get("Memory"),
    )


def _check_code(resource: Any) -> None:
    """A function whose package cannot be read fails, as on AWS (moto empties its code)."""
    if isinstance(resource, LambdaFunction) and not getattr(resource, "code_bytes", b""):
        code = resource.code
        raise ValueError(
            f"Error occurred while GetObject. S3 Error Code: NoSuchKey. S3 Error Message: "
            f"s3://{code.get('S3Bucket')}/{code.get('S3Key')} does not exist"
        )


def _update_resource(
    logical_id: str, resource_json: dict[str, Any], resources: Any, **kw: Any
) -> Any:
    """moto's update, keeping a resource it cannot update, and naming the failed one."""
    original = resources[logical_id]
    try:
        updated = _saved["parse_and_update_resource"](logical_id, resource_json, resources, **kw)
        _check_code(updated)
    except Exception as exc:
        exc.logical_id = logical_id  # type: ignore[attr-defined]
        raise
    return original if updated is None else updated


def _text_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _resolve_update_parameters(
    self: cfn_models.CloudFormationBackend, instance: Any, incoming_params: list[dict[str, Any]]
) -> dict[str, str]:
    """UsePreviousValue reads every current value, defaults included (AWS does)."""
    current = getattr(instance, "stack_parameters", None) or instance.parameters
    values = {
        p["ParameterKey"]: p["ParameterValue"] for p in incoming_params if "ParameterValue" in p
    }
    for parameter in incoming_params:
        if parameter.get("UsePreviousValue") and parameter["ParameterKey"] in current:
            values[parameter["ParameterKey"]] = _text_value(current[parameter["ParameterKey"]])
    return values


def _resource_event(stack: Any, logical_id: str, status: str, reason: str) -> None:
    resource = stack.resource_map._resource_json_map.get(logical_id, {})
    stack.events.append(
        cfn_models.Event(
            stack_id=stack.stack_id,
            stack_name=stack.name,
            logical_resource_id=logical_id,
            physical_resource_id=logical_id,
            resource_type=resource.get("Type", ""),
            resource_status=status,
            resource_status_reason=reason,
            resource_properties=None,
        )
    )


def _update_stack(
    self: Any,
    template: str,
    role_arn: str | None = None,
    parameters: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """Update in place; on failure roll back to the previous template and parameters."""
    previous = (self.template, dict(self.parameters))
    self._add_stack_event("UPDATE_IN_PROGRESS", resource_status_reason="User Initiated")
    self.status = "UPDATE_IN_PROGRESS"
    try:
        _apply(self, template, parameters)
    except Exception as exc:
        logical_id = getattr(exc, "logical_id", "")
        reason = f"{type(exc).__name__}: {exc}"
        if logical_id:
            _resource_event(self, logical_id, "UPDATE_FAILED", reason)
        self._add_stack_event(
            "UPDATE_ROLLBACK_IN_PROGRESS",
            resource_status_reason=f"The following resource(s) failed to update: "
            f"[{logical_id or 'unknown'}]. {reason}",
        )
        self.status = "UPDATE_ROLLBACK_IN_PROGRESS"
        try:
            _apply(self, *previous)
        except Exception as again:
            _finish(self, "UPDATE_ROLLBACK_FAILED", f"{type(again).__name__}: {again}")
            return
        _finish(self, "UPDATE_ROLLBACK_COMPLETE", None)
        return
    self.role_arn = role_arn
    if tags is not None:
        self.tags = tags
    _finish(self, "UPDATE_COMPLETE", None)


def _apply(stack: Any, template: str, parameters: dict[str, Any] | None) -> None:
    stack.template = template
    stack._parse_template()
    stack.resource_map.update(stack.template_dict, parameters)
    stack.output_map = stack._create_output_map()
    if parameters is not None:
        stack.parameters = parameters


def _finish(stack: Any, status: str, reason: str | None) -> None:
    """Hand the stack to the hook, which completes it in the background; else complete now."""
    hook: StackHook | None = _state["hook"]

    def complete() -> None:
        try:
            if hook is not None:
                hook(stack, status)
        finally:
            stack._add_stack_event(status, resource_status_reason=reason)
            stack.status = status

    if hook is None:
        complete()
    else:
        threading.Thread(target=complete, name="stack-update", daemon=True).start()


def _execute_change_set(
    self: cfn_models.CloudFormationBackend, change_set_name: str, stack_name: str | None = None
) -> None:
    """An UPDATE change set updates like UpdateStack: parameters, outputs, rollback."""
    change_set = self.change_sets.get(change_set_name) or next(
        (c for c in self.change_sets.values() if c.change_set_name == change_set_name), None
    )
    if change_set is None or change_set.change_set_type != "UPDATE":
        _saved["execute_change_set"](self, change_set_name, stack_name)
        return
    stack = self.stacks[change_set.stack_id]
    change_set.execution_status = "EXECUTE_COMPLETE"
    parameters = {k: _text_value(v) for k, v in change_set.parameters.items()}
    _update_stack(stack, change_set.template, stack.role_arn, parameters)


def _local_queue_url(self: Queue) -> str:
    return f"{_state['endpoint']}/{self.account_id}/{self.name}"


def patch(endpoint_url: str, on_change: StackHook | None = None) -> None:
    """Install the local behaviour in the in-process moto."""
    if _saved:
        unpatch()
    _saved.update(
        build_resource_diff=parsing.ResourceMap.build_resource_diff,
        parse_and_update_resource=parsing.parse_and_update_resource,
        update=cfn_models.Stack.update,
        resolve=cfn_models.CloudFormationBackend._resolve_update_parameters,
        execute_change_set=cfn_models.CloudFormationBackend.execute_change_set,
        generate_stack_id=cfn_models.generate_stack_id,
        queue_id=Queue.physical_resource_id,
        task_definition=TaskDefinition.__dict__["update_from_cloudformation_json"],
    )
    TaskDefinition.update_from_cloudformation_json = classmethod(_update_task_definition)  # type: ignore[method-assign,assignment]
    _state.update(hook=on_change, endpoint=endpoint_url)
    parsing.ResourceMap.build_resource_diff = _diff_with_dependents  # type: ignore[method-assign]
    parsing.parse_and_update_resource = _update_resource
    cfn_models.Stack.update = _update_stack  # type: ignore[method-assign,assignment]
    cfn_models.CloudFormationBackend._resolve_update_parameters = _resolve_update_parameters  # type: ignore[method-assign,assignment]
    cfn_models.CloudFormationBackend.execute_change_set = _execute_change_set  # type: ignore[method-assign]
    cfn_models.generate_stack_id = stable_stack_id
    Queue.physical_resource_id = property(_local_queue_url)  # type: ignore[assignment,method-assign]


def set_hook(on_change: StackHook | None) -> None:
    """Run ``on_change(stack, status)`` after each update (None: complete at once)."""
    _state["hook"] = on_change


def unpatch() -> None:
    """Give moto its own behaviour back."""
    if not _saved:
        return
    parsing.ResourceMap.build_resource_diff = _saved["build_resource_diff"]  # type: ignore[method-assign]
    parsing.parse_and_update_resource = _saved["parse_and_update_resource"]
    cfn_models.Stack.update = _saved["update"]  # type: ignore[method-assign]
    cfn_models.CloudFormationBackend._resolve_update_parameters = _saved["resolve"]  # type: ignore[method-assign]
    cfn_models.CloudFormationBackend.execute_change_set = _saved["execute_change_set"]  # type: ignore[method-assign]
    cfn_models.generate_stack_id = _saved["generate_stack_id"]
    Queue.physical_resource_id = _saved["queue_id"]  # type: ignore[method-assign]
    TaskDefinition.update_from_cloudformation_json = _saved["task_definition"]  # type: ignore[method-assign]
    _saved.clear()
    _state.update(hook=None, endpoint="")
