"""One Lambda invocation's record: its result, its transcript, and the START, END and REPORT
lines Lambda writes around the function's own output."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moto.awslambda.models import LambdaFunction

from localcloud.console import Console
from localcloud.cwlogs import LogStreamWriter


@dataclass(frozen=True)
class InvocationResult:
    """The outcome of one run: the JSON payload, or a Lambda-style error object."""

    payload: bytes
    error_type: str | None
    log: str

    @property
    def errored(self) -> bool:
        return self.error_type is not None


class Transcript:
    """One invocation's log lines: kept for the caller's LogResult, sent to CloudWatch."""

    def __init__(self, writer: LogStreamWriter) -> None:
        self.writer = writer
        self.lines: list[str] = []

    def record(self, text: str) -> None:
        self.lines.append(text)
        self.writer.write(text)


def log_writer(fn: LambdaFunction, stream: str) -> LogStreamWriter:
    return LogStreamWriter(fn.account_id, fn.region, fn.logs_group_name, stream)


def runtime_error(error_type: str, message: str) -> dict[str, Any]:
    """An outcome the runtime reports itself (the function's code never answered)."""
    return {"ok": False, "error": {"errorType": error_type, "errorMessage": message}}


def run_logged(
    console: Console,
    fn: LambdaFunction,
    transcript: Transcript,
    request_id: str,
    run: Callable[[], dict[str, Any]],
) -> InvocationResult:
    """START, the run's own output, END and REPORT, as Lambda writes them."""
    name = f"lambda:{fn.function_name}"

    def say(text: str) -> None:
        console.line(name, text)
        transcript.record(text)

    say(f"START RequestId: {request_id} Version: {fn.version}")
    started = time.monotonic()
    outcome = run()
    millis = (time.monotonic() - started) * 1000
    if outcome.get("timed_out"):
        say(
            f"{datetime.now(UTC).isoformat()} {request_id} Task timed out after "
            f"{float(fn.timeout):.2f} seconds"
        )
    say(f"END RequestId: {request_id}")
    say(
        f"REPORT RequestId: {request_id}\tDuration: {millis:.2f} ms\t"
        f"Billed Duration: {int(millis) + 1} ms\tMemory Size: {fn.memory_size} MB"
    )
    return _result(outcome, "\n".join(transcript.lines))


def _result(outcome: dict[str, Any], log: str) -> InvocationResult:
    if outcome["ok"]:
        return InvocationResult(outcome["payload"].encode("utf-8"), None, log)
    error = outcome["error"]
    payload = json.dumps(error).encode("utf-8")
    return InvocationResult(payload, error.get("errorType", "Unhandled"), log)
