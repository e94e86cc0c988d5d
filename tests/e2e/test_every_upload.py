"""Every upload accounted for, through the whole local cloud (``python -m localcloud up``).

The cloud runs with the AWS example's TriggerSuffixes (no ``.gz`` suffix listed) and
Lambda's asynchronous retry delays scaled to 3 s and 6 s: same-stem inputs in every format
each get their own output, an unsupported name gets a ``skipped`` report that jobs.py shows,
an event whose every invocation fails reaches the on-failure queue and the next scheduled
run processes its file, and a failing RunTask never queues an object twice.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from infra.template import PARAMS_DIR, load_parameter_file
from service.artifacts import Bundle
from service.model import predict
from tests.e2e.batch_helpers import (
    assert_same_predictions,
    load_served_bundle,
    output_key,
    queue_counts,
    read_parquet,
    to_csv,
    to_jsonl,
    to_parquet,
    wait_reports,
    wait_workers_stopped,
)
from tests.e2e.cloud_process import REPO_ROOT, LocalCloudProcess, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PARAMETERS = {
    "TriggerSuffixes": load_parameter_file(PARAMS_DIR / "aws.example.json")["TriggerSuffixes"],
    "FilesPerWorker": "1",
}
RETRY_SCALE = "0.05"  # Lambda's retries after 3 s and 6 s instead of 60 s and 120 s
BATCH_SECONDS = 180.0
IDLE_SLACK = 30.0
FAILURES = "TriggerFailureQueueUrl"

ENCODERS: dict[str, Callable[[pd.DataFrame], bytes]] = {
    "rows.csv": to_csv,
    "ROWS.CSV": to_csv,
    "rows.csv.gz": lambda frame: gzip.compress(to_csv(frame)),
    "rows.jsonl": to_jsonl,
    "rows.jsonl.gz": lambda frame: gzip.compress(to_jsonl(frame)),
    "rows.parquet": to_parquet,
}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloudProcess]:
    process = LocalCloudProcess(
        tmp_path_factory.mktemp("every-upload"),
        PARAMETERS,
        extra_args=["--retry-scale", RETRY_SCALE],
    )
    try:
        process.start()
        process.wait_ready()
        yield process
        process.terminate()
        code = process.wait_exit()
        process.assert_nothing_left()
        assert code == 0, f"localcloud up exited with {code}:\n{process.log_tail()}"
    finally:
        process.kill_everything()


@pytest.fixture(scope="module")
def bundle(cloud: LocalCloudProcess) -> Bundle:
    return load_served_bundle(cloud)


def upload(cloud: LocalCloudProcess, key: str, body: bytes) -> None:
    cloud.client("s3").put_object(Bucket=cloud.outputs["InputBucketName"], Key=key, Body=body)


def set_function_environment(cloud: LocalCloudProcess, **changes: str) -> dict[str, str]:
    """Change the trigger's environment; returns the previous one (to restore it)."""
    client = cloud.client("lambda")
    name = cloud.outputs["FunctionName"]
    before = client.get_function_configuration(FunctionName=name)["Environment"]["Variables"]
    client.update_function_configuration(
        FunctionName=name, Environment={"Variables": {**before, **changes}}
    )
    return before


def restore_function_environment(cloud: LocalCloudProcess, variables: dict[str, str]) -> None:
    cloud.client("lambda").update_function_configuration(
        FunctionName=cloud.outputs["FunctionName"], Environment={"Variables": variables}
    )


