"""Lambda runtime: runs a function's real code package when moto invokes it.

moto stores the code zip but, without Docker, runs nothing. The seam is
``moto.awslambda.models.LambdaFunction.invoke(body, request_headers, response_headers)``:
the Invoke API calls it with the HTTP request's headers, and moto's own event sources
(S3 notifications, SNS, EventBridge, CloudWatch Logs) call it with an empty dict. While the
runtime is started, that method is replaced by one that runs the code in a fresh Python
subprocess, synchronously for ``RequestResponse`` and in the background for ``Event`` and
for moto's event sources (asynchronous on AWS too), with AWS's retries.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moto.awslambda.exceptions import LambdaClientError
from moto.awslambda.models import LambdaFunction

from localcloud.console import Console
from localcloud.cwlogs import LogStreamWriter
from localcloud.procs import Child, aws_environment, base_environment
from localcloud.settings import LocalCloudSettings

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")
LOG_TAIL_BYTES = 4096
DEFAULT_MAX_RETRIES = 2

_original_invoke = LambdaFunction.invoke
_active: LambdaRuntime | None = None


class Throttled(LambdaClientError):
    """What AWS answers a synchronous invoke when the function has no concurrency left."""

    code = 429

    def __init__(self) -> None:
        super().__init__("TooManyRequestsException", "Rate Exceeded.")


@dataclass(frozen=True)
class InvocationResult:
    """The outcome of one run: the JSON payload, or a Lambda-style error object."""

    payload: bytes
    error_type: str | None
    log: str

    @property
    def errored(self) -> bool:
        return self.error_type is not None


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    function: LambdaFunction = field(compare=False)
    event: bytes = field(compare=False)
    request_id: str = field(compare=False)
    attempt: int = field(default=0, compare=False)


def invocation_type(headers: Mapping[str, str] | None) -> str:
    """``RequestResponse``, ``Event`` or ``DryRun``; moto's event sources send no headers."""
    if not headers:
        return "Event"
    for key, value in headers.items():
        if key.lower() == "x-amz-invocation-type":
            return value
    return "RequestResponse"


def _function_key(fn: LambdaFunction) -> tuple[str, str, str]:
    return (fn.account_id, fn.region, fn.function_name)


def _patched_invoke(
    fn: LambdaFunction, body: Any, request_headers: Any, response_headers: dict[str, str]
) -> str | bytes:
    runtime = _active
    if runtime is None:
        return _original_invoke(fn, body, request_headers, response_headers)
    return runtime.handle_invoke(fn, body, request_headers, response_headers)


