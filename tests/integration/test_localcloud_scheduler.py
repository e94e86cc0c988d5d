"""The scheduler fires EventBridge schedule rules at their Lambda targets."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from localcloud.lambda_runtime import LambdaRuntime
from localcloud.scheduler import Cron, Scheduler, rate_seconds
from localcloud.waiting import wait_until

RECORD_EVENT = """
import json, os, uuid

def handler(event, context):
    path = os.path.join(os.environ["OUT_DIR"], uuid.uuid4().hex + ".json")
    with open(path, "w") as handle:
        json.dump(event, handle)
"""


def test_a_rate_rule_fires_its_lambda_target_at_the_scaled_rate(
    scheduler_factory: Callable[[float], Scheduler],
    lambda_runtime: LambdaRuntime,
    make_function: Callable[..., str],
    aws: Callable[[str], Any],
    out_dir: Path,
) -> None:
    name = make_function(
        "rescale", RECORD_EVENT, Environment={"Variables": {"OUT_DIR": str(out_dir)}}
    )
    arn = aws("lambda").get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    events = aws("events")
    rule_arn = events.put_rule(Name="every-minute", ScheduleExpression="rate(1 minute)")["RuleArn"]
    events.put_targets(Rule="every-minute", Targets=[{"Id": "fn", "Arn": arn}])
    events.put_rule(Name="disabled", ScheduleExpression="rate(1 minute)", State="DISABLED")
    events.put_targets(Rule="disabled", Targets=[{"Id": "fn", "Arn": arn}])

    scheduler = scheduler_factory(0.01)

    wait_until(lambda: len(list(out_dir.iterdir())) >= 2, 15, "two scheduled events")
    assert lambda_runtime.wait_idle(10)
    for path in out_dir.iterdir():
        event = json.loads(path.read_text())
        assert event["detail-type"] == "Scheduled Event"
        assert event["source"] == "aws.events"
        assert event["resources"] == [rule_arn], "the disabled rule fired"
    assert scheduler.fired >= 2


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("rate(1 minute)", 60),
        ("rate(5 minutes)", 300),
        ("rate(2 hours)", 7200),
        ("cron(0 * * * ? *)", None),
    ],
)
def test_rate_expressions(expression: str, seconds: int | None) -> None:
    assert rate_seconds(expression) == seconds


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(0/15 * * * ? *)", "2026-11-25T10:07:30", "2026-11-25T10:15:00"),
        ("cron(0 12 * * ? *)", "2026-11-25T12:00:00", "2026-11-26T12:00:00"),
        ("cron(30 8 ? * MON-FRI *)", "2026-11-28T09:00:00", "2026-11-30T08:30:00"),
        ("cron(0 0 1 * ? *)", "2026-11-25T00:00:00", "2026-12-01T00:00:00"),
    ],
)
def test_cron_next_firing(expression: str, after: str, expected: str) -> None:
    cron = Cron.parse(expression)
    assert cron is not None
    moment = datetime.fromisoformat(after).replace(tzinfo=UTC)
    assert cron.next_after(moment) == datetime.fromisoformat(expected).replace(tzinfo=UTC)
