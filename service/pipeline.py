"""One file's pipeline, for the worker's current model: already done? -> stream the input
through the model into an upload -> complete the upload conditionally -> report. Every exception becomes an Outcome (and a report
when one is due); the worker only settles the queue message from it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from service import batch
from service.artifacts import Bundle
from service.batch import Action, JobMessage, Report
from service.batch_contract import FileFormat, file_format, readable_suffixes, skipped_report
from service.files import known_rows
from service.lease import STOP_CHECK_SECONDS
from service.s3_upload import S3Output
from service.settings import WorkerSettings
from service.transform import transform_file
from service.worker_logs import log_event
from service.worker_s3 import WorkerS3

REPORT_GRACE_SECONDS = 5.0


class FilePipeline:
    """Transforms one job's file with a bundle, through the worker's S3 adapter."""

    def __init__(
        self, settings: WorkerSettings, files: WorkerS3, stopping: threading.Event
    ) -> None:
        self.settings = settings
        self.files = files
        self.stopping = stopping

    def attempt(self, job: JobMessage, bundle: Bundle) -> Outcome:
        """Transform one file; every exception becomes an Outcome (and a report if due)."""
        started = time.monotonic()
        fmt = file_format(job.key)
        try:
            if job.etag is None:
                job = job.with_etag(self.files.current_etag(job))
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

    def _transform(
        self, job: JobMessage, bundle: Bundle, fmt: FileFormat | None, started: float
    ) -> Outcome:
        out_key = batch.output_key(
            self.settings.output_prefix,
            bundle.name,
            bundle.version,
            job.key,
            self.settings.output_format,
        )
        existing = self.files.output_head(out_key)
        if batch.already_done(_metadata(existing), job, bundle.version):
            self._keep_report(job, bundle, out_key, _metadata(existing), started)
            text = "output exists for this input ETag and model version"
            return Outcome(
                batch.SKIPPED, Action.DELETE, time.monotonic() - started, out_key, message=text
            )
        if fmt is None:
            return self._skip_unsupported(job, started)
        phases: dict[str, float] = {}
        output = self._open_output(job, bundle, out_key, existing)
        try:
            with timed(phases, "stream"):
                rows = self._predict_file(job, bundle, fmt, output)
            with timed(phases, "commit"):
                written = self.files.commit(output, {batch.META_ROWS: str(rows)})
        finally:
            output.abort()
        if not written:
            return self._lost_race(job, bundle, out_key, started)
        report = self._succeeded(job, bundle, out_key, rows, started)
        self.files.put_report(report)
        return Outcome(batch.SUCCEEDED, Action.DELETE, report.seconds, out_key, rows, phases=phases)

    def _predict_file(self, job: JobMessage, bundle: Bundle, fmt: FileFormat, output: Any) -> int:
        """Stream the input through the model into the output upload; rows. Reading the
        input, predicting and uploading parts overlap."""
        with self.files.open_input(job, sequential=fmt.name != "parquet") as source:
            declared = known_rows(source, fmt)
            if declared:
                output.declare({batch.META_ROWS: str(declared)})
            rows = transform_file(
                source,
                fmt,
                output,
                bundle,
                self.settings.output_format,
                self.settings.batch_rows,
                join_input=self.settings.join_input,
                should_stop=self.stopping.is_set,
            )
        if self.stopping.is_set():
            raise batch.Aborted("stopped before the upload")
        return rows

    def _open_output(
        self, job: JobMessage, bundle: Bundle, out_key: str, existing: dict | None
    ) -> S3Output:
        """The output's upload, with its metadata but the row count: a parquet input's footer
        declares it before the first part; a text input's count is known at the end, and
        joins the metadata where the output is one PutObject."""
        metadata = batch.output_metadata(job, bundle.name, bundle.version, 0)
        del metadata[batch.META_ROWS]
        content_type = batch.OUTPUT_CONTENT_TYPES[self.settings.output_format]
        extra = {"Metadata": metadata, "ContentType": content_type}
        return self.files.open_output(out_key, extra, existing)

    def _lost_race(self, job: JobMessage, bundle: Bundle, out_key: str, started: float) -> Outcome:
        """Another worker wrote first: fine if it wrote this input version's output."""
        if not batch.already_done(_metadata(self.files.output_head(out_key)), job, bundle.version):
            raise batch.OutputChanged("the output changed while this file was in work")
        text = "another worker wrote the output for this input ETag meanwhile"
        return Outcome(
            batch.SKIPPED, Action.DELETE, time.monotonic() - started, out_key, message=text
        )

    def _skip_unsupported(self, job: JobMessage, started: float) -> Outcome:
        """A name the worker cannot read (a hand-queued message): a `skipped` report."""
        reason = (
            f"not transformed: the worker reads files named {', '.join(readable_suffixes())} "
            "(any letter case); rename the file and upload it again"
        )
        report = skipped_report(job.bucket, job.key, job.etag, job.version_id, reason)
        self.files.put_report(report)
        return Outcome(batch.SKIPPED, Action.DELETE, time.monotonic() - started, message=reason)

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
            self.files.put_report(report)
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
                self.files.put_report(restored)
                log_event(logging.WARNING, "report_restored", key=job.key, output_key=out_key)
                return
            if self.stopping.wait(STOP_CHECK_SECONDS * 5):
                raise batch.Aborted("stopped while waiting for the output's report")

    def _reported(self, job: JobMessage, bundle: Bundle) -> bool:
        """Whether the latest report is the success of this input version and model version."""
        report = self.files.latest_report(job.key)
        return (
            report is not None
            and report.get("status") == batch.SUCCEEDED
            and batch.normalize_etag(report.get("input_etag")) == job.etag
            and report.get("model_version") == bundle.version
        )


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


def _metadata(head: dict[str, Any] | None) -> dict[str, str] | None:
    return None if head is None else head.get("Metadata", {})


def _format_name(fmt: FileFormat | None) -> str | None:
    return None if fmt is None else fmt.name
