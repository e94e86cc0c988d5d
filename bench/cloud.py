"""`python -m localcloud up` run as a user runs it, for the batch benchmarks.

A private state folder, free ports and a copy of infra/params/local.json with a few values
changed; boto3 clients as a user would make them (the cloud's URL, any keys).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.processes import LOOPBACK, Managed, free_port, http_status
from bench.stats import DATA_DIR
from localcloud.procs import aws_environment
from localcloud.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_PARAMS = REPO_ROOT / "infra" / "params" / "local.json"
STACK_NAME = "model-endpoint-local"
REGION = "us-east-1"
DUMMY_KEY = "bench"
READY_LINE = "ready (Ctrl-C stops everything)"
STARTED_BY = "batch-worker"


def write_params(path: Path, overrides: dict[str, str]) -> Path:
    entries = json.loads(LOCAL_PARAMS.read_text(encoding="utf-8"))
    known = {entry["ParameterKey"] for entry in entries}
    unknown = set(overrides) - known
    if unknown:
        raise KeyError(f"not in {LOCAL_PARAMS.name}: {sorted(unknown)}")
    for entry in entries:
        entry["ParameterValue"] = overrides.get(entry["ParameterKey"], entry["ParameterValue"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return path


class Cloud:
    """One local cloud with its own state folder, AWS port and endpoint port."""

    def __init__(
        self, work_dir: Path, parameters: dict[str, str], schedule_scale: float = 0.1
    ) -> None:
        self.work_dir = work_dir
        self.params = write_params(work_dir / "params.json", parameters)
        self.port = free_port()
        self.endpoint_port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.schedule_scale = schedule_scale
        self.outputs: dict[str, str] = {}
        self.parameters: dict[str, str] = {}
        self.process: Managed | None = None
        self._ready = threading.Event()
        self._clients: dict[str, Any] = {}

    def start(self) -> Cloud:
        command = [
            sys.executable,
            "-m",
            "localcloud",
            "up",
            "--port",
            str(self.port),
            "--endpoint-port",
            str(self.endpoint_port),
            "--state-dir",
            str(self.work_dir / "state"),
            "--schedule-scale",
            str(self.schedule_scale),
            "--params",
            str(self.params),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
        self.process = Managed(
            command,
            name=f"localcloud:{self.port}",
            log=DATA_DIR / "logs" / f"localcloud-{self.work_dir.name}.log",
            env=env,
            cwd=REPO_ROOT,
            on_line=self._line,
        )
        wait_until(lambda: self._ready.is_set() or not self.process.alive(), 240, "the local cloud")
        if not self._ready.is_set():
            raise RuntimeError(f"localcloud up exited:\n{self.process.describe()}")
        stack = self.client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"][0]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        self.parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        wait_until(lambda: http_status(self.outputs["EndpointUrl"] + "/ping") == 200, 90, "/ping")
        return self

    def _line(self, line: str) -> None:
        if line.rstrip().endswith(READY_LINE):
            self._ready.set()

    def stop(self) -> None:
        """Ctrl-C as a user does it; `up` stops every process it started."""
        if self.process is not None:
            import signal

            self.process.stop(signal.SIGINT, grace=90)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = boto3.client(
                service,
                endpoint_url=self.url,
                region_name=REGION,
                aws_access_key_id=DUMMY_KEY,
                aws_secret_access_key=DUMMY_KEY,
                config=Config(retries={"mode": "standard", "max_attempts": 5}),
            )
        return self._clients[service]

    def environment(self) -> dict[str, str]:
        """What a person exports before running `python -m service worker` against it."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(aws_environment(self.url, REGION))
        return env

    def worker_environment(self) -> dict[str, str]:
        """The worker container's environment, as the task definition gives it."""
        ecs = self.client("ecs")
        family = self.outputs.get("WorkerTaskDefinition") or f"{STACK_NAME}-worker"
        definition = ecs.describe_task_definition(taskDefinition=family)["taskDefinition"]
        container = next(c for c in definition["containerDefinitions"] if c["name"] == "worker")
        return {e["name"]: e["value"] for e in container.get("environment", [])}

    # -- batch ----------------------------------------------------------------------------

    def output_key(self, model: tuple[str, str], relative: str) -> str:
        prefix = self.parameters["OutputPrefix"]
        return f"{prefix}/model={model[0]}/version={model[1]}/{relative}"

    def running_workers(self) -> list[str]:
        """ARNs of worker tasks whose process still runs (desired RUNNING)."""
        ecs = self.client("ecs")
        cluster = self.outputs["ClusterName"]
        arns = ecs.list_tasks(cluster=cluster, startedBy=STARTED_BY).get("taskArns", [])
        if not arns:
            return []
        tasks = ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]
        return [t["taskArn"] for t in tasks if t.get("desiredStatus") == "RUNNING"]

    def stop_workers(self, timeout: float = 120) -> None:
        """Stop every worker task and wait until their processes are gone (a cold start, as
        after workers idled out). An idle worker exits when its long poll returns (within
        WAIT_SECONDS). Trigger runs still in flight can start a worker meanwhile: repeat
        until none runs.
        """
        ecs = self.client("ecs")
        cluster = self.outputs["ClusterName"]
        deadline = time.monotonic() + timeout

        def a_round_leaves_none_running() -> bool:
            self.wait_quiet(max(1.0, deadline - time.monotonic()))
            for arn in self.running_workers():
                ecs.stop_task(cluster=cluster, task=arn, reason="benchmark: cold start")
            wait_until(lambda: not self.worker_pids(), timeout, "worker processes to exit", 0.2)
            return not self.running_workers() and not self.worker_pids()

        what = "no worker to run (workers keep starting: is something still uploading?)"
        wait_until(a_round_leaves_none_running, timeout, what, 0)

    def wait_quiet(self, timeout: float) -> None:
        """No trigger run in progress and no message queued or in flight."""
        sqs = self.client("sqs")
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]

        def quiet() -> bool:
            if self.lambda_busy():
                return False
            attributes = sqs.get_queue_attributes(
                QueueUrl=self.outputs["JobQueueUrl"], AttributeNames=names
            )["Attributes"]
            return all(int(attributes.get(name, 0)) == 0 for name in names)

        wait_until(quiet, timeout, "the queue and the trigger to be idle", 0.2)

    def lambda_busy(self) -> bool:
        """Whether a Lambda invocation runs now: a START without its END in the functions'
        logs (warm runtime processes stay alive between invocations)."""
        logs = self.client("logs")
        started: set[str] = set()
        ended: set[str] = set()
        groups = logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]
        for group in groups:
            pages = logs.get_paginator("filter_log_events").paginate(
                logGroupName=group["logGroupName"]
            )
            for page in pages:
                for event in page["events"]:
                    kind, _, rest = event["message"].partition(" RequestId: ")
                    if kind in ("START", "END"):
                        (started if kind == "START" else ended).add(rest.split()[0])
        return bool(started - ended)

    def lambda_pids(self) -> list[int]:
        assert self.process is not None
        return [p.pid for p in self.process.tree() if _cmdline_has(p, "bootstrap.py")]

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return [
            p.pid
            for p in self.process.tree()
            if _cmdline_has(p, "-m service worker") or _cmdline_has(p, "service worker")
        ]

    def wait_no_workers(self, timeout: float) -> None:
        wait_until(lambda: not self.worker_pids(), timeout, "the workers to idle out", 0.2)

    def wait_workers(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: len(self.worker_pids()) >= count, timeout, f"{count} workers", 0.1)


def _cmdline_has(process: Any, text: str) -> bool:
    try:
        return text in " ".join(process.cmdline())
    except Exception:
        return False


def wait_object(s3: Any, bucket: str, key: str, timeout: float, interval: float = 0.02) -> float:
    """Poll HeadObject until the object exists; the monotonic time it was first seen."""
    from botocore.exceptions import ClientError

    def seen_at() -> float | None:
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                raise
            return None
        return time.monotonic()

    return wait_until(seen_at, timeout, f"s3://{bucket}/{key} to appear", interval)
