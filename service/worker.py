"""Batch worker: drain the job queue, one input file at a time, until idle or stopped.

The SQS side lives here (receive, settle each message); the S3 side is
``service.worker_s3``, the per-file transform ``service.transform``, the message lease
``service.lease``, and the decisions (output key, "already done", what a failure means for
the message, the report) the pure ``service.batch``.

Per message: parse -> skip if the output for this input ETag and model version exists ->
stream the input (every GET If-Match the event's ETag) through the model in row batches into
a multipart upload -> complete it conditionally (the output appears whole or not at all) ->
report -> delete. A heartbeat thread keeps the message
invisible meanwhile and, on SIGTERM, hands it back to the queue at once.

Exit codes: 0 after IDLE_SECONDS without a message or on SIGTERM (an idle worker notices it
within WAIT_SECONDS, the long poll), 3 when no model bundle loads in time, 4 when the queue
stayed unreachable for IDLE_SECONDS.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import boto3
from botocore.config import Config

from service import batch
from service.artifacts import Bundle, ModelStore
from service.batch import Action, JobMessage
from service.lease import Heartbeat, Lease, install_stop_handlers
from service.pipeline import FilePipeline, Outcome
from service.settings import WorkerSettings
from service.worker_logs import configure_logging, log_event
from service.worker_s3 import WorkerS3

EXIT_OK = 0
EXIT_NO_MODEL = 3
EXIT_QUEUE_UNREACHABLE = 4

RETRY_CONFIG = {"mode": "standard", "max_attempts": 5}


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
    """The receive loop, bound to one queue; each message's file goes through the pipeline."""

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
        s3 = session.client("s3", config=Config(retries=RETRY_CONFIG, max_pool_connections=16))
        files = WorkerS3(s3, settings.output_bucket, settings.output_prefix, stopping)
        self.pipeline = FilePipeline(settings, files, stopping)
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
            outcome = self.pipeline.attempt(job, bundle)
        self._settle(lease, outcome, receives)
        _log_outcome(job, bundle, outcome, receives)

    def _settle(self, lease: Lease, outcome: Outcome, receives: int) -> None:
        if outcome.action is Action.DELETE:
            lease.delete()
        elif outcome.action is Action.RELEASE:
            lease.release()
        elif outcome.action is Action.RETRY_SOON:
            lease.change(batch.retry_delay(receives, self.settings.visibility_seconds))


def _log_outcome(job: JobMessage, bundle: Bundle, outcome: Outcome, receives: int) -> None:
    phases = {f"{name}_seconds": round(value, 3) for name, value in (outcome.phases or {}).items()}
    log_event(
        logging.ERROR if outcome.action is Action.KEEP else logging.INFO,
        "file",
        key=job.key,
        bucket=job.bucket,
        status=outcome.status,
        rows=outcome.rows,
        seconds=round(outcome.seconds, 3),
        output_key=outcome.output_key,
        model_name=bundle.name,
        model_version=bundle.version,
        receives=receives,
        error=outcome.error,
        reason=outcome.message,
        **phases,
        **({"traceback": outcome.trace} if outcome.trace else {}),
    )


def _short(message: dict[str, Any], limit: int = 300) -> str:
    body = str(message.get("Body", ""))
    return body if len(body) <= limit else body[:limit] + "..."
