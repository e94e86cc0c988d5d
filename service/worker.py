"""Batch worker: drain the job queue, one input file at a time, until idle or stopped.

This module only moves bytes between SQS, S3 and local temp files; the decisions (output
key, "already done", what a failure means for the message, the report) live in
``service.batch``, and prediction is the shared ``service.model.predict``.

Per message: parse -> skip if the output for this input ETag and model version exists ->
download (If-Match the event's ETag) -> predict in row batches -> upload (multipart, so the
output appears whole or not at all) -> report -> delete. A heartbeat thread keeps the message
invisible meanwhile and, on SIGTERM, hands it back to the queue at once.

Exit codes: 0 after IDLE_SECONDS without a message or on SIGTERM (an idle worker notices it
within WAIT_SECONDS, the long poll), 3 when no model bundle loads in time, 4 when the queue
stayed unreachable for IDLE_SECONDS.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from s3transfer.manager import TransferConfig
from threadpoolctl import ThreadpoolController

from service import batch
from service.artifacts import Bundle, ModelStore
from service.batch import Action, JobMessage, Report
from service.errors import InvalidData, UnsupportedMediaType
from service.files import BatchWriter, file_format, iter_batches
from service.model import predict
from service.settings import WorkerSettings
from service.threads import read_ahead

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NO_MODEL = 3
EXIT_QUEUE_UNREACHABLE = 4

MB = 1024 * 1024
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=16 * MB,
    multipart_chunksize=16 * MB,
    max_request_concurrency=8,
    io_chunksize=MB,
)
RETRY_CONFIG = {"mode": "standard", "max_attempts": 5}
STOP_CHECK_SECONDS = 0.1
REPORT_GRACE_SECONDS = 5.0
STREAM_ATTEMPTS = 5
READ_AHEAD = 2  # row batches waiting between two stages of transform_file
STREAM_ERRORS = (
    ResponseStreamingError,
    ReadTimeoutError,
    ConnectionClosedError,
    IncompleteReadError,
)
SUPPORTED_NAMES = "*.parquet, *.csv, *.csv.gz, *.jsonl or *.jsonl.gz"


def run_worker(settings: WorkerSettings) -> int:
    """Run one worker until the queue stays empty for IDLE_SECONDS or SIGTERM; exit code."""
    configure_logging(settings.log_level)
    stopping = threading.Event()
    restore = install_stop_handlers(stopping)
    store = ModelStore(settings.model_uri, settings.model_poll_seconds)
    try:
        store.start()
        wait = max(settings.idle_seconds, 2 * settings.model_poll_seconds)
        bundle = wait_for_model(store, wait, stopping)
        if stopping.is_set():
            return EXIT_OK
        if bundle is None:
            log_event(
                logging.ERROR,
                "no_model",
                model_uri=settings.model_uri,
                waited_seconds=wait,
                reason=store.last_error,
                message="no model bundle could be loaded; taking no messages",
            )
            return EXIT_NO_MODEL
        log_event(
            logging.INFO,
            "worker_started",
            queue=settings.job_queue_url,
            output=f"s3://{settings.output_bucket}/{settings.output_prefix}",
            output_format=settings.output_format,
            model_name=bundle.name,
            model_version=bundle.version,
        )
        worker = Worker(settings, store, stopping)
        try:
            return worker.run()
        finally:
            worker.close()
    finally:
        store.stop()
        restore()


def wait_for_model(store: ModelStore, seconds: float, stopping: threading.Event) -> Bundle | None:
    """Poll for the first bundle for a bounded time; a SIGTERM ends the wait at once."""
    deadline = time.monotonic() + seconds
    while store.current is None and time.monotonic() < deadline:
        if stopping.wait(min(store.poll_seconds, 1.0)):
            break
        store.check_now()
    return store.current


class Worker:
    """The receive loop and the per-file pipeline, bound to one queue and output bucket."""

    def __init__(
        self,
        settings: WorkerSettings,
        store: ModelStore,
        stopping: threading.Event,
        session: boto3.session.Session | None = None,
    ) -> None:
        session = session or boto3.session.Session()
        self.settings = settings
        self.store = store
        self.stopping = stopping
        self.sqs = session.client(
            "sqs",
            config=Config(retries=RETRY_CONFIG, read_timeout=settings.wait_seconds + 30),
        )
        self.s3 = session.client("s3", config=Config(retries=RETRY_CONFIG, max_pool_connections=16))
        self.queue_url = settings.job_queue_url

    def close(self) -> None:
        """Nothing to release: uploads run in the worker's own thread."""

    def run(self) -> int:
        """Long-poll until idle or stopped; one message at a time leaves the rest to others.

        A SIGTERM does not cut a long poll short: SQS may already have handed a message to
        that request, and an abandoned request would hide it for VISIBILITY_SECONDS. The
        poll ends within WAIT_SECONDS, and a message it brings is made visible again at once
        (`handle`).
        """
        idle_since = time.monotonic()
        queue_error: str | None = None
        while not self.stopping.is_set():
            remaining = self.settings.idle_seconds - (time.monotonic() - idle_since)
            if remaining <= 0:
                return self._idle_exit(queue_error)
            try:
                messages = self._receive(remaining)
                queue_error = None
            except Exception as exc:
                queue_error = f"{type(exc).__name__}: {exc}"
                log_event(logging.WARNING, "receive_failed", error=queue_error)
                self.stopping.wait(min(5.0, max(remaining, 0.1)))
                continue
            for message in messages:
                self.handle(message)
                idle_since = time.monotonic()
        log_event(logging.INFO, "worker_stopped", reason="SIGTERM")
        return EXIT_OK

    def _idle_exit(self, queue_error: str | None) -> int:
        if queue_error is not None:
            log_event(logging.ERROR, "queue_unreachable", queue=self.queue_url, error=queue_error)
            return EXIT_QUEUE_UNREACHABLE
        log_event(logging.INFO, "worker_idle", idle_seconds=self.settings.idle_seconds)
        return EXIT_OK

    def _receive(self, remaining: float) -> list[dict[str, Any]]:
        wait = min(self.settings.wait_seconds, max(1, int(remaining + 0.999)))
        response = self.sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.settings.visibility_seconds,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return response.get("Messages", [])

    def handle(self, message: dict[str, Any]) -> None:
        """Work on one message and settle it; never raises for anything the file did."""
        lease = Lease(self.sqs, self.queue_url, message["ReceiptHandle"])
        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1))
        if self.stopping.is_set():
            lease.release()
            return
        try:
            job = batch.parse_message(message.get("Body", ""))
        except batch.InvalidMessage as exc:
            log_event(logging.WARNING, "invalid_message", reason=str(exc), body=_short(message))
            lease.delete()
            return
        bundle = self.store.current
        if bundle is None:
            lease.release()
            return
        log_event(logging.INFO, "file_started", key=job.key, bucket=job.bucket, receives=receives)
        with Heartbeat(lease, self.settings.visibility_seconds, self.stopping):
            outcome = self.attempt(job, bundle)
        self._settle(lease, outcome, receives)
        log_event(
            logging.ERROR if outcome.action is Action.KEEP else logging.INFO,
            "file",
            key=job.key,
            bucket=job.bucket,
            status=outcome.status,
            rows=outcome.rows,
            seconds=round(outcome.seconds, 3),
            output_key=outcome.output_key,
            model_version=bundle.version,
            receives=receives,
            error=outcome.error,
            reason=outcome.message,
            **{
                f"{name}_seconds": round(value, 3) for name, value in (outcome.phases or {}).items()
            },
            **({"traceback": outcome.trace} if outcome.trace else {}),
        )

    def _settle(self, lease: Lease, outcome: Outcome, receives: int) -> None:
        if outcome.action is Action.DELETE:
            lease.delete()
        elif outcome.action is Action.RELEASE:
            lease.release()
        elif outcome.action is Action.RETRY_SOON:
            lease.change(batch.retry_delay(receives, self.settings.visibility_seconds))

    def attempt(self, job: JobMessage, bundle: Bundle) -> Outcome:
        """Transform one file; every exception becomes an Outcome (and a report if due)."""
        started = time.monotonic()
        fmt = file_format(job.key)
        try:
            if job.etag is None:
                job = job.with_etag(self._current_etag(job))
            return self._transform(job, bundle, fmt, started)
        except Exception as exc:
            failure = batch.classify(exc, job, _format_name(fmt))
            outcome = Outcome(
                status=failure.status,
                action=failure.action,
                seconds=time.monotonic() - started,
                error=failure.error,
                message=failure.message,
                trace=traceback.format_exc() if failure.action is Action.KEEP else None,
            )
            if failure.write_report:
                return self._report_failure(job, bundle, outcome)
            return outcome

    def _transform(self, job: JobMessage, bundle: Bundle, fmt: Any, started: float) -> Outcome:
        out_key = batch.output_key(
            self.settings.output_prefix,
            bundle.name,
            bundle.version,
            job.key,
            self.settings.output_format,
        )
        existing = self._output_head(out_key)
        if batch.already_done(_metadata(existing), job, bundle.version):
            self._keep_report(job, bundle, out_key, _metadata(existing), started)
            return Outcome(
                "skipped",
                Action.DELETE,
                time.monotonic() - started,
                out_key,
                message="output exists for this input ETag and model version",
            )
        if fmt is None:
            raise UnsupportedMediaType(f"unknown file type; name input files {SUPPORTED_NAMES}")
        phases: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="batch-worker-") as folder:
            source = os.path.join(folder, "input")
            target = os.path.join(folder, "output")
            with timed(phases, "download"):
                self._download(job, source)
            with timed(phases, "predict"):
                rows = transform_file(
                    source,
                    fmt,
                    target,
                    bundle,
                    self.settings.output_format,
                    self.settings.batch_rows,
                    join_input=self.settings.join_input,
                    should_stop=self.stopping.is_set,
                )
            self._stop_check()
            metadata = batch.output_metadata(job, bundle.name, bundle.version, rows)
            with timed(phases, "upload"):
                written = self._upload(target, out_key, metadata, existing)
            if not written:
                if not batch.already_done(
                    _metadata(self._output_head(out_key)), job, bundle.version
                ):
                    raise batch.OutputChanged("the output changed while this file was in work")
                return Outcome(
                    "skipped",
                    Action.DELETE,
                    time.monotonic() - started,
                    out_key,
                    message="another worker wrote the output for this input ETag meanwhile",
                )
        report = self._succeeded(job, bundle, out_key, rows, started)
        self._put_report(report)
        return Outcome(batch.SUCCEEDED, Action.DELETE, report.seconds, out_key, rows, phases=phases)

    def _succeeded(
        self, job: JobMessage, bundle: Bundle, out_key: str, rows: int | None, started: float
    ) -> Report:
        return batch.make_report(
            job,
            status=batch.SUCCEEDED,
            seconds=time.monotonic() - started,
            model_name=bundle.name,
            model_version=bundle.version,
            output_bucket=self.settings.output_bucket,
            output_key=out_key,
            rows=rows,
        )

    def _report_failure(self, job: JobMessage, bundle: Bundle, outcome: Outcome) -> Outcome:
        """Record the failure; a failure that cannot be recorded is not final either."""
        report = batch.make_report(
            job,
            status=batch.FAILED,
            seconds=outcome.seconds,
            model_name=bundle.name,
            model_version=bundle.version,
            text=outcome.message,
            error=outcome.error,
        )
        try:
            self._put_report(report)
        except Exception as exc:
            if outcome.action is not Action.DELETE:
                return outcome
            transient = batch.is_transient(exc)
            return replace(
                outcome,
                status="retry" if transient else "error",
                action=Action.RETRY_SOON if transient else Action.KEEP,
                message=f"{outcome.message}; the report could not be written: {exc}",
            )
        return outcome

    def _current_etag(self, job: JobMessage) -> str:
        try:
            head = self.s3.head_object(Bucket=job.bucket, Key=job.key, **_version(job))
        except ClientError as exc:
            raise batch.input_error(exc) from exc
        return batch.normalize_etag(head["ETag"]) or ""

    def _output_head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.s3.head_object(Bucket=self.settings.output_bucket, Key=key)
        except ClientError as exc:
            if batch.error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def _keep_report(
        self,
        job: JobMessage,
        bundle: Bundle,
        out_key: str,
        metadata: dict[str, str],
        started: float,
    ) -> None:
        """A worker that died between writing the output and its report left no report for
        this input version: write it from the output's metadata. The writer of a fresh
        output may be about to write its report, so wait REPORT_GRACE_SECONDS for it first."""
        deadline = time.monotonic() + REPORT_GRACE_SECONDS
        while not self._reported(job, bundle):
            if time.monotonic() >= deadline:
                rows = metadata.get(batch.META_ROWS, "")
                restored = self._succeeded(
                    job, bundle, out_key, int(rows) if rows.isdigit() else None, started
                )
                self._put_report(restored)
                log_event(logging.WARNING, "report_restored", key=job.key, output_key=out_key)
                return
            if self.stopping.wait(STOP_CHECK_SECONDS * 5):
                raise batch.Aborted("stopped while waiting for the output's report")

    def _reported(self, job: JobMessage, bundle: Bundle) -> bool:
        """Whether the latest report is the success of this input version and model version."""
        key = batch.report_key(self.settings.output_prefix, job.key)
        try:
            body = self.s3.get_object(Bucket=self.settings.output_bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if batch.error_code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        report = json.loads(body)
        return (
            report.get("status") == batch.SUCCEEDED
            and batch.normalize_etag(report.get("input_etag")) == job.etag
            and report.get("model_version") == bundle.version
        )

    def _download(self, job: JobMessage, path: str) -> None:
        """Stream the object to local disk, in bounded memory, if it still is what the event
        announced.

        One GET of the current object with If-Match on the event's ETag: an object replaced
        since the event fails the condition instead of being read, so a late or repeated
        event of an older version never overwrites the newer version's output (the newer
        version's own event owns it). A connection that breaks mid-stream resumes with a
        Range request under the same condition.
        """
        assert job.etag is not None
        request = {"Bucket": job.bucket, "Key": job.key, "IfMatch": batch.quoted_etag(job.etag)}
        written, size, failures = 0, None, 0
        with open(path, "wb") as out:
            while size is None or written < size:
                resume = {"Range": f"bytes={written}-"} if written else {}
                try:
                    response = self.s3.get_object(**request, **resume)
                except ClientError as exc:
                    raise batch.input_error(exc) from exc
                if size is None:
                    size = response["ContentLength"]
                elif "ContentRange" not in response:
                    out.seek(0)
                    out.truncate()
                    written = 0
                try:
                    written += self._copy_body(response["Body"], out)
                    problem = None if written >= size else f"stream ended at byte {written}"
                except STREAM_ERRORS as exc:
                    written = out.tell()
                    problem = str(exc)
                if problem is not None:
                    failures += 1
                    if failures >= STREAM_ATTEMPTS:
                        raise IncompleteReadError(actual_bytes=written, expected_bytes=size)
                    log_event(logging.WARNING, "download_resumed", key=job.key, error=problem)

    def _copy_body(self, body: Any, out: Any) -> int:
        copied = 0
        with contextlib.closing(body):
            for chunk in body.iter_chunks(MB):
                out.write(chunk)
                copied += len(chunk)
                if self.stopping.is_set():
                    raise batch.Aborted("stopped during the download")
        return copied

    def _upload(
        self, path: str, key: str, metadata: dict[str, str], replaces: dict[str, Any] | None
    ) -> bool:
        """Write the output only if it is still what the already-done check saw (none, or
        the object with that ETag): of two workers with copies of one event, one writes.
        False when another worker's write came first."""
        extra = {
            "Metadata": metadata,
            "ContentType": batch.OUTPUT_CONTENT_TYPES[self.settings.output_format],
        }
        condition = {"IfMatch": replaces["ETag"]} if replaces else {"IfNoneMatch": "*"}
        try:
            if os.path.getsize(path) < TRANSFER_CONFIG.multipart_threshold:
                with open(path, "rb") as body:
                    self.s3.put_object(
                        Bucket=self.settings.output_bucket, Key=key, Body=body, **extra, **condition
                    )
            else:
                self._upload_parts(path, key, extra, condition)
        except ClientError as exc:
            if batch.error_code(exc) not in batch.CHANGED_ERROR_CODES:
                raise
            log_event(logging.INFO, "output_taken", output_key=key, error=batch.error_code(exc))
            return False
        return True

    def _upload_parts(
        self, path: str, key: str, extra: dict[str, Any], condition: dict[str, str]
    ) -> None:
        """A multipart upload whose completion carries the write condition (s3transfer does
        not pass conditions on)."""
        bucket = self.settings.output_bucket
        upload_id = self.s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        try:
            parts = []
            with open(path, "rb") as body:
                while chunk := body.read(TRANSFER_CONFIG.multipart_chunksize):
                    self._stop_check()
                    number = len(parts) + 1
                    part = self.s3.upload_part(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                    )
                    parts.append({"PartNumber": number, "ETag": part["ETag"]})
            self.s3.complete_multipart_upload(
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **condition,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _put_report(self, report: Report) -> None:
        self.s3.put_object(
            Bucket=self.settings.output_bucket,
            Key=batch.report_key(self.settings.output_prefix, report.input_key),
            Body=report.to_json(),
            ContentType="application/json",
        )

    def _stop_check(self) -> None:
        if self.stopping.is_set():
            raise batch.Aborted("stopped before the upload")


@dataclass(frozen=True)
class Outcome:
    """What happened to one file: for the log line and the fate of its message."""

    status: str
    action: Action
    seconds: float
    output_key: str | None = None
    rows: int | None = None
    error: str | None = None
    message: str | None = None
    trace: str | None = None
    phases: dict[str, float] | None = None


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = time.monotonic() - started


@functools.cache
def _libraries() -> ThreadpoolController:
    """The native thread pools loaded (BLAS, OpenMP), found once: the scan takes ~3 ms, too
    much for every small file. The first file comes after the model's imports."""
    return ThreadpoolController()


def transform_file(
    source: str,
    fmt: Any,
    target: str,
    bundle: Bundle,
    output_format: str,
    batch_rows: int,
    *,
    join_input: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Predict every row of a local file into a local file, batch by batch; rows written.

    Three stages overlap: reading the next batches, predicting, writing the previous ones,
    with at most READ_AHEAD batches waiting between two stages. BLAS runs single-threaded:
    the worker process is the unit of parallelism (MaxWorkers), and a second BLAS thread on
    the same cores costs CPU without saving time.
    """
    rows = 0

    def predicted() -> Iterator[pd.DataFrame]:
        for frame in read_ahead(iter_batches(source, fmt, batch_rows, bundle.columns), READ_AHEAD):
            if should_stop():
                raise batch.Aborted("stopped between batches")
            predictions = predict(bundle, frame)
            yield join_columns(frame, predictions, bundle) if join_input else predictions

    single_blas = _libraries().limit(limits=1, user_api="blas")
    with single_blas, BatchWriter(target, output_format) as writer:
        for frame in read_ahead(predicted(), READ_AHEAD):
            writer.write(frame)
            rows += len(frame)
    if rows == 0:
        raise InvalidData("the file has no data rows: it needs a header and at least one row")
    return rows


def join_columns(frame: pd.DataFrame, predictions: pd.DataFrame, bundle: Bundle) -> pd.DataFrame:
    """The input columns with the answer's columns appended (SageMaker's JoinSource=Input)."""
    answer = {c: predictions[c].to_numpy() for c in predictions.columns if c != bundle.id_column}
    return frame.assign(**answer)


class Lease:
    """A received message's receipt handle and the visibility calls made with it."""

    def __init__(self, sqs: Any, queue_url: str, receipt_handle: str) -> None:
        self.sqs = sqs
        self.queue_url = queue_url
        self.receipt_handle = receipt_handle
        self.released = False
        self._lock = threading.Lock()

    def change(self, seconds: int) -> bool:
        try:
            self.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=self.receipt_handle,
                VisibilityTimeout=seconds,
            )
        except Exception as exc:
            log_event(logging.WARNING, "visibility_failed", seconds=seconds, error=str(exc))
            return False
        return True

    def release(self) -> None:
        """Make the message visible now, once, so another worker takes it at once."""
        with self._lock:
            if not self.released:
                self.released = self.change(0)

    def delete(self) -> bool:
        """Finish the message; if SQS cannot be reached it is redelivered, and the output's
        metadata makes that second delivery a no-op."""
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=self.receipt_handle)
        except Exception as exc:
            log_event(logging.WARNING, "delete_failed", error=str(exc))
            return False
        return True


