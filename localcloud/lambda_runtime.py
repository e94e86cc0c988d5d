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
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import queue
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from moto.awslambda.exceptions import LambdaClientError
from moto.awslambda.models import LambdaFunction

from localcloud import destinations
from localcloud.bootstrap import INIT_ERRORS, RESULT_MARK
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
    received: float = field(default_factory=time.monotonic, compare=False)


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
    """Runs invocations in warm subprocesses with the function's environment and timeout."""

    def __init__(self, settings: LocalCloudSettings, console: Console | None = None) -> None:
        self.settings = settings
        self._console = console or Console()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._running: Counter[tuple[str, str, str]] = Counter()
        self._idle: dict[str, list[_Environment]] = {}
        self._environments: set[_Environment] = set()
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
            environments = list(self._environments)
            self._environments.clear()
            self._idle.clear()
            self._cond.notify_all()
        if dropped:
            self._console.line("lambda", f"dropped {dropped} queued event(s) on shutdown")
        for environment in environments:
            environment.close()
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
        self._enqueue(_Pending(0.0, 0, fn, event or b"{}", request_id), delay=0.0)
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

    def _enqueue(self, job: _Pending, delay: float) -> None:
        """Queue an event (or its retry: the same request id and receipt time)."""
        with self._cond:
            if self._stopping:
                return
            self._seq += 1
            job.due, job.seq = time.monotonic() + delay, self._seq
            self._pending.append(job)
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
                expired = self._take_expired()
                if expired:
                    threading.Thread(target=_close_all, args=(expired,), daemon=True).start()
                for job in self._take_too_old():
                    self._give_up(job, destinations.EVENT_AGE_EXCEEDED)
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

    def _take_too_old(self) -> list[_Pending]:
        """Events that waited (throttled or between retries) past the function's
        MaximumEventAgeInSeconds; called with the lock held."""
        now = time.monotonic()
        old = [
            job
            for job in self._pending
            if now - job.received
            > destinations.invoke_config(job.function).get("MaximumEventAgeInSeconds", 21600)
        ]
        for job in old:
            self._pending.remove(job)
        return old

    def _next_wake(self) -> float:
        """Seconds until a queued retry is due; at most 1 s, as concurrency may change."""
        now = time.monotonic()
        future = [job.due - now for job in self._pending if job.due > now]
        return max(0.01, min([1.0, *future]))

    def _run_async(self, job: _Pending) -> None:
        fn = job.function
        try:
            if destinations.dropped_by_fault(job.request_id, self.settings.fault_drop_events):
                result = self._injected_failure(job)
            else:
                result = self._execute(fn, job.event, job.request_id)
            if result.errored and not self._stopping:
                self._retry_or_give_up(job, result)
        finally:
            self._release(_function_key(fn))
            self._threads.discard(threading.current_thread())

    def _injected_failure(self, job: _Pending) -> InvocationResult:
        """The fault hook: this attempt fails as if the environment had crashed."""
        name = f"lambda:{job.function.function_name}"
        self._console.line(name, f"fault: event {job.request_id} attempt {job.attempt + 1} failed")
        error = {"errorType": "Runtime.ExitError", "errorMessage": "fault injected"}
        return InvocationResult(json.dumps(error).encode("utf-8"), error["errorType"], "")

    def _retry_or_give_up(self, job: _Pending, result: InvocationResult) -> None:
        """AWS's asynchronous retry policy: a few more attempts, with growing delays, then
        the on-failure destination."""
        name = f"lambda:{job.function.function_name}"
        retries = self._max_retries(job.function)
        if job.attempt >= retries:
            self._console.line(name, f"event {job.request_id} failed {job.attempt + 1} time(s)")
            self._give_up(job, destinations.RETRIES_EXHAUSTED, json.loads(result.payload))
            return
        delays = self.settings.retry_delays or (0.0,)
        delay = delays[min(job.attempt, len(delays) - 1)]
        self._console.line(name, f"retry {job.attempt + 1} of {retries} in {delay:g} s")
        job.attempt += 1
        self._enqueue(job, delay)

    def _give_up(self, job: _Pending, condition: str, error: Any = None) -> None:
        """Send the event's record to the on-failure destination, if the function has one;
        without one the event is dropped, as on AWS."""
        name = f"lambda:{job.function.function_name}"
        arn = destinations.on_failure_arn(job.function)
        if arn is None:
            self._console.line(name, f"event {job.request_id} dropped ({condition})")
            return
        attempts = job.attempt + 1 if condition == destinations.RETRIES_EXHAUSTED else job.attempt
        record = destinations.failure_record(
            job.function, job.event, job.request_id, condition, attempts, error
        )
        try:
            destinations.deliver(arn, record)
        except Exception as exc:
            self._console.line(name, f"event {job.request_id} lost: destination failed: {exc}")
            return
        self._console.line(name, f"event {job.request_id} sent to {arn} ({condition})")

    @staticmethod
    def _max_retries(fn: LambdaFunction) -> int:
        config = destinations.invoke_config(fn)
        return int(config.get("MaximumRetryAttempts", DEFAULT_MAX_RETRIES))

    def _execute(self, fn: LambdaFunction, event: bytes, request_id: str) -> InvocationResult:
        """One invocation, in an idle warm environment of the function or a new one."""
        try:
            environment = self._acquire(fn)
        except (zipfile.BadZipFile, ValueError) as exc:
            failure = _runtime_error("Runtime.InvalidEntrypoint", f"RequestId: {request_id} {exc}")
        except _Stopping:
            failure = _runtime_error("Runtime.Shutdown", "the local cloud is stopping")
        else:
            transcript = environment.begin()
            try:
                return self._logged(
                    fn, transcript, request_id, lambda: environment.invoke(fn, event, request_id)
                )
            finally:
                self._give_back(environment)
        transcript = _Transcript(_log_writer(fn, _stream_name(fn)))
        return self._logged(fn, transcript, request_id, lambda: failure)

    def _logged(
        self,
        fn: LambdaFunction,
        transcript: _Transcript,
        request_id: str,
        run: Callable[[], dict[str, Any]],
    ) -> InvocationResult:
        """START, the run's own output, END and REPORT, as Lambda writes them."""
        name = f"lambda:{fn.function_name}"
        version = str(fn.version)

        def say(text: str) -> None:
            self._console.line(name, text)
            transcript.record(text)

        say(f"START RequestId: {request_id} Version: {version}")
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
        log = "\n".join(transcript.lines)
        if outcome["ok"]:
            return InvocationResult(outcome["payload"].encode("utf-8"), None, log)
        error = outcome["error"]
        payload = json.dumps(error).encode("utf-8")
        return InvocationResult(payload, error.get("errorType", "Unhandled"), log)

    def _acquire(self, fn: LambdaFunction) -> _Environment:
        """An idle environment with the function's current code and configuration, or a new
        one (the pool grows with concurrent invocations; concurrency is limited upstream)."""
        code_dir = self._code_dir(fn)
        stream = _stream_name(fn)
        env = self._environment(fn, code_dir, stream)
        key = _config_key(fn, env)
        with self._cond:
            if self._stopping:
                raise _Stopping
            idle = self._idle.get(key, [])
            while idle:
                environment = idle.pop()
                if environment.alive():
                    return environment
                self._environments.discard(environment)
            self.settings.state_dir.mkdir(parents=True, exist_ok=True)
            environment = _Environment(key, fn, code_dir, env, stream, self._console)
            self._environments.add(environment)
            return environment

    def _give_back(self, environment: _Environment) -> None:
        """Keep a healthy environment warm; a crashed or timed-out one is replaced."""
        with self._cond:
            usable = environment.reusable and not environment.retired
            if usable and environment.alive() and not self._stopping:
                environment.idle_since = time.monotonic()
                self._idle.setdefault(environment.key, []).append(environment)
                return
            self._environments.discard(environment)
        environment.close()

    def _take_expired(self) -> list[_Environment]:
        """Environments idle longer than the setting (AWS recycles idle ones after minutes);
        called with the lock held."""
        cutoff = time.monotonic() - self.settings.lambda_idle_seconds
        expired = [e for pool in self._idle.values() for e in pool if e.idle_since < cutoff]
        for environment in expired:
            self._idle[environment.key].remove(environment)
            self._environments.discard(environment)
        return expired

    def retire(self, function_name: str) -> int:
        """End the function's warm environments (new code or configuration): idle ones now,
        busy ones after their invocation; the number ended or marked."""
        with self._cond:
            idle = [e for p in self._idle.values() for e in p if e.function_name == function_name]
            for environment in idle:
                self._idle[environment.key].remove(environment)
                self._environments.discard(environment)
            busy = [e for e in self._environments if e.function_name == function_name]
            for environment in busy:
                environment.retired = True
        _close_all(idle)
        return len(idle) + len(busy)

    def environments(self, function_name: str) -> list[int]:
        """Process ids of the function's live environments, busy or idle (tests)."""
        with self._cond:
            return [e.pid for e in self._environments if e.function_name == function_name]

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


