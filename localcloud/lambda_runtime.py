"""Lambda runtime: runs a function's real code package when moto invokes it.

moto stores the code zip but, without Docker, runs nothing. The seam is
``moto.awslambda.models.LambdaFunction.invoke(body, request_headers, response_headers)``:
the Invoke API calls it with the HTTP request's headers, and moto's own event sources
(S3 notifications, SNS, EventBridge, CloudWatch Logs) call it with an empty dict. While the
runtime is started, that method is replaced by one that runs the code in a Python subprocess,
synchronously for ``RequestResponse`` and in the background for ``Event`` and for moto's
event sources (asynchronous on AWS too), with AWS's retries; an event that still fails, or
waits past the function's maximum event age, goes to its on-failure destination
(``localcloud.destinations``). ``fault_drop_events`` (``--fault-drop-events``) fails every
attempt of that fraction of asynchronous events, for the reliability tests.

As on AWS, a process (an execution environment) serves one invocation at a time and stays
warm for the next invocation of the same code and configuration: the pool grows with
concurrent invocations, up to the function's concurrency; a crashed or timed-out environment
is replaced, and an idle one ends after ``lambda_idle_seconds``.

This module is the seam and the runtime that ties the parts together: a function's code
and variables (``lambda_code``), one invocation's record and log lines
(``lambda_invocation``), the warm environments (``lambda_pool``), and concurrency with the
queue of asynchronous events (``lambda_events``).
"""

from __future__ import annotations

import base64
import threading
import uuid
import zipfile
from collections.abc import Mapping
from typing import Any

from moto.awslambda.exceptions import LambdaClientError
from moto.awslambda.models import LambdaFunction

from localcloud.console import Console
from localcloud.lambda_code import CodeCache, config_key, function_environment, stream_name
from localcloud.lambda_events import Concurrency, EventQueue
from localcloud.lambda_invocation import (
    InvocationResult,
    Transcript,
    log_writer,
    run_logged,
    runtime_error,
)
from localcloud.lambda_pool import Environment, EnvironmentPool, Stopping, close_all
from localcloud.settings import LocalCloudSettings

__all__ = ["InvocationResult", "LambdaRuntime", "Throttled", "invocation_type"]

LOG_TAIL_BYTES = 4096

_original_invoke = LambdaFunction.invoke
_active: LambdaRuntime | None = None


class Throttled(LambdaClientError):
    """What AWS answers a synchronous invoke when the function has no concurrency left."""

    code = 429

    def __init__(self) -> None:
        super().__init__("TooManyRequestsException", "Rate Exceeded.")


def invocation_type(headers: Mapping[str, str] | None) -> str:
    """``RequestResponse``, ``Event`` or ``DryRun``; moto's event sources send no headers."""
    if not headers:
        return "Event"
    for key, value in headers.items():
        if key.lower() == "x-amz-invocation-type":
            return value
    return "RequestResponse"


def _patched_invoke(
    fn: LambdaFunction, body: Any, request_headers: Any, response_headers: dict[str, str]
) -> str | bytes:
    runtime = _active
    if runtime is None:
        return _original_invoke(fn, body, request_headers, response_headers)
    return runtime.handle_invoke(fn, body, request_headers, response_headers)