class Heartbeat:
    """Extends the message's visibility every third of it while the file is in work."""

    def __init__(self, lease: Lease, visibility_seconds: int, stopping: threading.Event) -> None:
        self.lease = lease
        self.visibility_seconds = visibility_seconds
        self.interval = max(0.5, visibility_seconds / 3)
        self.stopping = stopping
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.interval
        while not self._done.wait(STOP_CHECK_SECONDS):
            if self.stopping.is_set():
                self.lease.release()
                return
            if time.monotonic() >= next_beat:
                self.lease.change(self.visibility_seconds)
                next_beat = time.monotonic() + self.interval


def install_stop_handlers(stopping: threading.Event) -> Callable[[], None]:
    """SIGTERM (ECS stop, Spot reclaim) and SIGINT set `stopping`; returns the undo.

    An idle worker stops when its long poll returns (within WAIT_SECONDS; the task's
    StopTimeout is longer); a busy one releases its message at the next check.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the structured fields passed in ``extra``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str) -> None:
    """JSON lines on stderr (CloudWatch keeps one event per line, and jq reads them)."""
    root = logging.getLogger()
    root.setLevel(level)
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers = [handler]
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def log_event(level: int, event: str, **fields: Any) -> None:
    log.log(level, event, extra={"fields": {"event": event, **fields}})


def _metadata(head: dict[str, Any] | None) -> dict[str, str] | None:
    return None if head is None else head.get("Metadata", {})


def _version(job: JobMessage) -> dict[str, str]:
    return {"VersionId": job.version_id} if job.version_id else {}


def _format_name(fmt: Any) -> str | None:
    if fmt is None:
        return None
    return str(getattr(fmt, "name", fmt))


def _short(message: dict[str, Any], limit: int = 300) -> str:
    body = str(message.get("Body", ""))
    return body if len(body) <= limit else body[:limit] + "..."
