"""What a user does with the batch transform: upload files, read reports and outputs, watch ECS.

The output and report locations are written out here from DESIGN.md's contract rather than
imported from the service, so a change of layout in the code shows up as a failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from botocore.exceptions import ClientError

from service.artifacts import Bundle, S3Source, load_bundle
from tests.e2e.cloud_process import REPO_ROOT, WORKER_COMMAND, LocalCloudProcess, wait_for

STARTED_BY = "batch-worker"
REPORTS = "_reports"
ATOL = 1e-9
WATCH_SECONDS = 0.1


def output_key(cloud: LocalCloudProcess, bundle: Bundle, relative: str) -> str:
    """<OutputPrefix>/model=<name>/version=<version>/<relative>, the contract layout."""
    prefix = cloud.parameters["OutputPrefix"]
    return f"{prefix}/model={bundle.name}/version={bundle.version}/{relative}"


def report_key(cloud: LocalCloudProcess, input_key: str) -> str:
    return f"{cloud.parameters['OutputPrefix']}/{REPORTS}/{input_key}.json"


def get_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return json.loads(body)


def head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def wait_reports(
    cloud: LocalCloudProcess, keys: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """The report of every input key, once all of them exist."""
    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    found: dict[str, dict[str, Any]] = {}

    def all_there() -> bool:
        for key in keys:
            if key not in found:
                report = get_json(s3, bucket, report_key(cloud, key))
                if report is not None:
                    found[key] = report
        return len(found) == len(keys)

    wait_for(
        all_there,
        timeout,
        f"reports for {sorted(set(keys) - set(found))}",
        interval=0.3,
        context=cloud.log_tail,
    )
    return found


def read_parquet(s3: Any, bucket: str, key: str) -> pd.DataFrame:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return pd.read_parquet(io.BytesIO(body))


def load_served_bundle(cloud: LocalCloudProcess) -> Bundle:
    """The bundle the stack serves, read and verified from the local S3 in this process."""
    return load_bundle(S3Source(cloud.outputs["ModelUri"], cloud.client("s3")))


def assert_same_predictions(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Same ids in the same order, activations equal within ATOL."""
    assert list(actual.columns) == list(expected.columns), (actual.columns, expected.columns)
    assert len(actual) == len(expected)
    assert actual["id"].tolist() == expected["id"].tolist()
    np.testing.assert_allclose(
        actual["activation"].to_numpy(dtype=float),
        expected["activation"].to_numpy(dtype=float),
        rtol=0,
        atol=ATOL,
    )


# -- encoders: what a user would write ---------------------------------------------------


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def to_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def to_jsonl(frame: pd.DataFrame) -> bytes:
    """One JSON object per row; missing values as null, floats written in full."""
    lines = []
    for record in frame.to_dict(orient="records"):
        clean = {
            k: None if isinstance(v, float) and math.isnan(v) else _plain(v)
            for k, v in record.items()
        }
        lines.append(json.dumps(clean))
    return ("\n".join(lines) + "\n").encode()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# -- ECS, as the console or the CLI shows it ---------------------------------------------


def worker_tasks(cloud: LocalCloudProcess, ecs: Any | None = None) -> list[dict[str, Any]]:
    """Every batch worker task the cluster knows, running or stopped."""
    ecs = ecs or cloud.client("ecs")
    cluster = cloud.outputs["ClusterName"]
    arns = [
        arn
        for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, startedBy=STARTED_BY)
        for arn in page["taskArns"]
    ]
    tasks: list[dict[str, Any]] = []
    for start in range(0, len(arns), 100):
        tasks += ecs.describe_tasks(cluster=cluster, tasks=arns[start : start + 100])["tasks"]
    return tasks


def running(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [task for task in tasks if task["lastStatus"] == "RUNNING"]


def not_stopped(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [task for task in tasks if task["lastStatus"] != "STOPPED"]


def wait_workers_stopped(cloud: LocalCloudProcess, timeout: float) -> list[dict[str, Any]]:
    """Wait until no worker task is left that has not STOPPED; all worker tasks."""
    ecs = cloud.client("ecs")
    wait_for(
        lambda: not not_stopped(worker_tasks(cloud, ecs)),
        timeout,
        "every batch worker task to be STOPPED",
        interval=0.5,
        context=cloud.log_tail,
    )
    return worker_tasks(cloud, ecs)


def queue_counts(cloud: LocalCloudProcess, queue_output: str = "JobQueueUrl") -> tuple[int, int]:
    """(visible, in flight) messages of a queue."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = cloud.client("sqs").get_queue_attributes(
        QueueUrl=cloud.outputs[queue_output], AttributeNames=names
    )["Attributes"]
    return int(attributes[names[0]]), int(attributes[names[1]])


@dataclass
class WorkerWatch:
    """Polls ECS (and the process table) in a thread while a batch runs."""

    cloud: LocalCloudProcess
    max_running: int = 0
    max_processes: int = 0
    samples: int = 0
    task_arns: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> WorkerWatch:
        self._thread = threading.Thread(target=self._run, name="worker-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        ecs = self.cloud.client("ecs")
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                tasks = worker_tasks(self.cloud, ecs)
            except Exception as exc:  # keep watching; the test reports what went wrong
                self.errors.append(f"{type(exc).__name__}: {exc}")
                tasks = []
            self.max_running = max(self.max_running, len(running(tasks)))
            self.task_arns.update(task["taskArn"] for task in tasks)
            with contextlib.suppress(Exception):
                workers = len(self.cloud.processes(WORKER_COMMAND))
                self.max_processes = max(self.max_processes, workers)
            self.samples += 1
            self._stop.wait(max(0.0, WATCH_SECONDS - (time.monotonic() - started)))


def train_to_model_uri(cloud: LocalCloudProcess, *args: str) -> None:
    """Run scripts/train_example.py as a user would, publishing to the stack's ModelUri."""
    trained = subprocess.run(
        [sys.executable, "scripts/train_example.py", "--out", cloud.outputs["ModelUri"], *args],
        cwd=REPO_ROOT,
        env=cloud.user_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
