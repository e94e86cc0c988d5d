"""The ECS agent runs tasks recorded in moto as local processes, like the real agent."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from localcloud.deploy import default_network
from localcloud.ecs_agent import EcsAgent
from localcloud.waiting import wait_until

NETWORK: dict[str, Any] = {}

REPORT_ENV_AND_EXIT = """
import json, os, sys
keys = ["FOO", "BAR", "AWS_ENDPOINT_URL", "HOST", "PORT", "AWS_ACCESS_KEY_ID", "AWS_REGION"]
with open(os.environ["OUT"], "w") as handle:
    json.dump({key: os.environ.get(key) for key in keys}, handle)
print("leaving with 3")
sys.exit(3)
"""

SLEEP_IGNORING_SIGTERM = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.environ["OUT"], "w").write(str(os.getpid()))
while True:
    time.sleep(1)
"""

SERVE_FOREVER = """
import time
print("serving", flush=True)
while True:
    time.sleep(1)
"""


@pytest.fixture(autouse=True)
def default_vpc_network(aws: Callable[[str], Any]) -> None:
    """FARGATE tasks need real subnets and security groups: take the default VPC's."""
    ids = default_network(aws("ec2"))
    NETWORK["awsvpcConfiguration"] = {
        "subnets": ids["List<AWS::EC2::Subnet::Id>"].split(","),
        "securityGroups": ids["List<AWS::EC2::SecurityGroup::Id>"].split(","),
    }


def register(aws: Callable[[str], Any], family: str, code: str, **container: Any) -> str:
    ecs = aws("ecs")
    ecs.create_cluster(clusterName="local")
    definition = {"name": "app", "image": "local/app", "memory": 128, "command": [code]}
    response = ecs.register_task_definition(
        family=family,
        containerDefinitions=[{**definition, **container}],
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="256",
        memory="512",
    )
    return response["taskDefinition"]["taskDefinitionArn"]


def describe(aws: Callable[[str], Any], task_arn: str) -> dict[str, Any]:
    return aws("ecs").describe_tasks(cluster="local", tasks=[task_arn])["tasks"][0]


def status_is(aws: Callable[[str], Any], task_arn: str, status: str) -> Callable[[], bool]:
    return lambda: describe(aws, task_arn)["lastStatus"] == status


def test_a_task_runs_to_stopped_with_its_exit_code_and_environment(
    ecs_agent: EcsAgent, aws: Callable[[str], Any], out_dir: Path
) -> None:
    out = out_dir / "env.json"
    taskdef = register(
        aws,
        "exits",
        REPORT_ENV_AND_EXIT,
        environment=[
            {"name": "FOO", "value": "from-definition"},
            {"name": "OUT", "value": str(out)},
        ],
        portMappings=[{"containerPort": 8123}],
    )

    task = aws("ecs").run_task(
        cluster="local",
        taskDefinition=taskdef,
        launchType="FARGATE",
        networkConfiguration=NETWORK,
        startedBy="batch-worker",
        overrides={
            "containerOverrides": [
                {"name": "app", "environment": [{"name": "BAR", "value": "override"}]}
            ]
        },
    )["tasks"][0]["taskArn"]

    wait_until(status_is(aws, task, "STOPPED"), 15, "the task to stop")
    stopped = describe(aws, task)
    assert stopped["desiredStatus"] == "STOPPED"
    assert stopped["stoppedReason"] == "Essential container in task exited"
    assert stopped["stopCode"] == "EssentialContainerExited"
    assert stopped["startedBy"] == "batch-worker"
    (container,) = stopped["containers"]
    assert container["exitCode"] == 3
    assert container["lastStatus"] == "STOPPED"
    env = json.loads(out.read_text())
    assert env["FOO"] == "from-definition"
    assert env["BAR"] == "override"
    assert env["AWS_ENDPOINT_URL"] == ecs_agent.settings.endpoint_url
    assert env["HOST"] == "127.0.0.1"
    assert env["PORT"] == "8123"
    assert env["AWS_ACCESS_KEY_ID"] == "localcloud"
    assert env["AWS_REGION"] == "us-east-1"