class LambdaRuntime:
    """Runs invocations as subprocesses with the function's environment and timeout."""

    def __init__(self, settings: LocalCloudSettings, console: Console | None = None) -> None:
        self.settings = settings
        self._console = console or Console()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._running: Counter[tuple[str, str, str]] = Counter()
        self._children: set[Child] = set()
        self._threads: set[threading.Thread] = set()
        self._seq = 0
        self._stopping = False
        self._dispatcher: threading.Thread | None = None
        self._extract_lock = threading.Lock()

    def start(self) -> None:
        """Take over moto's invoke and start the dispatcher of asynchronous invocations."""
        global _active
        if _active is not None:
            raise RuntimeError("a LambdaRuntime is already started in this process")
        _active = self
        LambdaFunction.invoke = _patched_invoke  # type: ignore[method-assign]
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="lambda", daemon=True)
        self._dispatcher.start()

    def stop(self) -> None:
        """Give moto its invoke back, drop queued events and end running invocations."""
        global _active
        if _active is self:
            LambdaFunction.invoke = _original_invoke  # type: ignore[method-assign]
            _active = None
        with self._cond:
            self._stopping = True
            dropped = len(self._pending)
            self._pending.clear()
            children = list(self._children)
            self._cond.notify_all()
        if dropped:
            self._console.line("lambda", f"dropped {dropped} queued event(s) on shutdown")
        for child in children:
            child.kill()
        for thread in [self._dispatcher, *list(self._threads)]:
            if thread is not None:
                thread.join(10)
        self._dispatcher = None

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
        key = _function_key(fn)
        with self._cond:
            if self._running[key] >= self._limit(fn):
                raise Throttled()
            self._running[key] += 1
        try:
            return self._execute(fn, event, str(uuid.uuid4()))
        finally:
            self._release(key)

    def invoke_async(self, fn: LambdaFunction, event: bytes) -> str:
        """Queue an event (S3, schedule, ``Event`` invoke); return its request id."""
        request_id = str(uuid.uuid4())
        self._enqueue(fn, event or b"{}", request_id, attempt=0, delay=0.0)
        return request_id

    def running(self, function_name: str) -> int:
        """Invocations of the function running now, in any account or region."""
        with self._cond:
            return sum(n for key, n in self._running.items() if key[2] == function_name)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or running (tests, demo)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or sum(self._running.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    def _enqueue(
        self, fn: LambdaFunction, event: bytes, request_id: str, attempt: int, delay: float
    ) -> None:
        with self._cond:
            if self._stopping:
                return
            self._seq += 1
            due = time.monotonic() + delay
            self._pending.append(_Pending(due, self._seq, fn, event, request_id, attempt))
            self._cond.notify_all()

    def _limit(self, fn: LambdaFunction) -> int:
        reserved = getattr(fn, "reserved_concurrency", None)
        if reserved is None or reserved == "":
            return self.settings.lambda_max_concurrency
        return int(reserved)

    def _release(self, key: tuple[str, str, str]) -> None:
        with self._cond:
            self._running[key] -= 1
            self._cond.notify_all()

    def _dispatch(self) -> None:
        with self._cond:
            while not self._stopping:
                job = self._take_ready()
                if job is None:
                    self._cond.wait(self._next_wake())
                    continue
                self._running[_function_key(job.function)] += 1
                thread = threading.Thread(
                    target=self._run_async, args=(job,), name="lambda-async", daemon=True
                )
                self._threads.add(thread)
                thread.start()

    def _take_ready(self) -> _Pending | None:
        now = time.monotonic()
        for job in sorted(self._pending):
            key = _function_key(job.function)
            if job.due <= now and self._running[key] < self._limit(job.function):
                self._pending.remove(job)
                return job
        return None

    def _next_wake(self) -> float:
        """Seconds until a queued retry is due; at most 1 s, as concurrency may change."""
        now = time.monotonic()
        future = [job.due - now for job in self._pending if job.due > now]
        return max(0.01, min([1.0, *future]))

    def _run_async(self, job: _Pending) -> None:
        fn = job.function
        try:
            result = self._execute(fn, job.event, job.request_id)
            if result.errored and not self._stopping:
                self._retry_or_give_up(job)
        finally:
            self._release(_function_key(fn))
            self._threads.discard(threading.current_thread())

    def _retry_or_give_up(self, job: _Pending) -> None:
        """AWS's asynchronous retry policy: a few more attempts, with growing delays."""
        name = f"lambda:{job.function.function_name}"
        retries = self._max_retries(job.function)
        if job.attempt >= retries:
            self._console.line(name, f"event {job.request_id} failed {job.attempt + 1} time(s)")
            return
        delays = self.settings.retry_delays or (0.0,)
        delay = delays[min(job.attempt, len(delays) - 1)]
        self._console.line(name, f"retry {job.attempt + 1} of {retries} in {delay:g} s")
        self._enqueue(job.function, job.event, job.request_id, job.attempt + 1, delay)

    @staticmethod
    def _max_retries(fn: LambdaFunction) -> int:
        configs = getattr(fn, "event_invoke_config", None) or []
        if configs:
            return int(configs[-1].config.get("MaximumRetryAttempts", DEFAULT_MAX_RETRIES))
        return DEFAULT_MAX_RETRIES

    def _execute(self, fn: LambdaFunction, event: bytes, request_id: str) -> InvocationResult:
        """One cold start: extract the code, run the bootstrap, collect result and logs."""
        name = f"lambda:{fn.function_name}"
        version = str(fn.version)
        stream = f"{datetime.now(UTC):%Y/%m/%d}/[{version}]{uuid.uuid4().hex}"
        log = LogStreamWriter(fn.account_id, fn.region, fn.logs_group_name, stream)
        lines: list[str] = []

        def record(text: str) -> None:
            lines.append(text)
            log.write(text)

        def say(text: str) -> None:
            self._console.line(name, text)
            record(text)

        say(f"START RequestId: {request_id} Version: {version}")
        started = time.monotonic()
        outcome = self._run_code(fn, event, request_id, stream, record)
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
        if outcome["ok"]:
            return InvocationResult(outcome["payload"].encode("utf-8"), None, "\n".join(lines))
        error = outcome["error"]
        payload = json.dumps(error).encode("utf-8")
        return InvocationResult(payload, error.get("errorType", "Unhandled"), "\n".join(lines))

    def _run_code(
        self,
        fn: LambdaFunction,
        event: bytes,
        request_id: str,
        stream: str,
        record: Any,
    ) -> dict[str, Any]:
        timeout = float(fn.timeout)
        try:
            code_dir = self._code_dir(fn)
        except (zipfile.BadZipFile, ValueError) as exc:
            return _runtime_error("Runtime.InvalidEntrypoint", f"RequestId: {request_id} {exc}")
        info = {
            "request_id": request_id,
            "function_name": fn.function_name,
            "function_version": str(fn.version),
            "invoked_function_arn": fn.function_arn,
            "memory_limit_in_mb": int(fn.memory_size),
            "log_group_name": fn.logs_group_name,
            "log_stream_name": stream,
            "deadline_ms": int((time.time() + timeout) * 1000),
        }
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.settings.state_dir, prefix="invoke-") as tmp:
            result_path = Path(tmp) / "result.json"
            argv = [sys.executable, "-P", str(BOOTSTRAP), str(result_path), json.dumps(info)]
            env = self._environment(fn, code_dir, stream)
            with self._cond:
                if self._stopping:
                    return _runtime_error("Runtime.Shutdown", "the local cloud is stopping")
                child = Child(
                    argv,
                    name=f"lambda:{fn.function_name}",
                    console=self._console,
                    env=env,
                    cwd=code_dir,
                    stdin=event,
                    on_line=record,
                )
                self._children.add(child)
            try:
                code = child.wait(timeout)
                if code is None:
                    child.kill()
                    message = (
                        f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
                    )
                    return {**_runtime_error("Sandbox.Timedout", message), "timed_out": True}
            finally:
                with self._cond:
                    self._children.discard(child)
            if result_path.exists():
                return json.loads(result_path.read_text(encoding="utf-8"))
            status = f"signal: {-code}" if code < 0 else f"exit status {code}"
            return _runtime_error(
                "Runtime.ExitError",
                f"RequestId: {request_id} Error: Runtime exited with error: {status}",
            )

    def _environment(self, fn: LambdaFunction, code_dir: Path, stream: str) -> dict[str, str]:
        """AWS's reserved variables, then the function's, then the local endpoint (always ours)."""
        env = base_environment()
        env.update(self.settings.extra_env)
        env.update(
            {
                "LAMBDA_TASK_ROOT": str(code_dir),
                "LAMBDA_RUNTIME_DIR": str(BOOTSTRAP.parent),
                "_HANDLER": str(fn.handler),
                "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.run_time}",
                "AWS_LAMBDA_FUNCTION_NAME": fn.function_name,
                "AWS_LAMBDA_FUNCTION_VERSION": str(fn.version),
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
                "AWS_LAMBDA_LOG_GROUP_NAME": fn.logs_group_name,
                "AWS_LAMBDA_LOG_STREAM_NAME": stream,
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "TZ": ":UTC",
            }
        )
        env.update({key: str(value) for key, value in (fn.environment_vars or {}).items()})
        env.update(aws_environment(self.settings.endpoint_url, fn.region))
        return env

    def _code_dir(self, fn: LambdaFunction) -> Path:
        """The code zip extracted once per content hash, like a warm code cache."""
        code = getattr(fn, "code_bytes", b"") or b""
        if not code:
            raise ValueError(f"function {fn.function_name} has no code package")
        digest = hashlib.sha256(code).hexdigest()[:16]
        target = self.settings.state_dir / "lambda" / digest
        with self._extract_lock:
            if not target.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest}-"))
                with zipfile.ZipFile(io.BytesIO(code)) as archive:
                    archive.extractall(staging)
                staging.replace(target)
        return target


def _runtime_error(error_type: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"errorType": error_type, "errorMessage": message}}
