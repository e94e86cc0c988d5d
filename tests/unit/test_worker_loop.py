"""The worker's SQS/S3 adapter in process, against moto's in-memory AWS."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pandas as pd
import pytest
from botocore.exceptions import ClientError, ResponseStreamingError
from moto import mock_aws

from service import lease as lease_module
from service import transform as transform_module
from service import worker as worker_module
from service.artifacts import ModelStore
from service.errors import InvalidData
from service.files import FileFormat
from service.jsonlog import JsonFormatter
from service.lease import Heartbeat
from service.settings import WorkerSettings, load_settings
from service.transform import join_columns, transform_file
from service.worker import Worker
from tests.support import wait_for

REGION = "us-east-1"


class Env:
    """Buckets, a queue with a DLQ, and a worker bound to them, all in moto."""

    def __init__(self, bundle_dir: str, **settings: str) -> None:
        self.s3 = boto3.client("s3", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.s3.create_bucket(Bucket="input")
        self.s3.create_bucket(Bucket="output")
        dlq = self.sqs.create_queue(QueueName="jobs-dlq")["QueueUrl"]
        dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])
        redrive = {"deadLetterTargetArn": dlq_arn["Attributes"]["QueueArn"], "maxReceiveCount": "3"}
        self.queue_url = self.sqs.create_queue(
            QueueName="jobs", Attributes={"RedrivePolicy": json.dumps(redrive)}
        )["QueueUrl"]
        environ = {
            "MODEL_URI": bundle_dir,
            "JOB_QUEUE_URL": self.queue_url,
            "OUTPUT_BUCKET": "output",
            "IDLE_SECONDS": "0.5",
            "WAIT_SECONDS": "0",
            "VISIBILITY_SECONDS": "30",
            **settings,
        }
        self.settings = load_settings(WorkerSettings, environ)
        self.store = ModelStore(bundle_dir, 60)
        self.store.start()
        self.stopping = threading.Event()
        self.worker = Worker(self.settings, self.store, self.stopping)

    def upload(self, key: str, frame: pd.DataFrame | None = None, data: bytes | None = None) -> str:
        if data is None:
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            data = buffer.getvalue()
        etag = self.s3.put_object(Bucket="input", Key=key, Body=data)["ETag"].strip('"')
        self.send({"bucket": "input", "key": key, "etag": etag, "size": len(data)})
        return etag

    def send(self, body: dict[str, Any] | str) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)

    def receive(self) -> dict[str, Any]:
        return self.worker._receive(1)[0]

    def counts(self) -> tuple[int, int]:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        attrs = self.sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)
        return tuple(int(attrs["Attributes"][name]) for name in names)

    def report(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket="output", Key=f"predictions/_reports/{key}.json")
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body["Body"].read())

    def output(self, key: str) -> pd.DataFrame:
        body = self.s3.get_object(Bucket="output", Key=key)["Body"].read()
        return pd.read_parquet(io.BytesIO(body))

    def close(self) -> None:
        self.worker.close()
        self.store.stop()


@pytest.fixture
def moto_env(monkeypatch: pytest.MonkeyPatch, bundle_dir) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    created: list[Env] = []

    def make(**settings: str) -> Env:
        env = Env(str(bundle_dir), **settings)
        created.append(env)
        return env

    with mock_aws():
        yield make
        for env in created:
            env.close()


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The structured fields of every line the worker's modules log."""
    seen: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(dict(getattr(record, "fields", {})))

    logger = logging.getLogger("service.worker")
    collector = Collect()
    previous = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears the level cache
    logger.addHandler(collector)
    yield seen
    logger.removeHandler(collector)
    logger.setLevel(previous)


def test_run_processes_a_file_and_exits_when_idle(moto_env, sample_frame, bundle, events):
    env = moto_env()
    etag = env.upload("dir/rows.parquet", sample_frame)
    assert env.worker.run() == 0
    out_key = "predictions/model=example/version=1/dir/rows.parquet.parquet"
    head = env.s3.head_object(Bucket="output", Key=out_key)
    assert head["Metadata"] == {
        "input-etag": etag,
        "input-version-id": "",
        "model-name": "example",
        "model-version": "1",
        "rows": str(len(sample_frame)),
    }
    assert head["ContentType"] == "application/vnd.apache.parquet"
    assert env.report("dir/rows.parquet")["status"] == "succeeded"
    assert env.counts() == (0, 0)
    [line] = [e for e in events if e["event"] == "file"]
    assert line["status"] == "succeeded" and line["rows"] == len(sample_frame)
    assert line["output_key"] == out_key and line["seconds"] >= 0
    assert events[-1]["event"] == "worker_idle"


def test_missing_etag_is_read_from_the_object(moto_env, sample_frame):
    env = moto_env()
    etag = env.upload("a.parquet", sample_frame)
    env.send({"bucket": "input", "key": "a.parquet"})
    assert env.worker.run() == 0
    assert env.report("a.parquet")["input_etag"] == etag
    assert env.counts() == (0, 0)


