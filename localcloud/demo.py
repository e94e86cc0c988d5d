"""``python -m localcloud demo``: the whole product on a fresh clone, in one command.

Starts the local cloud (which trains and uploads the example model), uploads sample rows to
the input bucket, waits with a progress bar while the Lambda queues the file and an ECS
worker predicts it, then asks the endpoint about the same rows and prints both answers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import sys
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pandas as pd
from tqdm import tqdm

from localcloud.cloud import LocalCloud
from localcloud.console import Console
from localcloud.deploy import DeployedStack
from localcloud.settings import LocalCloudSettings
from localcloud.waiting import wait_until
from service.batch import OUTPUT_CONTENT_TYPES
from service.batch_contract import SUCCEEDED, report_key
from service.codecs import JSON, PARQUET, decode, encode_parquet
from service.files import file_format

# One key per run: the kept state may hold an earlier run's report.
DEMO_KEY = "demo/sample-{time:%Y%m%dT%H%M%S}.parquet"
SAMPLE_ROWS = 100
WAIT_SECONDS = 300.0
IDENTICAL = 1e-9
STAGES = ("uploaded", "queued", "worker running", "predictions written")


def _load_training_script(repo_root: Path) -> ModuleType:
    path = repo_root / "scripts" / "train_example.py"
    spec = importlib.util.spec_from_file_location("train_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_demo(settings: LocalCloudSettings, out: IO[str] | None = None, fresh: bool = False) -> int:
    """0 when the batch and the endpoint agree on every row, 1 otherwise."""
    out = out or sys.stdout
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = settings.state_dir / "demo.log"
    with log_path.open("w", encoding="utf-8") as log:
        cloud = LocalCloud(settings, Console(stream=log, color=False), fresh=fresh)
        signal.signal(signal.SIGTERM, _interrupt)
        print(f"starting the local cloud (log: {log_path})", file=out)
        try:
            stack = cloud.start()
            return _demo(cloud, stack, out)
        except KeyboardInterrupt:
            _say(out, "interrupted")
            return 130
        finally:
            _say(out, "stopping the local cloud")
            cloud.stop()


def _say(out: IO[str], text: str) -> None:
    """A line that may not be readable any more (`demo | head` closed the pipe): the cloud
    must stop all the same."""
    with contextlib.suppress(OSError, ValueError):
        print(text, file=out, flush=True)


def _interrupt(_number: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _demo(cloud: LocalCloud, stack: DeployedStack, out: IO[str]) -> int:
    outputs = stack.outputs
    print(f"stack {stack.name} deployed; model {outputs.get('ModelUri', '?')}", file=out)
    if not cloud.wait_endpoint(120):
        print("the endpoint did not become healthy; see the log", file=out)
        return 1
    rows = _load_training_script(cloud.settings.repo_root).sample_rows(SAMPLE_ROWS)
    body = encode_parquet(rows)
    s3 = cloud.session.client("s3")
    key = DEMO_KEY.format(time=datetime.now(UTC))
    s3.put_object(Bucket=outputs["InputBucketName"], Key=key, Body=body)
    print(f"uploaded {len(rows)} rows to s3://{outputs['InputBucketName']}/{key}", file=out)
    report = _wait_for_report(cloud, outputs, key, out)
    if report is None:
        print(f"no predictions after {WAIT_SECONDS:.0f} s; see the log", file=out)
        return 1
    if report.get("status") != SUCCEEDED:
        print(f"the batch job failed: {report.get('message')}", file=out)
        return 1
    batch = _read_output(s3, report)
    online = _ask_endpoint(outputs["EndpointUrl"], body)
    return _compare(batch, online, report, out)


def _wait_for_report(
    cloud: LocalCloud, outputs: dict[str, str], key: str, out: IO[str]
) -> dict[str, Any] | None:
    """Follow the file through the pipeline; the report marks the end."""
    s3 = cloud.session.client("s3")
    prefix = (cloud.stack.parameters if cloud.stack else {}).get("OutputPrefix") or "predictions"
    where = report_key(prefix, key)
    checks: list[Callable[[], bool]] = [
        lambda: _queue_touched(cloud, outputs["JobQueueUrl"]),
        lambda: _worker_running(cloud, outputs["ClusterName"]),
    ]
    with _Progress(out) as progress:

        def report() -> dict[str, Any] | None:
            try:
                document = s3.get_object(Bucket=outputs["OutputBucketName"], Key=where)
            except s3.exceptions.NoSuchKey:
                progress.reach(1 + sum(1 for check in checks if check()))
                return None
            progress.reach(len(STAGES))
            return json.loads(document["Body"].read())

        try:
            return wait_until(report, WAIT_SECONDS, "the predictions", interval=0.5)
        except TimeoutError:
            return None


class _Progress:
    """A progress bar on a terminal, one line per stage elsewhere (logs, CI)."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._tty = hasattr(out, "isatty") and out.isatty()
        self._bar = tqdm(
            total=len(STAGES),
            file=out,
            disable=not self._tty,
            bar_format="{desc:<22} {bar} {elapsed}",
        )
        self._stage = 0

    def __enter__(self) -> _Progress:
        self.reach(1)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._bar.close()

    def reach(self, stage: int) -> None:
        """Move forward to ``stage`` (1-based); never back."""
        if stage <= self._stage:
            return
        self._bar.update(stage - self._stage)
        self._bar.set_description_str(STAGES[stage - 1])
        self._stage = stage
        if not self._tty:
            print(f"  {STAGES[stage - 1]}", file=self._out)


def _queue_touched(cloud: LocalCloud, queue_url: str) -> bool:
    sqs = cloud.session.client("sqs")
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return any(int(attributes.get(name, 0)) for name in names)


def _worker_running(cloud: LocalCloud, cluster: str) -> bool:
    ecs = cloud.session.client("ecs")
    tasks = ecs.list_tasks(cluster=cluster, startedBy="batch-worker", desiredStatus="RUNNING")
    return bool(tasks["taskArns"])


def _read_output(s3: Any, report: dict[str, Any]) -> pd.DataFrame:
    key = report["output_key"]
    body = s3.get_object(Bucket=report["output_bucket"], Key=key)["Body"].read()
    fmt = file_format(key)
    return decode(body, OUTPUT_CONTENT_TYPES[fmt.name if fmt else "parquet"])


def _ask_endpoint(endpoint: str, body: bytes) -> pd.DataFrame:
    request = urllib.request.Request(  # noqa: S310 - the local endpoint, http on purpose
        f"{endpoint}/invocations",
        data=body,
        headers={"Content-Type": PARQUET, "Accept": JSON},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310  # nosec B310
        return pd.DataFrame(json.loads(response.read())["predictions"])


def _compare(
    batch: pd.DataFrame, online: pd.DataFrame, report: dict[str, Any], out: IO[str]
) -> int:
    merged = batch.merge(online, on="id", suffixes=(" (batch)", " (endpoint)"))
    left, right = merged.columns[1], merged.columns[2]
    worst = float((merged[left] - merged[right]).abs().max())
    print(f"\nfirst rows of s3://{report['output_bucket']}/{report['output_key']}", file=out)
    print(merged.head(10).to_string(index=False, float_format=lambda v: f"{v:.6f}"), file=out)
    agree = len(merged) == len(batch) == len(online) and worst <= IDENTICAL
    verdict = "identical" if agree else "DIFFERENT"
    print(
        f"\n{len(merged)} rows, model {report.get('model_name')} version "
        f"{report.get('model_version')}: batch and endpoint are {verdict} "
        f"(largest difference {worst:.2e})",
        file=out,
    )
    return 0 if agree else 1
