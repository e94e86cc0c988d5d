"""Ctrl-C on ``python -m localcloud up`` stops everything it started, workers included.

The cloud is the test's own: it is stopped in the middle of its life, with the endpoint
serving and a worker waiting on the queue after its first file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import ModuleType

import pytest

from tests.e2e.batch_helpers import running, to_parquet, wait_reports, worker_tasks
from tests.e2e.cloud_process import (
    ENDPOINT_COMMAND,
    STOPPED_LINE,
    WORKER_COMMAND,
    LocalCloudProcess,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_ctrl_c_leaves_no_process_of_the_local_cloud(
    start_local_cloud: Callable[..., LocalCloudProcess], train_example: ModuleType
) -> None:
    cloud = start_local_cloud()
    key = "shutdown/rows.parquet"
    cloud.client("s3").put_object(
        Bucket=cloud.outputs["InputBucketName"],
        Key=key,
        Body=to_parquet(train_example.sample_rows(20)),
    )
    assert wait_reports(cloud, [key], 120)[key]["status"] == "succeeded"
    assert running(worker_tasks(cloud)), "the worker should still be waiting for work"
    assert cloud.processes(WORKER_COMMAND)
    assert len(cloud.processes(ENDPOINT_COMMAND)) >= 2

    started = time.monotonic()
    cloud.interrupt()

    assert cloud.wait_exit() == 0, cloud.log_tail()
    print(f"shutdown: localcloud up exited {time.monotonic() - started:.1f} s after SIGINT")
    assert cloud.has_line(STOPPED_LINE), cloud.log_tail()
    cloud.assert_nothing_left()
    assert cloud.tree is not None
    commands = [seen.command for seen in cloud.tree.all_seen()]
    assert any(ENDPOINT_COMMAND in command for command in commands)
    assert any(WORKER_COMMAND in command for command in commands)
    assert any("bootstrap.py" in command for command in commands), "no Lambda run was seen"