def test_invalid_body_is_deleted_without_report(moto_env, events):
    env = moto_env()
    env.send("{not json")
    env.worker.handle(env.receive())
    assert env.counts() == (0, 0)
    assert [e["event"] for e in events] == ["invalid_message"]


def test_transient_error_leaves_the_message_for_a_retry_soon(moto_env, sample_frame, monkeypatch):
    env = moto_env()
    env.upload("slow.parquet", sample_frame)
    error = ClientError(
        {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "GetObject"
    )
    monkeypatch.setattr(
        env.worker.pipeline.files.s3, "get_object", lambda **kw: (_ for _ in ()).throw(error)
    )
    changes: list[int] = []
    original = lease_module.Lease.change
    monkeypatch.setattr(
        lease_module.Lease, "change", lambda self, s: changes.append(s) or original(self, s)
    )
    env.worker.handle(env.receive())
    assert changes == [5], "visibility reset to the first backoff step"
    assert env.counts() == (0, 1)
    assert env.report("slow.parquet") is None


def test_unknown_crash_keeps_the_message_and_reports(moto_env, sample_frame, monkeypatch, events):
    env = moto_env()
    env.upload("crash.parquet", sample_frame)

    def explode(bundle, frame):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(transform_module, "predict", explode)
    env.worker.handle(env.receive())
    assert env.counts() == (0, 1), "not deleted: it comes back after the visibility timeout"
    report = env.report("crash.parquet")
    assert report["status"] == "failed" and report["error"] == "internal_error"
    assert "model exploded" in report["message"]
    [line] = [e for e in events if e["event"] == "file"]
    assert line["status"] == "error" and "RuntimeError" in line["traceback"]


def test_failure_that_cannot_be_reported_is_not_deleted(moto_env, monkeypatch):
    env = moto_env()
    env.upload("bad.parquet", data=b"not parquet at all")
    monkeypatch.setattr(env.worker.pipeline.files, "put_report", lambda report: 1 / 0)
    env.worker.handle(env.receive())
    assert env.counts() == (0, 1)


def test_stale_etag_is_skipped_without_output_or_report(moto_env, sample_frame):
    env = moto_env()
    env.upload("changed.parquet", sample_frame)
    env.sqs.purge_queue(QueueUrl=env.queue_url)
    env.send({"bucket": "input", "key": "changed.parquet", "etag": "0" * 32})
    assert env.worker.run() == 0
    assert env.counts() == (0, 0)
    assert env.report("changed.parquet") is None


def test_stopping_hands_a_new_message_back_untouched(moto_env, sample_frame):
    env = moto_env()
    env.upload("later.parquet", sample_frame)
    message = env.receive()
    env.stopping.set()
    env.worker.handle(message)
    assert env.counts() == (1, 0)
    assert env.report("later.parquet") is None


def test_stop_during_the_file_aborts_and_releases(moto_env, sample_frame, monkeypatch):
    env = moto_env(BATCH_ROWS="10")
    env.upload("long.parquet", sample_frame)
    real_predict = transform_module.predict

    def predict_then_stop(bundle, frame):
        env.stopping.set()
        return real_predict(bundle, frame)

    monkeypatch.setattr(transform_module, "predict", predict_then_stop)
    env.worker.handle(env.receive())
    assert env.counts() == (1, 0), "visible again at once"
    assert env.s3.list_objects_v2(Bucket="output").get("KeyCount", 0) == 0


class FakeLease:
    def __init__(self) -> None:
        self.changes: list[int] = []
        self.released = 0

    def change(self, seconds: int) -> bool:
        self.changes.append(seconds)
        return True

    def release(self) -> None:
        self.released += 1


def test_heartbeat_extends_visibility_until_stopped():
    lease = FakeLease()
    with Heartbeat(lease, 1, threading.Event()) as beat:
        assert beat.interval == 0.5
        wait_for(lambda: len(lease.changes) >= 2, 5, "two visibility changes", 0.02)
    count = len(lease.changes)
    time.sleep(0.6)
    assert len(lease.changes) == count and set(lease.changes) == {1}
    assert lease.released == 0


def test_heartbeat_releases_the_message_at_once_on_stop():
    lease, stopping = FakeLease(), threading.Event()
    with Heartbeat(lease, 300, stopping):
        stopping.set()
        wait_for(lambda: lease.released == 1, 1, "the lease to be released", 0.02)
    assert lease.changes == []


def test_heartbeat_interval_is_a_third_of_the_visibility():
    assert Heartbeat(FakeLease(), 120, threading.Event()).interval == 40


def test_sigterm_sets_the_stop_event_and_handlers_are_restored():
    stopping = threading.Event()
    before = signal.getsignal(signal.SIGTERM)
    restore = lease_module.install_stop_handlers(stopping)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        wait_for(stopping.is_set, 2, "the stop event", 0.02)
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) == before


