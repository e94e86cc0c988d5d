"""A SIGKILLed endpoint comes back: the ECS agent restarts the service's task, and a client
that retries with a small backoff gets /ping 200 and predictions again within seconds.

The kill hits the ``python -m service serve`` parent (the supervisor; its server processes
go with it, as a container's do). Each kill waits until the task has run for the agent's
quick-exit threshold, so every restart is an ordinary one rather than a crash-loop back-off.
The recovery time is measured from the kill to the first moment both /ping and
/invocations answer 200, as a client retrying every 50-500 ms sees it, once every process
of the killed task is gone (its server processes outlive the supervisor by a few
milliseconds, until the agent kills the task's process group, and answer meanwhile).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pandas as pd
import psutil
import pytest

from localcloud.ecs_agent import QUICK_EXIT_SECONDS
from localcloud.waiting import wait_until
from service.artifacts import Bundle
from service.model import predict
from tests.e2e.batch_helpers import assert_same_predictions, load_served_bundle, to_jsonl
from tests.e2e.cloud_process import LocalCloudProcess, Seen, wait_for
from tests.reliability.faults import endpoint_parent, fault_cloud, sigkill

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

KILLS = 3
RECOVERY_DEADLINE = 60.0
RECOVERY_LIMIT = 30.0
GONE_DEADLINE = 10.0
REQUEST_TIMEOUT = 2.0


@dataclass(frozen=True)
class Restart:
    killed_pid: int
    new_pid: int
    seconds: float


@dataclass
class RestartRun:
    cloud: LocalCloudProcess
    bundle: Bundle
    rows: pd.DataFrame
    restarts: list[Restart]
    tasks: list[dict[str, Any]]
    service: dict[str, Any]


def answers(cloud: LocalCloudProcess, rows: pd.DataFrame, bundle: Bundle) -> bool:
    """/ping is 200 and /invocations returns the reference predictions."""
    if cloud.ping() != 200:
        return False
    body = ("[" + ",".join(to_jsonl(rows).decode().splitlines()) + "]").encode()
    request = urllib.request.Request(
        f"{cloud.endpoint}/invocations",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            answered = pd.DataFrame(json.loads(response.read())["predictions"])
    except (urllib.error.URLError, OSError):
        return False
    assert_same_predictions(answered, predict(bundle, rows))
    return True


def process_group(seen: Seen) -> list[psutil.Process]:
    """The endpoint's supervisor and its server processes: a killed container takes all."""
    parent = psutil.Process(seen.pid)
    return [parent, *parent.children(recursive=True)]


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_and_recover(cloud: LocalCloudProcess, rows: pd.DataFrame, bundle: Bundle) -> Restart:
    """SIGKILL the endpoint; seconds until a retrying client gets answers from its successor."""
    victim = endpoint_parent(cloud)
    group = process_group(victim)
    killed = time.monotonic()
    assert sigkill(victim)
    wait_for(lambda: not any(alive(p) for p in group), GONE_DEADLINE, "the killed task's processes")
    wait_until(
        lambda: answers(cloud, rows, bundle),
        RECOVERY_DEADLINE,
        "answers from the restarted endpoint",
        backoff=2.0,
        max_interval=0.5,
    )
    seconds = time.monotonic() - killed
    return Restart(victim.pid, endpoint_parent(cloud).pid, round(seconds, 2))


def endpoint_tasks(cloud: LocalCloudProcess) -> list[dict[str, Any]]:
    ecs = cloud.client("ecs")
    cluster = cloud.outputs["ClusterName"]
    arns = ecs.list_tasks(cluster=cluster, serviceName=cloud.outputs["EndpointServiceName"])
    listed = arns["taskArns"] or ["none"]
    return [
        task
        for task in ecs.describe_tasks(cluster=cluster, tasks=listed)["tasks"]
        if task["group"].startswith("service:")
    ]


def running_for(cloud: LocalCloudProcess, seconds: float) -> bool:
    """One endpoint task RUNNING, started at least ``seconds`` ago."""
    now = datetime.now(UTC)
    started = [
        task["startedAt"]
        for task in endpoint_tasks(cloud)
        if task["lastStatus"] == "RUNNING" and task.get("startedAt")
    ]
    return len(started) == 1 and (now - started[0]).total_seconds() >= seconds


@pytest.fixture(scope="module")
def restarted(
    tmp_path_factory: pytest.TempPathFactory, train_example: ModuleType
) -> Iterator[RestartRun]:
    work = tmp_path_factory.mktemp("endpoint-restart")
    rows = train_example.sample_rows(25, seed=21)
    with fault_cloud(work, {}) as cloud:
        bundle = load_served_bundle(cloud)
        assert answers(cloud, rows, bundle)
        restarts = []
        for _ in range(KILLS):
            wait_for(
                lambda: running_for(cloud, QUICK_EXIT_SECONDS + 1),
                RECOVERY_DEADLINE,
                f"the endpoint task to have run {QUICK_EXIT_SECONDS + 1:g} s",
                interval=0.5,
            )
            restarts.append(kill_and_recover(cloud, rows, bundle))
        service = cloud.client("ecs").describe_services(
            cluster=cloud.outputs["ClusterName"], services=[cloud.outputs["EndpointServiceName"]]
        )["services"][0]
        yield RestartRun(cloud, bundle, rows, restarts, endpoint_tasks(cloud), service)


def test_a_retrying_client_gets_answers_again_within_seconds(restarted: RestartRun) -> None:
    seconds = [restart.seconds for restart in restarted.restarts]
    print(
        f"endpoint restart: {len(seconds)} SIGKILLs, recovery seconds {seconds}, "
        f"median {statistics.median(seconds):.2f}, max {max(seconds):.2f}"
    )
    assert len(seconds) == KILLS
    assert max(seconds) <= RECOVERY_LIMIT


def test_each_kill_was_a_new_process_and_a_new_task(restarted: RestartRun) -> None:
    pids = [r.killed_pid for r in restarted.restarts] + [restarted.restarts[-1].new_pid]
    assert len(set(pids)) == KILLS + 1
    stopped = [task for task in restarted.tasks if task["lastStatus"] == "STOPPED"]
    assert len(stopped) == KILLS
    for task in stopped:
        assert task["containers"][0]["exitCode"] == 137, task.get("stoppedReason")
        assert task["stopCode"] == "EssentialContainerExited"
    assert [t["lastStatus"] for t in restarted.tasks].count("RUNNING") == 1
    assert restarted.service["runningCount"] == restarted.service["desiredCount"] == 1


def test_the_restarted_endpoint_still_serves(restarted: RestartRun) -> None:
    started = time.monotonic()
    assert answers(restarted.cloud, restarted.rows, restarted.bundle)
    assert time.monotonic() - started < REQUEST_TIMEOUT * 2
