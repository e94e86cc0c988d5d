"""The local cloud's CloudFormation: a stack read while it is being created, as a deploy
script's polling reads it, sees the stack whole and never creates a resource itself."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from moto.logs.models import LogGroup

HOLD_SECONDS = 3.0
TEMPLATE = {
    "Resources": {
        name: {"Type": "AWS::Logs::LogGroup", "Properties": {"LogGroupName": f"/test/{name}"}}
        for name in ("First", "Second")
    },
    "Outputs": {
        f"{name}Arn": {"Value": {"Fn::GetAtt": [name, "Arn"]}} for name in ("First", "Second")
    },
}


@pytest.fixture
def creation_held(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The first log group's creation waits (up to HOLD_SECONDS) until `read_done` is set;
    `creating` is set when it starts waiting."""
    creating, read_done = threading.Event(), threading.Event()
    original = LogGroup.create_from_cloudformation_json.__func__

    def held(cls: type[LogGroup], *args: Any, **kwargs: Any) -> LogGroup:
        if not creating.is_set():
            creating.set()
            read_done.wait(HOLD_SECONDS)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(LogGroup, "create_from_cloudformation_json", classmethod(held))
    return creating, read_done


def test_a_stack_read_during_its_creation_sees_it_complete(
    aws: Callable[[str], Any],
    creation_held: tuple[threading.Event, threading.Event],
) -> None:
    creating, read_done = creation_held
    cloudformation = aws("cloudformation")
    read: dict[str, Any] = {}

    def read_during_creation() -> None:
        if creating.wait(30):
            read["stack"] = cloudformation.describe_stacks(StackName="held")["Stacks"][0]
        read_done.set()

    reader = threading.Thread(target=read_during_creation)
    reader.start()
    try:
        cloudformation.create_stack(StackName="held", TemplateBody=json.dumps(TEMPLATE))
    finally:
        reader.join(60)

    assert read["stack"]["StackStatus"] == "CREATE_COMPLETE"
    assert {o["OutputKey"] for o in read["stack"]["Outputs"]} == {"FirstArn", "SecondArn"}
    groups = aws("logs").describe_log_groups(logGroupNamePrefix="/test/")["logGroups"]
    assert sorted(group["logGroupName"] for group in groups) == ["/test/First", "/test/Second"]
