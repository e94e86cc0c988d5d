"""Warm Lambda execution environments: one bootstrap process each, serving one invocation at
a time and kept for the next invocation of the same code and configuration."""

from __future__ import annotations

import base64
import contextlib
import json
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

from moto.awslambda.models import LambdaFunction

from localcloud.bootstrap import INIT_ERRORS, RESULT_MARK
from localcloud.console import Console
from localcloud.lambda_code import BOOTSTRAP
from localcloud.lambda_invocation import Transcript, log_writer, runtime_error
from localcloud.procs import Child


class Stopping(Exception):
    """The runtime is stopping: no new environment starts."""


class Environment:
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
        self._writer = log_writer(fn, stream)
        self._transcript = Transcript(self._writer)
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

    def begin(self) -> Transcript:
        self._transcript = Transcript(self._writer)
        return self._transcript

    def invoke(self, fn: LambdaFunction, event: bytes, request_id: str) -> dict[str, Any]:
        """Send one request and wait for its answer, the process's exit or the timeout."""
        timeout = float(fn.timeout)
        request = {"info": self._context(fn, request_id, timeout), "event": _b64(event)}
        self.reusable = False
        if not self._child.send(json.dumps(request).encode("utf-8") + b"\n"):
            return self._exited(request_id)
        try:
            answer = self._answers.get(timeout=timeout)
        except queue.Empty:
            self._child.kill()
            message = f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds"
            return {**runtime_error("Sandbox.Timedout", message), "timed_out": True}
        if answer is None:
            return self._exited(request_id)
        self.reusable = answer.get("error", {}).get("errorType") not in INIT_ERRORS
        return answer

    def close(self) -> None:
        self._child.kill()

    def _context(self, fn: LambdaFunction, request_id: str, timeout: float) -> dict[str, Any]:
        """What the bootstrap turns into the handler's context object."""
        return {
            "request_id": request_id,
            "function_name": fn.function_name,
            "function_version": str(fn.version),
            "invoked_function_arn": fn.function_arn,
            "memory_limit_in_mb": int(fn.memory_size),
            "log_group_name": fn.logs_group_name,
            "log_stream_name": self.stream,
            "deadline_ms": int((time.time() + timeout) * 1000),
        }

    def _exited(self, request_id: str) -> dict[str, Any]:
        code = self._child.wait(5)
        with contextlib.suppress(queue.Empty):
            answer = self._answers.get_nowait()
            if answer is not None:
                return answer
        if code is None:
            code = self._child.kill()
        status = f"signal: {-code}" if code < 0 else f"exit status {code}"
        return runtime_error(
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


class EnvironmentPool:
    """Every live environment, and the idle ones by configuration key. The pool grows with
    concurrent invocations (concurrency is limited upstream); a crashed, timed-out or retired
    environment is replaced, and an idle one ends after ``idle_seconds``."""

    def __init__(self, console: Console, idle_seconds: float) -> None:
        self._console = console
        self._idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[str, list[Environment]] = {}
        self._environments: set[Environment] = set()
        self._closed = False

    def open(self) -> None:
        with self._lock:
            self._closed = False

    def acquire(
        self, key: str, fn: LambdaFunction, code_dir: Path, env: dict[str, str], stream: str
    ) -> Environment:
        """An idle environment of this key, or a new one; Stopping once the pool is closed."""
        with self._lock:
            if self._closed:
                raise Stopping
            idle = self._idle.get(key, [])
            while idle:
                environment = idle.pop()
                if environment.alive():
                    return environment
                self._environments.discard(environment)
            environment = Environment(key, fn, code_dir, env, stream, self._console)
            self._environments.add(environment)
            return environment

    def give_back(self, environment: Environment) -> None:
        """Keep a healthy environment warm; a crashed or timed-out one is replaced."""
        with self._lock:
            usable = environment.reusable and not environment.retired
            if usable and environment.alive() and not self._closed:
                environment.idle_since = time.monotonic()
                self._idle.setdefault(environment.key, []).append(environment)
                return
            self._environments.discard(environment)
        environment.close()

    def take_expired(self) -> list[Environment]:
        """Environments idle longer than the setting (AWS recycles idle ones after minutes)."""
        cutoff = time.monotonic() - self._idle_seconds
        with self._lock:
            expired = [e for pool in self._idle.values() for e in pool if e.idle_since < cutoff]
            for environment in expired:
                self._idle[environment.key].remove(environment)
                self._environments.discard(environment)
        return expired

    def retire(self, function_name: str) -> int:
        """End the function's warm environments (new code or configuration): idle ones now,
        busy ones after their invocation; the number ended or marked."""
        with self._lock:
            idle = [e for p in self._idle.values() for e in p if e.function_name == function_name]
            for environment in idle:
                self._idle[environment.key].remove(environment)
                self._environments.discard(environment)
            busy = [e for e in self._environments if e.function_name == function_name]
            for environment in busy:
                environment.retired = True
        close_all(idle)
        return len(idle) + len(busy)

    def pids(self, function_name: str) -> list[int]:
        """Process ids of the function's live environments, busy or idle."""
        with self._lock:
            return [e.pid for e in self._environments if e.function_name == function_name]

    def close(self) -> None:
        """Refuse new environments and end every one, busy or idle."""
        with self._lock:
            self._closed = True
            environments = list(self._environments)
            self._environments.clear()
            self._idle.clear()
        close_all(environments)


def close_all(environments: list[Environment]) -> None:
    for environment in environments:
        environment.close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