def test_stop_task_terminates_the_process_and_kills_it_after_stop_timeout(
    ecs_agent: EcsAgent, aws: Callable[[str], Any], out_dir: Path
) -> None:
    out = out_dir / "pid"
    taskdef = register(
        aws,
        "stubborn",
        SLEEP_IGNORING_SIGTERM,
        environment=[{"name": "OUT", "value": str(out)}],
        stopTimeout=2,
    )
    task = aws("ecs").run_task(
        cluster="local", taskDefinition=taskdef, launchType="FARGATE", networkConfiguration=NETWORK
    )["tasks"][0]["taskArn"]
    wait_until(out.exists, 15, "the container to start")
    wait_until(lambda: out.read_text(), 5, "the pid file")
    pid = int(out.read_text())
    assert describe(aws, task)["lastStatus"] == "RUNNING"

    aws("ecs").stop_task(cluster="local", task=task, reason="no longer needed")

    stopping = describe(aws, task)
    assert stopping["desiredStatus"] == "STOPPED"
    assert stopping["lastStatus"] == "DEACTIVATING", "STOPPED only once the process is gone"
    wait_until(status_is(aws, task, "STOPPED"), 15, "the task to stop")
    assert not psutil.pid_exists(pid)
    stopped = describe(aws, task)
    assert stopped["stoppedReason"] == "no longer needed"
    assert stopped["stopCode"] == "UserInitiated"
    assert stopped["containers"][0]["exitCode"] == 137


def service_tasks(aws: Callable[[str], Any], status: str = "RUNNING") -> list[dict[str, Any]]:
    ecs = aws("ecs")
    arns = ecs.list_tasks(cluster="local", desiredStatus="RUNNING")["taskArns"]
    if not arns:
        return []
    tasks = ecs.describe_tasks(cluster="local", tasks=arns)["tasks"]
    return [t for t in tasks if t["group"] == "service:web" and t["lastStatus"] == status]


def test_a_service_is_kept_at_its_desired_count(
    ecs_agent: EcsAgent, aws: Callable[[str], Any]
) -> None:
    taskdef = register(aws, "web", SERVE_FOREVER)
    ecs = aws("ecs")
    ecs.create_service(
        cluster="local",
        serviceName="web",
        taskDefinition=taskdef,
        desiredCount=2,
        launchType="FARGATE",
        networkConfiguration=NETWORK,
    )

    first = wait_until(lambda: len(service_tasks(aws)) == 2 and service_tasks(aws), 15, "2 tasks")
    assert all(t["startedBy"].startswith("ecs-svc/") for t in first)
    wait_until(
        lambda: (
            ecs.describe_services(cluster="local", services=["web"])["services"][0]["runningCount"]
            == 2
        ),
        5,
        "runningCount 2",
    )

    victim = first[0]["taskArn"]
    (pid,) = ecs_agent.running_pids()[victim.split("/")[-1]]
    os.kill(pid, signal.SIGKILL)

    wait_until(status_is(aws, victim, "STOPPED"), 15, "the killed task to stop")
    assert describe(aws, victim)["containers"][0]["exitCode"] == 137
    replaced = wait_until(
        lambda: (
            {t["taskArn"] for t in service_tasks(aws)} - {victim}
            if len(service_tasks(aws)) == 2
            else None
        ),
        15,
        "a replacement task",
    )
    assert len(replaced) == 2

    ecs.update_service(cluster="local", service="web", desiredCount=0)
    wait_until(
        lambda: not service_tasks(aws) and not service_tasks(aws, "DEACTIVATING"), 15, "scale to 0"
    )
    assert ecs_agent.running_pids() == {}


def test_stopping_the_agent_stops_every_task_process(
    ecs_agent_factory: Callable[..., EcsAgent], aws: Callable[[str], Any]
) -> None:
    agent = ecs_agent_factory()
    taskdef = register(aws, "many", SERVE_FOREVER)
    arns = [
        aws("ecs").run_task(
            cluster="local",
            taskDefinition=taskdef,
            launchType="FARGATE",
            networkConfiguration=NETWORK,
        )["tasks"][0]["taskArn"]
        for _ in range(2)
    ]
    running = wait_until(
        lambda: len(agent.running_pids()) == 2 and agent.running_pids(), 15, "2 tasks"
    )
    pids = [pid for group in running.values() for pid in group]

    agent.stop()

    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert all(describe(aws, arn)["lastStatus"] == "STOPPED" for arn in arns)