class _Stopping(Exception):
    """The runtime is stopping: no new environment starts."""


class _Transcript:
    """One invocation's log lines: kept for the caller's LogResult, sent to CloudWatch."""

    def __init__(self, writer: LogStreamWriter) -> None:
        self.writer = writer
        self.lines: list[str] = []

    def record(self, text: str) -> None:
        self.lines.append(text)
        self.writer.write(text)


class _Environment:
    """A warm execution environment: one bootstrap process serving one invocation at a time,
    with its own log stream (as on AWS); module globals persist between its invocations."""

    def __init__(
        self,
        key: str,
        fn: LambdaFunction,
        code_dir: Path,
        env: dict[str, str],
        stream: str,
        console: Console,
    ) -> None:
        self.key = key
        self.function_name = fn.function_name
        self.stream = stream
        self.reusable = True
        self.retired = False
        self.idle_since = time.monotonic()
        self._name = f"lambda:{fn.function_name}"
        self._console = console
        self._writer = _log_writer(fn, stream)
        self._transcript = _Transcript(self._writer)
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._child = Child(
            [sys.executable, "-P", str(BOOTSTRAP), "--serve"],
            name=self._name,
            console=console,
            env=env,
            cwd=code_dir,
            interactive=True,
            on_line=self._on_line,
            on_exit=lambda code: self._answers.put(None),
        )

    @property
    def pid(self) -> int:
        return self._child.pid

    def alive(self) -> bool:
        return self._child.returncode is None

    def begin(self) -> _Transcript:
        self._transcript = _Transcript(self._writer)
        return self._transcript

    def invoke(self, fn: LambdaFunction, event: bytes, request_id: str) -> dict[str, Any]:
        """Send one request and wait for its answer, the process's exit or the timeout."""
        timeout = float(fn.timeout)
        info = {
            "request_id": request_id,
            "function_name": fn.function_name,
            "function_version": str(fn.version),
            "invoked_function_arn": fn.function_arn,
            "memory_limit_in_mb": int(fn.memory_size),
            "log_group_name": fn.logs_group_name,
            "log_stream_name": self.stream,
            "deadline_ms": int((time.time() + timeout) * 1000),
        }
        request = {"info": info, "event": base64.b64encode(event).decode("ascii")}
        self.reusable = False
        if not self._child.send(json.dumps(request).encode("utf-8") + b"\n"):
            return self._exited(request_id)
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            self._child.kill()
            message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
            return {**_runtime_error("Sandbox.Timedout", message), "timed_out": True}
        if answer is None:
            return self._exited(request_id)
        self.reusable = answer.get("error", {}).get("errorType") not in INIT_ERRORS
        return answer

    def close(self) -> None:
        self._child.kill()

    def _exited(self, request_id: str) -> dict[str, Any]:
        code = self._child.wait(5)
        with contextlib.suppress(queue.Empty):
            answer = self._answers.get_nowait()
            if answer is not None:
                return answer
        if code is None:
            code = self._child.kill()
        status = f"signal: {-code}" if code < 0 else f"exit status {code}"
        return _runtime_error(
            "Runtime.ExitError",
            f"RequestId: {request_id} Error: Runtime exited with error: {status}",
        )

    def _on_line(self, text: str) -> bool:
        """Output goes to the invocation's transcript; the answer line to the waiting caller."""
        head, mark, answer = text.partition(RESULT_MARK)
        if head or not mark:
            self._console.line(self._name, head)
            self._transcript.record(head)
        if mark:
            self._answers.put(json.loads(answer))
        return True


def _close_all(environments: list[_Environment]) -> None:
    for environment in environments:
        environment.close()


def _stream_name(fn: LambdaFunction) -> str:
    return f"{datetime.now(UTC):%Y/%m/%d}/[{fn.version}]{uuid.uuid4().hex}"


def _log_writer(fn: LambdaFunction, stream: str) -> LogStreamWriter:
    return LogStreamWriter(fn.account_id, fn.region, fn.logs_group_name, stream)


def _config_key(fn: LambdaFunction, env: dict[str, str]) -> str:
    """Environments are shared only by invocations of the same code and configuration."""
    settings = {k: v for k, v in env.items() if k != "AWS_LAMBDA_LOG_STREAM_NAME"}
    identity = [*_function_key(fn), sorted(settings.items())]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


def _runtime_error(error_type: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"errorType": error_type, "errorMessage": message}}
