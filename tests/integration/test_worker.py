"""The batch worker as it runs in a task: `python -m service worker` against a real moto server.

Every wait is a condition with a deadline; every worker process and the server are stopped
by fixtures.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from service.model import predict
from tests import worker_fixtures
from tests.worker_fixtures import (
    REPO,
    Cloud,
    Stack,
    WorkerProcess,
    encode_frame,
    local_bundle,
    sample_rows,
    wait_for,
)

cloud = worker_fixtures.cloud
model_uri = worker_fixtures.model_uri
stack = worker_fixtures.stack
start_worker = worker_fixtures.start_worker

INPUT_KEYS = (
    "formats/a.parquet",
    "formats/b.c.csv",
    "formats/d e.csv.gz",
    "formats/f+g=h.jsonl",
    "formats/ü/i.jsonl.gz",
)
# Deadlines, not waits: a worker's start (imports, model load) takes seconds alone and can
# take tens of seconds with another test's processes on the same two cores.
START_TIMEOUT = 90
# The shortest visibility the heartbeat tests use: the heartbeat renews it every third of
# it, so a renewal may come up to two thirds of it late before another worker sees the
# message.
SHORT_VISIBILITY = 3


@pytest.fixture(scope="module")
def served_bundle(cloud: Cloud, model_uri: str, tmp_path_factory: pytest.TempPathFactory):
    return local_bundle(cloud, model_uri, tmp_path_factory.mktemp("bundle"))


def assert_predictions(output: pd.DataFrame, frame: pd.DataFrame, bundle) -> None:
    expected = predict(bundle, frame).sort_values("id").reset_index(drop=True)
    got = output.sort_values("id").reset_index(drop=True)
    assert got["id"].astype("int64").tolist() == expected["id"].astype("int64").tolist()
    np.testing.assert_allclose(got["activation"], expected["activation"], rtol=0, atol=1e-9)


def test_every_input_format_to_every_output_format(cloud, model_uri, served_bundle, start_worker):
    frame = sample_rows(300, seed=7)
    runs = []
    for output_format, join in (("parquet", False), ("csv", False), ("jsonl", True)):
        run = Stack(cloud, model_uri).create()
        for key in INPUT_KEYS:
            run.put(key, encode_frame(frame, key))
            run.send(key)
        env = run.worker_env(
            OUTPUT_FORMAT=output_format,
            JOIN_INPUT=str(join).lower(),
            IDLE_SECONDS=1,
            BATCH_ROWS=128,
        )
        runs.append((run, output_format, join, start_worker(env)))

    for run, output_format, join, worker in runs:
        assert worker.wait(START_TIMEOUT) == 0, worker.log_text()
        assert run.queue_empty()
        for key in INPUT_KEYS:
            report = run.report(key)
            assert report is not None and report["status"] == "succeeded", (key, report)
            out_key = run.output_key(key, output_format)
            assert report["output_key"] == out_key
            assert report["rows"] == len(frame)
            head = cloud.head(run.output_bucket, out_key)
            assert head is not None, out_key
            assert head["Metadata"]["input-etag"] == report["input_etag"]
            assert head["Metadata"]["model-version"] == "1"
            assert head["Metadata"]["rows"] == str(len(frame))
            output = run.read_output(out_key, output_format)
            assert_predictions(output, frame, served_bundle)
            if join:
                assert sorted(output.columns) == sorted([*frame.columns, "activation"])
                joined = output.sort_values("id")[list(frame.columns)].reset_index(drop=True)
                np.testing.assert_allclose(joined, frame, rtol=0, atol=1e-12)
            else:
                assert list(output.columns) == ["id", "activation"]
        files = worker.files("succeeded")
        assert {f["key"] for f in files} == set(INPUT_KEYS)
        assert all(f["rows"] == len(frame) and f["seconds"] >= 0 for f in files)


def test_duplicate_message_writes_nothing_new(cloud, stack, start_worker):
    key = "dup/data.parquet"
    stack.put(key, encode_frame(sample_rows(50), key))
    body = stack.send(key)
    worker = start_worker(stack.worker_env(IDLE_SECONDS=10))
    out_key = stack.output_key(key)
    wait_for(lambda: worker.files("succeeded"), START_TIMEOUT, "the first output")
    first_head = cloud.head(stack.output_bucket, out_key)
    first_report = stack.report(key)

    stack.send_raw(json.dumps(body))
    stack.send_raw(json.dumps(body))
    wait_for(lambda: len(worker.files("skipped")) == 2, 15, "both duplicates to be skipped")
    wait_for(stack.queue_empty, 5, "the duplicates to be deleted")

    again = cloud.head(stack.output_bucket, out_key)
    assert (again["ETag"], again["LastModified"]) == (
        first_head["ETag"],
        first_head["LastModified"],
    )
    assert stack.report(key) == first_report
    assert len(worker.files("succeeded")) == 1
    assert cloud.keys(stack.output_bucket, f"{stack.prefix}/model=") == [out_key]


POISON = {
    "poison/truncated.parquet": lambda good: good[: len(good) // 2],
    "poison/empty.csv": lambda good: b"",
    "poison/header-only.csv": lambda good: b"id,mean_radius\n",
    "poison/no-features.csv": lambda good: b"id,colour\n1,red\n",
    "poison/words.jsonl": lambda good: b'{"id": 1, "mean_radius": "large"}\n',
    "poison/not-gzip.csv.gz": lambda good: b"id,mean_radius\n1,2\n",
}
UNSUPPORTED = "poison/notes.txt"


def test_poison_files_fail_with_a_reason_and_the_next_file_is_processed(
    cloud, stack, start_worker, tmp_path
):
    good = encode_frame(sample_rows(20), "x.parquet")
    for key, make in POISON.items():
        stack.put(key, make(good))
        stack.send(key)
    stack.put(UNSUPPORTED, b"hello")
    stack.send(UNSUPPORTED)
    stack.put("poison/gone.parquet", good)
    stack.send("poison/gone.parquet")
    cloud.s3.delete_object(Bucket=stack.input_bucket, Key="poison/gone.parquet")
    stack.put("poison/replaced.parquet", good)
    stack.send("poison/replaced.parquet", etag="0" * 32)
    stack.send_raw("this is not a job")
    stack.send_raw(json.dumps({"bucket": stack.input_bucket}))
    stack.put("after/good.parquet", good)
    stack.send("after/good.parquet")

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    worker = start_worker(stack.worker_env(TMPDIR=scratch))
    assert worker.wait(START_TIMEOUT) == 0, worker.log_text()
    assert stack.queue_empty()
    assert stack.dlq_bodies() == []
    assert stack.report("after/good.parquet")["status"] == "succeeded"
    assert list(scratch.iterdir()) == [], "temp files left behind"
    attempts = [f["key"] for f in worker.files()]
    assert sorted(attempts) == sorted(
        [
            *POISON,
            UNSUPPORTED,
            "poison/gone.parquet",
            "poison/replaced.parquet",
            "after/good.parquet",
        ]
    ), "each message is handled once"

    reasons = {key: stack.report(key) for key in [*POISON, "poison/gone.parquet"]}
    for key, report in reasons.items():
        assert report is not None and report["status"] == "failed", (key, report)
        assert report["message"] and key in report["message"], report
        assert report["output_key"] is None
    assert "missing columns" in reasons["poison/no-features.csv"]["message"]
    assert "mean_radius" in reasons["poison/words.jsonl"]["message"]
    assert "no" in reasons["poison/header-only.csv"]["message"]
    skipped = stack.report(UNSUPPORTED)
    assert (skipped["status"], skipped["error"]) == ("skipped", "unsupported_name")
    assert ".csv.gz" in skipped["message"] and ".parquet" in skipped["message"]
    assert reasons["poison/gone.parquet"]["error"] == "input_gone"
    assert stack.report("poison/replaced.parquet") is None, "a stale event must not report"
    assert len(worker.events("invalid_message")) == 2
    assert cloud.keys(stack.output_bucket, f"{stack.prefix}/model=") == [
        stack.output_key("after/good.parquet")
    ]


def test_message_that_always_crashes_ends_in_the_dead_letter_queue(cloud, stack, start_worker):
    """An archived object cannot be read (InvalidObjectState): not the input's fault, so the
    message is retried and, after maxReceiveCount (3) receives, moved to the DLQ."""
    good = encode_frame(sample_rows(20), "x.parquet")
    stack.put("cold/archived.parquet", good, StorageClass="GLACIER")
    stack.send("cold/archived.parquet")
    stack.put("warm/fine.parquet", good)
    stack.send("warm/fine.parquet")
    worker = start_worker(stack.worker_env(IDLE_SECONDS=30, VISIBILITY_SECONDS=1))

    dead = wait_for(stack.dlq_bodies, 30, "the message in the dead-letter queue")
    assert [body["key"] for body in dead] == ["cold/archived.parquet"]
    wait_for(stack.queue_empty, 5, "the job queue to be empty")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0, worker.log_text()
    crashes = [f for f in worker.files("error") if f["key"] == "cold/archived.parquet"]
    assert [f["receives"] for f in crashes] == [1, 2, 3]
    assert "InvalidObjectState" in crashes[0]["reason"]
    assert stack.report("warm/fine.parquet")["status"] == "succeeded"
    report = stack.report("cold/archived.parquet")
    assert report["status"] == "failed" and report["error"] == "internal_error"


def big_input(stack: Stack, key: str, rows: int) -> int:
    stack.put(key, encode_frame(sample_rows(rows, seed=3), key))
    stack.send(key)
    return rows


def ready(worker: WorkerProcess) -> bool:
    return bool(worker.events("worker_started"))


def test_worker_killed_mid_file_output_written_once_after_redelivery(cloud, stack, start_worker):
    """After SIGKILL the message comes back when its visibility runs out. Two workers then
    compete for it: the heartbeat keeps it from the second one although the file takes
    several visibility periods (BATCH_ROWS 50: about 19 s alone), so it is processed once."""
    key = "big/killed.parquet"
    rows = big_input(stack, key, 200_000)
    first = start_worker(stack.worker_env(BATCH_ROWS=20, VISIBILITY_SECONDS=SHORT_VISIBILITY))
    wait_for(lambda: first.events("file_started"), START_TIMEOUT, "the first worker to start")
    slow = {"BATCH_ROWS": 50, "VISIBILITY_SECONDS": SHORT_VISIBILITY, "IDLE_SECONDS": 60}
    others = [start_worker(stack.worker_env(**slow)) for _ in range(2)]
    wait_for(lambda: all(map(ready, others)), START_TIMEOUT, "two more workers polling")
    first.signal(signal.SIGKILL)
    first.wait(10)
    assert cloud.head(stack.output_bucket, stack.output_key(key)) is None, "file finished too soon"

    wait_for(lambda: any(w.files() for w in others), 60, "the file to be done")
    wait_for(stack.queue_empty, 30, "its message to be deleted")
    for worker in others:
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0, worker.log_text()
    [done] = [line for worker in others for line in worker.files()]
    assert done["status"] == "succeeded" and done["receives"] >= 2
    assert done["seconds"] > 2 * SHORT_VISIBILITY, "the file must outlast its visibility twice"
    head = cloud.head(stack.output_bucket, stack.output_key(key))
    assert head["Metadata"]["rows"] == str(rows)
    assert stack.report(key)["rows"] == rows
    assert cloud.keys(stack.output_bucket, f"{stack.prefix}/model=") == [stack.output_key(key)]
    assert len(stack.read_output(stack.output_key(key), "parquet")) == rows


def test_sigterm_mid_file_exits_zero_and_hands_the_message_back(
    cloud, stack, start_worker, tmp_path
):
    """The stopped worker makes the message visible at once (its visibility is 60 s), so a
    worker already polling takes it within seconds."""
    key = "big/stopped.parquet"
    rows = big_input(stack, key, 200_000)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    first = start_worker(stack.worker_env(BATCH_ROWS=20, VISIBILITY_SECONDS=60, TMPDIR=scratch))
    wait_for(lambda: first.events("file_started"), START_TIMEOUT, "the first worker to start")
    second = start_worker(stack.worker_env(IDLE_SECONDS=1, VISIBILITY_SECONDS=60))
    wait_for(lambda: ready(second), START_TIMEOUT, "a second worker polling")

    stopped_at = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0, first.log_text()
    wait_for(lambda: second.events("file_started"), 15, "the second worker to take the message")
    assert time.monotonic() - stopped_at < 20, "long before the 60 s visibility"
    assert not first.files("succeeded")
    assert [f["status"] for f in first.files()] == ["aborted"]
    assert list(scratch.iterdir()) == [], "temp files left behind"

    assert second.wait(60) == 0, second.log_text()
    assert [f["status"] for f in second.files()] == ["succeeded"]
    assert stack.report(key)["rows"] == rows


def test_idle_worker_exits_zero(stack, start_worker):
    worker = start_worker(stack.worker_env(IDLE_SECONDS=1))
    assert worker.wait(START_TIMEOUT) == 0
    assert worker.events("worker_idle")


def test_sigterm_while_idle_exits_when_the_long_poll_returns(stack, start_worker):
    worker = start_worker(stack.worker_env(IDLE_SECONDS=60, WAIT_SECONDS=2))
    wait_for(lambda: worker.events("worker_started"), START_TIMEOUT, "the worker to start")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - started < 2 + 5, "an idle worker outlived its 2 s long poll"
    assert worker.events("worker_stopped")


def test_a_message_that_arrives_during_the_last_long_poll_is_handed_back(stack, start_worker):
    """The worker's last long poll receives the message sent just after SIGTERM: it must make
    it visible again at once, not abandon the request (which would hide the message for the
    120 s visibility timeout)."""
    worker = start_worker(
        stack.worker_env(IDLE_SECONDS=60, WAIT_SECONDS=20, VISIBILITY_SECONDS=120)
    )
    wait_for(lambda: worker.events("worker_started"), START_TIMEOUT, "the worker to start")
    time.sleep(0.5)  # into the long poll; the assertions below hold either way
    key = f"arrives-while-stopping-{time.time_ns()}.parquet"
    stack.put(key, encode_frame(sample_rows(3), key))
    worker.signal(signal.SIGTERM)
    stack.send(key)
    assert worker.wait(30) == 0, worker.log_text()
    assert not worker.files(), "a stopping worker must not start a file"

    def received() -> dict | None:
        response = stack.cloud.sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
        )
        for message in response.get("Messages", []):
            stack.cloud.sqs.delete_message(
                QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"]
            )
            if json.loads(message["Body"])["key"] == key:
                return message
        return None

    wait_for(received, 10, "the message to be visible again")


def test_no_model_takes_no_message_and_exits_non_zero(cloud, stack, start_worker):
    stack.put("waiting.parquet", encode_frame(sample_rows(5), "x.parquet"))
    stack.send("waiting.parquet")
    missing = f"s3://{stack.output_bucket}/no/model/here/"
    worker = start_worker(stack.worker_env(MODEL_URI=missing, IDLE_SECONDS=1))
    assert worker.wait(START_TIMEOUT) == 3
    [line] = worker.events("no_model")
    assert line["model_uri"] == missing and line["reason"]
    assert cloud.queue_attributes(stack.queue_url)["ApproximateNumberOfMessages"] == 1


def test_new_bundle_at_the_same_uri_is_used_for_the_next_file(cloud, stack, start_worker):
    bucket, _, prefix = stack.model_uri.removeprefix("s3://").partition("/")
    own_prefix = f"swap/{time.time_ns()}/"
    for key in cloud.keys(bucket, prefix):
        source = {"Bucket": bucket, "Key": key}
        cloud.s3.copy_object(Bucket=bucket, Key=own_prefix + key[len(prefix) :], CopySource=source)
    uri = f"s3://{bucket}/{own_prefix}"
    data = encode_frame(sample_rows(10), "x.parquet")
    stack.put("swap/one.parquet", data)
    stack.send("swap/one.parquet")
    worker = start_worker(stack.worker_env(MODEL_URI=uri, MODEL_POLL_SECONDS=0.5, IDLE_SECONDS=15))
    wait_for(lambda: worker.files("succeeded"), START_TIMEOUT, "the first file")

    manifest = cloud.read_json(bucket, own_prefix + "manifest.json")
    manifest["version"] = "2"
    cloud.s3.put_object(Bucket=bucket, Key=own_prefix + "manifest.json", Body=json.dumps(manifest))
    wait_for(
        lambda: any("version 2 loaded" in e.get("message", "") for e in worker.events()),
        15,
        "the worker to load version 2",
    )
    stack.put("swap/two.parquet", data)
    stack.send("swap/two.parquet")
    stack.send("swap/one.parquet")
    wait_for(lambda: len(worker.files("succeeded")) == 3, 15, "both files under version 2")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert sorted(cloud.keys(stack.output_bucket, f"{stack.prefix}/model=")) == [
        stack.output_key("swap/one.parquet", version="1"),
        stack.output_key("swap/one.parquet", version="2"),
        stack.output_key("swap/two.parquet", version="2"),
    ]
    assert stack.report("swap/two.parquet")["model_version"] == "2"


def test_jobs_script_shows_each_file_state_from_the_stack(cloud, model_uri, start_worker):
    """scripts/jobs.py against the server through AWS_ENDPOINT_URL, after a worker ran."""
    name = f"jobs-{time.time_ns()}"
    suffix = name.split("-")[1]
    template = {
        "Resources": {
            "In": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": f"in-{suffix}"}},
            "Out": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": f"out-{suffix}"}},
            "Dlq": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"dlq-{suffix}"}},
            "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"q-{suffix}"}},
        },
        "Outputs": {
            "InputBucketName": {"Value": {"Ref": "In"}},
            "OutputBucketName": {"Value": {"Ref": "Out"}},
            "JobQueueUrl": {"Value": {"Ref": "Queue"}},
            "DeadLetterQueueUrl": {"Value": {"Ref": "Dlq"}},
        },
    }
    cloud.cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(template))
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in cloud.cloudformation.describe_stacks(StackName=name)["Stacks"][0]["Outputs"]
    }
    stack = Stack(
        cloud,
        model_uri,
        input_bucket=outputs["InputBucketName"],
        output_bucket=outputs["OutputBucketName"],
        queue_url=outputs["JobQueueUrl"],
        dlq_url=outputs["DeadLetterQueueUrl"],
    )
    stack.put("ok.parquet", encode_frame(sample_rows(12), "x.parquet"))
    stack.send("ok.parquet")
    stack.put("bad.csv", b"id,colour\n1,red\n")
    stack.send("bad.csv")
    worker = start_worker(stack.worker_env(IDLE_SECONDS=1))
    assert worker.wait(START_TIMEOUT) == 0, worker.log_text()
    stack.put("later.jsonl", encode_frame(sample_rows(3), "x.jsonl"))
    stack.send("later.jsonl")

    command = [sys.executable, "scripts/jobs.py", "--stack", name, "--json"]
    done = subprocess.run(
        command, cwd=REPO, env=cloud.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    files = {row["key"]: row for row in document["files"]}
    assert {key: row["state"] for key, row in files.items()} == {
        "ok.parquet": "succeeded",
        "bad.csv": "failed",
        "later.jsonl": "queued",
    }
    assert files["ok.parquet"]["rows"] == 12 and files["ok.parquet"]["model_version"] == "1"
    assert "missing columns" in files["bad.csv"]["message"]
    assert document["queue"] == {"visible": 1, "in_flight": 0, "dead_letters": 0}

    table = subprocess.run(
        [sys.executable, "scripts/jobs.py", "--stack", name],
        cwd=REPO,
        env=cloud.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0 and "1 queued, 1 failed, 1 succeeded" in table.stdout