def test_no_model_exits_with_code_3(tmp_path, monkeypatch):
    environ = {
        "MODEL_URI": str(tmp_path / "nothing"),
        "MODEL_POLL_SECONDS": "0.1",
        "JOB_QUEUE_URL": "http://127.0.0.1:9/queue/none",
        "OUTPUT_BUCKET": "output",
        "IDLE_SECONDS": "0",
    }
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    started = time.monotonic()
    assert worker_module.run_worker(load_settings(WorkerSettings, environ)) == 3
    assert time.monotonic() - started < 5


def test_join_columns_appends_the_prediction_to_the_input(sample_frame, bundle):
    predictions = transform_module.predict(bundle, sample_frame)
    joined = join_columns(sample_frame, predictions, bundle)
    assert list(joined.columns) == [*sample_frame.columns, "activation"]
    assert joined["activation"].tolist() == predictions["activation"].tolist()
    clash = sample_frame.assign(activation="old")
    assert list(join_columns(clash, predictions, bundle).columns) == list(clash.columns)


def test_transform_file_streams_batches_and_rejects_zero_rows(tmp_path, sample_frame, bundle):
    source, target = tmp_path / "in.parquet", tmp_path / "out.csv"
    sample_frame.to_parquet(source, index=False)
    rows = transform_file(str(source), FileFormat("parquet"), str(target), bundle, "csv", 7)
    assert rows == len(sample_frame)
    written = pd.read_csv(target)
    expected = transform_module.predict(bundle, sample_frame)
    assert written["id"].tolist() == expected["id"].tolist()
    assert (written["activation"] - expected["activation"]).abs().max() < 1e-9

    sample_frame.head(0).to_parquet(source, index=False)
    with pytest.raises(InvalidData, match="no data rows"):
        transform_file(str(source), FileFormat("parquet"), str(target), bundle, "csv", 7)


def test_log_lines_are_json_with_the_event_fields():
    record = logging.LogRecord("service.worker", logging.INFO, __file__, 1, "file", (), None)
    record.fields = {"event": "file", "key": "ü.csv", "rows": 3}
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "file" and line["key"] == "ü.csv" and line["rows"] == 3
    assert line["level"] == "INFO" and line["time"].endswith("+00:00")


class BrokenBody:
    """A response body whose connection breaks after `after` bytes."""

    def __init__(self, body: Any, after: int) -> None:
        self.body = body
        self.left = after

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise ResponseStreamingError(error="connection reset by peer")
        data = self.body.read(min(size, self.left) if size >= 0 else self.left)
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.body.close()


def test_a_broken_input_stream_resumes_under_the_same_condition(
    moto_env, sample_frame, monkeypatch, events
):
    env = moto_env()
    etag = env.upload("resume.csv", data=sample_frame.to_csv(index=False).encode())
    real_get = env.worker.pipeline.files.s3.get_object
    calls: list[dict[str, Any]] = []

    def flaky_get(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        response = real_get(**kwargs)
        if len(calls) == 1:
            response["Body"] = BrokenBody(response["Body"], after=1000)
        return response

    monkeypatch.setattr(env.worker.pipeline.files.s3, "get_object", flaky_get)
    env.worker.handle(env.receive())
    report = env.report("resume.csv")
    assert report["status"] == "succeeded" and report["rows"] == len(sample_frame)
    assert [call.get("Range") for call in calls] == [None, "bytes=1000-"]
    assert {call["IfMatch"] for call in calls} == {f'"{etag}"'}
    assert [e["event"] for e in events].count("download_resumed") == 1


def test_waiting_for_a_model_ends_at_once_on_stop(tmp_path):
    store = ModelStore(str(tmp_path / "nothing"), poll_seconds=60)
    stopping = threading.Event()
    threading.Timer(0.2, stopping.set).start()
    started = time.monotonic()
    assert worker_module.wait_for_model(store, 30, stopping) is None
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("announced", [True, False])
def test_a_small_parquet_input_comes_in_one_get_when_its_size_is_announced(
    moto_env, sample_frame, monkeypatch, announced
):
    env = moto_env()
    etag = env.upload("small.parquet", sample_frame)
    if not announced:
        env.receive()  # the upload's message, with its size, is replaced by one without
        env.sqs.purge_queue(QueueUrl=env.queue_url)
        env.send({"bucket": "input", "key": "small.parquet", "etag": etag})
    real_get = env.worker.pipeline.files.s3.get_object
    calls: list[dict[str, Any]] = []

    def recorded_get(**kwargs: Any) -> dict[str, Any]:
        if kwargs["Bucket"] == "input":
            calls.append(kwargs)
        return real_get(**kwargs)

    monkeypatch.setattr(env.worker.pipeline.files.s3, "get_object", recorded_get)
    env.worker.handle(env.receive())
    assert env.report("small.parquet")["status"] == "succeeded"
    ranges = [call.get("Range") for call in calls]
    if announced:
        assert ranges == [None]
    else:
        assert ranges[0] == "bytes=-65536"  # the footer first, then the row groups