class LambdaRuntime:
    """Runs invocations in warm subprocesses with the function's environment and timeout."""

    def __init__(self, settings: LocalCloudSettings, console: Console | None = None) -> None:
        self.settings = settings
        self._console = console or Console()
        self._slots = Concurrency(settings.lambda_max_concurrency)
        self._pool = EnvironmentPool(self._console, settings.lambda_idle_seconds)
        self._code = CodeCache(settings.state_dir / "lambda")
        self._events = EventQueue(
            settings, self._console, self._slots, self._execute, self._end_expired
        )

    def start(self) -> None:
        """Take over moto's invoke and start the dispatcher of asynchronous invocations."""
        global _active
        if _active is not None:
            raise RuntimeError("a LambdaRuntime is already started in this process")
        _active = self
        LambdaFunction.invoke = _patched_invoke  # type: ignore[method-assign]
        self._pool.open()
        self._events.start()

    def stop(self) -> None:
        """Give moto its invoke back, drop queued events and end running invocations."""
        global _active
        if _active is self:
            LambdaFunction.invoke = _original_invoke  # type: ignore[method-assign]
            _active = None
        self._events.close()
        self._pool.close()
        self._events.join(10)

    def handle_invoke(
        self, fn: LambdaFunction, body: Any, request_headers: Any, response_headers: dict[str, str]
    ) -> bytes:
        """What moto's ``LambdaFunction.invoke`` does while this runtime runs."""
        event = body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")
        kind = invocation_type(request_headers)
        if kind == "DryRun":
            return b""
        if kind == "Event":
            self.invoke_async(fn, event)
            return b""
        result = self.invoke_sync(fn, event)
        if result.errored:
            response_headers["x-amz-function-error"] = "Unhandled"
        tail = result.log.encode("utf-8")[-LOG_TAIL_BYTES:]
        response_headers["x-amz-log-result"] = base64.b64encode(tail).decode("ascii")
        return result.payload

    def invoke_sync(self, fn: LambdaFunction, event: bytes) -> InvocationResult:
        """Run now and return the result; throttle beyond the function's concurrency."""
        with self._slots.cond:
            if not self._slots.has_room(fn):
                raise Throttled()
            self._slots.take(fn)
        try:
            return self._execute(fn, event, str(uuid.uuid4()))
        finally:
            self._slots.release(fn)

    def invoke_async(self, fn: LambdaFunction, event: bytes) -> str:
        """Queue an event (S3, schedule, ``Event`` invoke); return its request id."""
        return self._events.put(fn, event)

    def running(self, function_name: str) -> int:
        """Invocations of the function running now, in any account or region."""
        return self._slots.running(function_name)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or running (tests, demo)."""
        return self._events.wait_idle(timeout)

    def retire(self, function_name: str) -> int:
        """End the function's warm environments (new code or configuration): idle ones now,
        busy ones after their invocation; the number ended or marked."""
        return self._pool.retire(function_name)

    def environments(self, function_name: str) -> list[int]:
        """Process ids of the function's live environments, busy or idle (tests)."""
        return self._pool.pids(function_name)

    def _end_expired(self) -> None:
        """Environments idle past the setting end in the background."""
        expired = self._pool.take_expired()
        if expired:
            threading.Thread(target=close_all, args=(expired,), daemon=True).start()

    def _execute(self, fn: LambdaFunction, event: bytes, request_id: str) -> InvocationResult:
        """One invocation, in an idle warm environment of the function or a new one."""
        try:
            environment = self._acquire(fn)
        except (zipfile.BadZipFile, ValueError) as exc:
            failure = runtime_error("Runtime.InvalidEntrypoint", f"RequestId: {request_id} {exc}")
        except Stopping:
            failure = runtime_error("Runtime.Shutdown", "the local cloud is stopping")
        else:
            transcript = environment.begin()
            try:
                return run_logged(
                    self._console,
                    fn,
                    transcript,
                    request_id,
                    lambda: environment.invoke(fn, event, request_id),
                )
            finally:
                self._pool.give_back(environment)
        transcript = Transcript(log_writer(fn, stream_name(fn)))
        return run_logged(self._console, fn, transcript, request_id, lambda: failure)

    def _acquire(self, fn: LambdaFunction) -> Environment:
        """An idle environment with the function's current code and configuration, or a new
        one (the pool grows with concurrent invocations; concurrency is limited upstream)."""
        code_dir = self._code.code_dir(fn)
        stream = stream_name(fn)
        env = function_environment(self.settings, fn, code_dir, stream)
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        return self._pool.acquire(config_key(fn, env), fn, code_dir, env, stream)
