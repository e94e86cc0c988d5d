"""The whole product on one local cloud, used the way a person uses it.

Files go in through S3 and predictions come out of S3; scaling is read from the ECS API;
the endpoint is plain HTTP. The tests share one ``python -m localcloud up`` and run in file
order: the model update is last, because it changes every later prediction.

The cloud runs infra/params/local.json with one change: FilesPerWorker=1. With the default of
5, and the local Lambda taking most of a second per event (a cold start each time), one
worker keeps up with 20 small files and MaxWorkers is never put to the test.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.artifacts import Bundle
from service.model import predict
from tests.e2e.batch_helpers import (
    WorkerWatch,
    assert_same_predictions,
    get_json,
    head,
    load_served_bundle,
    output_key,
    queue_counts,
    read_parquet,
    report_key,
    running,
    to_csv,
    to_jsonl,
    to_parquet,
    train_to_model_uri,
    wait_reports,
    wait_workers_stopped,
    worker_tasks,
)
from tests.e2e.cloud_process import (
    ENDPOINT_COMMAND,
    LocalCloudProcess,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

LOCAL_PARAMETERS = {"FilesPerWorker": "1"}

PARQUET = "application/vnd.apache.parquet"
JSON = "application/json"
BATCH_SECONDS = 180.0
STOP_SLACK_SECONDS = 30.0
BIG_ROWS = 400_000
IN_FLIGHT_BEFORE_STOP = 0.5


def _gzip_csv(frame: pd.DataFrame) -> bytes:
    return gzip.compress(to_csv(frame))


# input key -> (encoder, output key relative to model=<name>/version=<version>/): the whole
# input key plus .parquet (DESIGN.md, "Batch transform")
ODD_KEYS = {
    key: (encoder, key + ".parquet")
    for key, encoder in {
        "nested/deep/folder/rows with spaces.parquet": to_parquet,
        "unicode/données été ✓/résumé.csv": to_csv,
        "odd+keys/a=1/b+c.d.e.jsonl": to_jsonl,
        "many.dots/x.y.z.v1.2.parquet": to_parquet,
        "gz/rows + more=2.csv.gz": _gzip_csv,
    }.items()
}


def post(url: str, body: bytes, content_type: str, accept: str) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type, "Accept": accept}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.headers, response.read()


def records_json(frame: pd.DataFrame) -> bytes:
    """A plain JSON list of records, missing values as null."""
    lines = to_jsonl(frame).decode().splitlines()
    return ("[" + ",".join(lines) + "]").encode()


def ask_endpoint_json(cloud: LocalCloudProcess, frame: pd.DataFrame) -> tuple[Any, pd.DataFrame]:
    status, headers, body = post(f"{cloud.endpoint}/invocations", records_json(frame), JSON, JSON)
    assert status == 200
    return headers, pd.DataFrame(json.loads(body)["predictions"])


def upload(cloud: LocalCloudProcess, key: str, body: bytes) -> str:
    """Put one input file; its ETag without quotes."""
    response = cloud.client("s3").put_object(
        Bucket=cloud.outputs["InputBucketName"], Key=key, Body=body
    )
    return response["ETag"].strip('"')


def idle_deadline(cloud: LocalCloudProcess) -> float:
    return float(cloud.parameters["IdleSeconds"]) + STOP_SLACK_SECONDS


def test_endpoint_answers_ping_and_invocations(
    local_cloud: LocalCloudProcess, served_bundle: Bundle, train_example: ModuleType
) -> None:
    assert local_cloud.ping() == 200
    rows = train_example.sample_rows(50, seed=3)
    expected = predict(served_bundle, rows)

    headers, answered = ask_endpoint_json(local_cloud, rows)
    assert headers["X-Model-Version"] == served_bundle.version
    assert headers["X-Model-Name"] == served_bundle.name
    assert_same_predictions(answered, expected)

    status, headers, body = post(
        f"{local_cloud.endpoint}/invocations", to_parquet(rows), PARQUET, PARQUET
    )
    assert status == 200
    assert headers["Content-Type"].startswith(PARQUET)
    assert_same_predictions(pd.read_parquet(io.BytesIO(body)), expected)


def test_every_format_and_odd_keys_are_predicted_where_the_contract_says(
    local_cloud: LocalCloudProcess, served_bundle: Bundle, train_example: ModuleType
) -> None:
    frames: dict[str, pd.DataFrame] = {}
    etags: dict[str, str] = {}
    for number, (key, (encode, _)) in enumerate(ODD_KEYS.items()):
        frames[key] = train_example.sample_rows(40 + 7 * number, seed=10 + number)
        etags[key] = upload(local_cloud, key, encode(frames[key]))

    reports = wait_reports(local_cloud, list(ODD_KEYS), BATCH_SECONDS)

    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs["OutputBucketName"]
    for key, (_, relative) in ODD_KEYS.items():
        report, frame = reports[key], frames[key]
        expected_key = output_key(local_cloud, served_bundle, relative)
        assert report["status"] == "succeeded", report
        assert report["input_key"] == key
        assert report["rows"] == len(frame)
        assert report["model_version"] == served_bundle.version
        assert report["output_bucket"] == bucket
        assert report["output_key"] == expected_key
        assert report["input_etag"] == etags[key]
        metadata = head(s3, bucket, expected_key)
        assert metadata is not None, f"no output at s3://{bucket}/{expected_key}"
        assert metadata["Metadata"]["input-etag"] == etags[key]
        assert metadata["Metadata"]["rows"] == str(len(frame))
        assert_same_predictions(
            read_parquet(s3, bucket, expected_key), predict(served_bundle, frame)
        )


def test_corrupt_file_fails_with_a_reason_and_later_files_still_run(
    local_cloud: LocalCloudProcess, served_bundle: Bundle, train_example: ModuleType
) -> None:
    good = to_parquet(train_example.sample_rows(30))
    truncated = "corrupt/truncated.parquet"
    missing = "corrupt/missing columns.csv"
    kept = ["id", *served_bundle.columns[:3]]
    upload(local_cloud, truncated, good[: len(good) // 2])
    upload(local_cloud, missing, to_csv(train_example.sample_rows(10)[kept]))

    reports = wait_reports(local_cloud, [truncated, missing], BATCH_SECONDS)

    broken = reports[truncated]
    assert broken["status"] == "failed", broken
    assert truncated in broken["message"] and "parquet" in broken["message"], broken
    assert broken["output_key"] is None
    lacking = reports[missing]
    assert lacking["status"] == "failed", lacking
    assert "missing columns" in lacking["message"], lacking
    assert served_bundle.columns[len(kept) - 1] in lacking["message"], lacking

    after = "after-corrupt/rows.csv"
    frame = train_example.sample_rows(25, seed=5)
    upload(local_cloud, after, to_csv(frame))
    report = wait_reports(local_cloud, [after], BATCH_SECONDS)[after]
    assert report["status"] == "succeeded", report
    assert report["rows"] == len(frame)

    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs["OutputBucketName"]
    prefix = local_cloud.parameters["OutputPrefix"] + "/model="
    outputs = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
    assert not [key for key in outputs if "/corrupt/" in key], outputs


def test_twenty_files_at_once_never_exceed_max_workers_and_workers_stop_when_idle(
    local_cloud: LocalCloudProcess, served_bundle: Bundle, train_example: ModuleType
) -> None:
    max_workers = int(local_cloud.parameters["MaxWorkers"])
    keys = [f"burst/file {number:02d}.parquet" for number in range(20)]
    frames = {key: train_example.sample_rows(20 + n, seed=100 + n) for n, key in enumerate(keys)}

    with WorkerWatch(local_cloud) as watch:
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            list(pool.map(lambda key: upload(local_cloud, key, to_parquet(frames[key])), keys))
        reports = wait_reports(local_cloud, keys, BATCH_SECONDS)
        tasks = wait_workers_stopped(local_cloud, idle_deadline(local_cloud))

    print(
        f"burst: max RUNNING worker tasks {watch.max_running} (MaxWorkers {max_workers}), "
        f"max worker processes {watch.max_processes}, {len(watch.task_arns)} worker tasks, "
        f"{watch.samples} samples"
    )
    wanted = max(
        math.ceil(entry["backlog"] / int(local_cloud.parameters["FilesPerWorker"]))
        for entry in local_cloud.function_log()
        if entry.get("message") == "summary"
    )
    print(f"burst: the trigger wanted up to {wanted} workers")
    assert watch.errors == []
    assert watch.samples > 20
    assert wanted > max_workers, "the burst never asked for more workers than MaxWorkers"
    assert watch.max_running == max_workers
    assert watch.max_processes == max_workers
    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs["OutputBucketName"]
    for key in keys:
        assert reports[key]["status"] == "succeeded", reports[key]
        assert reports[key]["rows"] == len(frames[key])
        assert (
            head(s3, bucket, output_key(local_cloud, served_bundle, key + ".parquet")) is not None
        )
    burst_tasks = [task for task in tasks if task["taskArn"] in watch.task_arns]
    assert burst_tasks
    for task in burst_tasks:
        assert task["lastStatus"] == "STOPPED"
        assert task["stopCode"] == "EssentialContainerExited", task.get("stoppedReason")
        assert task["containers"][0]["exitCode"] == 0


def big_csv(train_example: ModuleType, rows: int) -> bytes:
    """A CSV large enough to keep a worker busy for seconds; built from a repeated block."""
    block_rows = 5_000
    block = to_csv(train_example.sample_rows(block_rows, seed=9))
    header, _, body = block.partition(b"\n")
    return header + b"\n" + body * (rows // block_rows)


def test_worker_stopped_in_the_middle_of_a_file_writes_it_once_after_rescale(
    local_cloud: LocalCloudProcess, served_bundle: Bundle, train_example: ModuleType
) -> None:
    wait_workers_stopped(local_cloud, idle_deadline(local_cloud))
    s3 = local_cloud.client("s3")
    ecs = local_cloud.client("ecs")
    bucket = local_cloud.outputs["OutputBucketName"]
    cluster = local_cloud.outputs["ClusterName"]
    key = "big/stop me mid-file.csv"
    out_key = output_key(local_cloud, served_bundle, "big/stop me mid-file.csv.parquet")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    try:
        upload(local_cloud, key, big_csv(train_example, BIG_ROWS))
        victim, stop_requested = stop_worker_mid_file(local_cloud, report_key(local_cloud, key))

        stopped = wait_for(
            lambda: _stopped(ecs, cluster, victim),
            60,
            "the stopped worker task to be STOPPED",
            context=local_cloud.log_tail,
        )
        assert stopped["stopCode"] == "UserInitiated"
        assert stopped["containers"][0]["exitCode"] == 0

        report = wait_reports(local_cloud, [key], BATCH_SECONDS)[key]
        assert report["status"] == "succeeded", report
        assert report["rows"] == BIG_ROWS
        assert report["output_key"] == out_key

        writes: set[tuple[str, str]] = set()

        def settled() -> bool:
            found = head(s3, bucket, out_key)
            if found is not None:
                writes.add((found["ETag"], found.get("VersionId", "")))
            return not [t for t in worker_tasks(local_cloud, ecs) if t["lastStatus"] != "STOPPED"]

        wait_for(settled, idle_deadline(local_cloud), "every worker to stop", interval=0.3)
        assert len(writes) == 1, writes

        tasks = worker_tasks(local_cloud, ecs)
        rescaled = [t for t in tasks if t.get("startedAt") and t["startedAt"] > stop_requested]
        assert rescaled, "no worker task was started after the stop"
        assert [
            entry
            for entry in local_cloud.function_log()
            if entry.get("message") == "summary"
            and entry.get("source") == "schedule"
            and entry["started"] >= 1
            and datetime.fromisoformat(entry["time"]) > stop_requested
        ], "the schedule rule's invocation did not start the replacement worker"

        versions = s3.list_object_versions(Bucket=bucket, Prefix=out_key).get("Versions", [])
        versions = [v for v in versions if v["Key"] == out_key]
        assert len(versions) == 1, versions
        assert versions[0]["LastModified"] >= stop_requested - timedelta(seconds=1)
        report_versions = s3.list_object_versions(
            Bucket=bucket, Prefix=report_key(local_cloud, key)
        ).get("Versions", [])
        assert len(report_versions) == 1, report_versions
        assert queue_counts(local_cloud) == (0, 0)
        assert queue_counts(local_cloud, "DeadLetterQueueUrl") == (0, 0)
    finally:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})


def stop_worker_mid_file(cloud: LocalCloudProcess, report: str) -> tuple[str, datetime]:
    """StopTask the one RUNNING worker once its message has been in flight for a moment."""
    s3 = cloud.client("s3")
    ecs = cloud.client("ecs")
    bucket = cloud.outputs["OutputBucketName"]
    in_flight_since: list[float] = []

    def busy_worker() -> str | None:
        if head(s3, bucket, report) is not None:
            raise AssertionError("the big file finished before its worker could be stopped")
        workers = running(worker_tasks(cloud, ecs))
        if len(workers) != 1 or queue_counts(cloud)[1] != 1:
            in_flight_since.clear()
            return None
        in_flight_since.append(time.monotonic())
        if in_flight_since[-1] - in_flight_since[0] < IN_FLIGHT_BEFORE_STOP:
            return None
        return str(workers[0]["taskArn"])

    def state() -> str:
        tasks = [(t["taskArn"][-8:], t["lastStatus"]) for t in worker_tasks(cloud, ecs)]
        counts = queue_counts(cloud)
        return f"queue (visible, in flight): {counts}; workers: {tasks}\n{cloud.log_tail()}"

    victim = wait_for(
        busy_worker, BATCH_SECONDS, "a worker busy with the big file", interval=0.05, context=state
    )
    requested = datetime.now(UTC)
    ecs.stop_task(cluster=cloud.outputs["ClusterName"], task=victim, reason="e2e: mid-file stop")
    return victim, requested


def _stopped(ecs: Any, cluster: str, arn: str) -> dict[str, Any] | None:
    task = ecs.describe_tasks(cluster=cluster, tasks=[arn])["tasks"][0]
    return task if task["lastStatus"] == "STOPPED" else None


def test_new_model_bundle_is_used_by_endpoint_and_batch_without_restart(
    local_cloud: LocalCloudProcess,
    served_bundle: Bundle,
    train_example: ModuleType,
) -> None:
    endpoint_before = {(p.pid, p.created) for p in local_cloud.processes(ENDPOINT_COMMAND)}
    assert len(endpoint_before) >= 2, endpoint_before
    wait_workers_stopped(local_cloud, idle_deadline(local_cloud))

    train_to_model_uri(local_cloud, "--version", "2", "--regularisation", "0.01")
    new = load_served_bundle(local_cloud)
    assert new.version == "2"
    rows = train_example.sample_rows(60, seed=21)
    expected = predict(new, rows)
    change = np.abs(expected["activation"] - predict(served_bundle, rows)["activation"]).max()
    assert change > 1e-3, "version 2 must predict differently for the test to mean anything"

    def answers_with_new_version() -> bool:
        return all(
            ask_endpoint_json(local_cloud, rows.head(5))[0]["X-Model-Version"] == new.version
            for _ in range(10)
        )

    wait_for(answers_with_new_version, 90, "the endpoint to serve version 2", interval=0.5)
    headers, answered = ask_endpoint_json(local_cloud, rows)
    assert headers["X-Model-Version"] == new.version
    assert_same_predictions(answered, expected)
    endpoint_after = {(p.pid, p.created) for p in local_cloud.processes(ENDPOINT_COMMAND)}
    assert endpoint_after == endpoint_before

    key = "after-update/rows.parquet"
    upload(local_cloud, key, to_parquet(rows))
    report = wait_reports(local_cloud, [key], BATCH_SECONDS)[key]
    out_key = output_key(local_cloud, new, "after-update/rows.parquet.parquet")
    assert "/version=2/" in out_key
    assert report["status"] == "succeeded", report
    assert report["model_version"] == "2"
    assert report["output_key"] == out_key
    s3 = local_cloud.client("s3")
    bucket = local_cloud.outputs["OutputBucketName"]
    assert_same_predictions(read_parquet(s3, bucket, out_key), expected)
    assert get_json(s3, bucket, report_key(local_cloud, key)) == report