def jobs_table(cloud: LocalCloudProcess) -> dict[str, dict[str, Any]]:
    """scripts/jobs.py --json, run as a user runs it against the local cloud."""
    finished = subprocess.run(
        [sys.executable, "scripts/jobs.py", "--json", "--since", "1h"],
        cwd=REPO_ROOT,
        env=cloud.user_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {row["key"]: row for row in json.loads(finished.stdout)["files"]}


def test_same_stem_inputs_get_one_output_each_and_other_names_a_skipped_report(
    cloud: LocalCloudProcess, bundle: Bundle, train_example: ModuleType
) -> None:
    frames = {
        f"stem/{name}": train_example.sample_rows(30 + 11 * n, seed=40 + n)
        for n, name in enumerate(ENCODERS)
    }
    for key, frame in frames.items():
        upload(cloud, key, ENCODERS[key.split("/")[-1]](frame))
    upload(cloud, "stem/notes.txt", b"not a batch file")

    reports = wait_reports(cloud, [*frames, "stem/notes.txt"], BATCH_SECONDS)

    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    for key, frame in frames.items():
        assert reports[key]["status"] == "succeeded", reports[key]
        assert reports[key]["rows"] == len(frame)
        out = output_key(cloud, bundle, key + ".parquet")
        assert reports[key]["output_key"] == out
        assert_same_predictions(read_parquet(s3, bucket, out), predict(bundle, frame))
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=output_key(cloud, bundle, "stem/"))
    assert sorted(item["Key"] for item in listed["Contents"]) == sorted(
        output_key(cloud, bundle, key + ".parquet") for key in frames
    ), "one distinct output per input"
    skipped = reports["stem/notes.txt"]
    assert (skipped["status"], skipped["error"]) == ("skipped", "unsupported_name")
    assert ".csv.gz" in skipped["message"]
    table = jobs_table(cloud)
    assert table["stem/notes.txt"]["state"] == "skipped"
    assert "s3://" not in table["stem/notes.txt"]["message"]
    assert {table[key]["state"] for key in frames} == {"succeeded"}


def test_an_event_whose_invocations_all_fail_is_redriven_by_the_next_scheduled_run(
    cloud: LocalCloudProcess, bundle: Bundle, train_example: ModuleType
) -> None:
    """Both queues unreachable: the trigger raises, Lambda retries twice, then sends the
    event to the on-failure queue; with the queues back, a scheduled run redrives it."""
    job_queue = cloud.outputs["JobQueueUrl"]
    before = set_function_environment(
        cloud,
        JOB_QUEUE_URL=job_queue + "-unreachable",
        FAILURE_QUEUE_URL=cloud.outputs[FAILURES] + "-unreachable",
    )
    frame = train_example.sample_rows(25, seed=77)
    try:
        upload(cloud, "outage/rows.csv", to_csv(frame))
        wait_for(
            lambda: queue_counts(cloud, FAILURES)[0] >= 1,
            60,
            "the event on the on-failure queue",
            interval=0.5,
            context=cloud.log_tail,
        )
    finally:
        restore_function_environment(cloud, before)

    report = wait_reports(cloud, ["outage/rows.csv"], BATCH_SECONDS)["outage/rows.csv"]

    assert report["status"] == "succeeded" and report["rows"] == len(frame), report
    log = cloud.log_path.read_text(encoding="utf-8", errors="replace")
    assert "trigger-failures (RetriesExhausted)" in log, "the record came from Lambda's destination"
    wait_for(lambda: queue_counts(cloud, FAILURES) == (0, 0), 30, "an empty failure queue")
    out = output_key(cloud, bundle, "outage/rows.csv.parquet")
    assert_same_predictions(
        read_parquet(cloud.client("s3"), cloud.outputs["OutputBucketName"], out),
        predict(bundle, frame),
    )


def test_run_task_failing_never_queues_an_object_twice(
    cloud: LocalCloudProcess, train_example: ModuleType
) -> None:
    wait_workers_stopped(cloud, float(cloud.parameters["IdleSeconds"]) + IDLE_SLACK)
    keys = [f"no-capacity/{n}.parquet" for n in range(3)]
    before = set_function_environment(cloud, TASK_DEFINITION="no-such-task-definition")
    try:
        for n, key in enumerate(keys):
            upload(cloud, key, to_parquet(train_example.sample_rows(10 + n, seed=90 + n)))
        wait_for(
            lambda: queued_lines(cloud, keys) == Counter(keys),
            60,
            "one queued line per object",
            interval=0.5,
            context=cloud.log_tail,
        )
        failed = [e for e in cloud.function_log() if e.get("event") == "summary"]
        assert any(e.get("scale_failed") == 1 and e.get("queued") for e in failed)
        assert sum(queue_counts(cloud)) == len(keys)
    finally:
        restore_function_environment(cloud, before)

    reports = wait_reports(cloud, keys, BATCH_SECONDS)

    assert {reports[key]["status"] for key in keys} == {"succeeded"}
    assert queued_lines(cloud, keys) == Counter(keys), "no retry queued an object again"


def queued_lines(cloud: LocalCloudProcess, keys: list[str]) -> Counter[str]:
    return Counter(
        entry["key"]
        for entry in cloud.function_log()
        if entry.get("event") == "queued" and entry.get("key") in keys
    )
