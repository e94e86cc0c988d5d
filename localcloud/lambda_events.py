"""Who runs when: each function's concurrency, and the queue of asynchronous invocations
(S3 notifications, schedules, ``Event`` invokes) with AWS's retries, maximum event age and
on-failure destination (``localcloud.destinations``)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from moto.awslambda.models import LambdaFunction

from localcloud import destinations
from localcloud.console import Console
from localcloud.lambda_code import FunctionKey, function_key
from localcloud.lambda_invocation import InvocationResult
from localcloud.settings import LocalCloudSettings

DEFAULT_MAX_RETRIES = 2

Execute = Callable[[LambdaFunction, bytes, str], InvocationResult]


class Concurrency:
    """Invocations running now, per function, against each function's limit. Its condition
    also guards the event queue, which waits on it for a free slot."""

    def __init__(self, default_limit: int) -> None:
        self.cond = threading.Condition()
        self._default_limit = default_limit
        self._running: Counter[FunctionKey] = Counter()

    def limit(self, fn: LambdaFunction) -> int:
        reserved = getattr(fn, "reserved_concurrency", None)
        if reserved is None or reserved == "":
            return self._default_limit
        return int(reserved)

    def has_room(self, fn: LambdaFunction) -> bool:
        """Called with the condition held."""
        return self._running[function_key(fn)] < self.limit(fn)

    def take(self, fn: LambdaFunction) -> None:
        """Called with the condition held."""
        self._running[function_key(fn)] += 1

    def release(self, fn: LambdaFunction) -> None:
        with self.cond:
            self._running[function_key(fn)] -= 1
            self.cond.notify_all()

    def total(self) -> int:
        """Called with the condition held."""
        return sum(self._running.values())

    def running(self, function_name: str) -> int:
        """Invocations of the function running now, in any account or region."""
        with self.cond:
            return sum(n for key, n in self._running.items() if key[2] == function_name)


@dataclass(order=True)
class PendingEvent:
    due: float
    seq: int
    function: LambdaFunction = field(compare=False)
    event: bytes = field(compare=False)
    request_id: str = field(compare=False)
    attempt: int = field(default=0, compare=False)
    received: float = field(default_factory=time.monotonic, compare=False)


class EventQueue:
    """Runs queued events as slots free up, each in its own thread through ``execute``;
    ``housekeeping`` runs on every turn of the dispatcher (at least once a second)."""

    def __init__(
        self,
        settings: LocalCloudSettings,
        console: Console,
        slots: Concurrency,
        execute: Execute,
        housekeeping: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._console = console
        self._slots = slots
        self._cond = slots.cond
        self._execute = execute
        self._housekeeping = housekeeping
        self._pending: list[PendingEvent] = []
        self._threads: set[threading.Thread] = set()
        self._seq = 0
        self._stopping = False
        self._dispatcher: threading.Thread | None = None

    def start(self) -> None:
        self._stopping = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="lambda", daemon=True)
        self._dispatcher.start()

    def close(self) -> None:
        """Drop queued events and retry no more; running invocations go on."""
        with self._cond:
            self._stopping = True
            dropped = len(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        if dropped:
            self._console.line("lambda", f"dropped {dropped} queued event(s) on shutdown")

    def join(self, timeout: float) -> None:
        for thread in [self._dispatcher, *list(self._threads)]:
            if thread is not None:
                thread.join(timeout)
        self._dispatcher = None

    def put(self, fn: LambdaFunction, event: bytes) -> str:
        """Queue an event; return its request id."""
        request_id = str(uuid.uuid4())
        self._enqueue(PendingEvent(0.0, 0, fn, event or b"{}", request_id), delay=0.0)
        return request_id

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or running."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._slots.total():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))
        return True

    def _enqueue(self, job: PendingEvent, delay: float) -> None:
        """Queue an event (or its retry: the same request id and receipt time)."""
        with self._cond:
            if self._stopping:
                return
            self._seq += 1
            job.due, job.seq = time.monotonic() + delay, self._seq
            self._pending.append(job)
            self._cond.notify_all()

    def _dispatch(self) -> None:
        with self._cond:
            while not self._stopping:
                self._housekeeping()
                for job in self._take_too_old():
                    self._give_up(job, destinations.EVENT_AGE_EXCEEDED)
                job = self._take_ready()
                if job is None:
                    self._cond.wait(self._next_wake())
                    continue
                self._slots.take(job.function)
                thread = threading.Thread(
                    target=self._run, args=(job,), name="lambda-async", daemon=True
                )
                self._threads.add(thread)
                thread.start()

    def _take_ready(self) -> PendingEvent | None:
        now = time.monotonic()
        for job in sorted(self._pending):
            if job.due <= now and self._slots.has_room(job.function):
                self._pending.remove(job)
                return job
        return None

    def _take_too_old(self) -> list[PendingEvent]:
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

    def _run(self, job: PendingEvent) -> None:
        try:
            if destinations.dropped_by_fault(job.request_id, self.settings.fault_drop_events):
                result = self._injected_failure(job)
            else:
                result = self._execute(job.function, job.event, job.request_id)
            if result.errored and not self._stopping:
                self._retry_or_give_up(job, result)
        finally:
            self._slots.release(job.function)
            self._threads.discard(threading.current_thread())

    def _injected_failure(self, job: PendingEvent) -> InvocationResult:
        """The fault hook: this attempt fails as if the environment had crashed."""
        name = f"lambda:{job.function.function_name}"
        self._console.line(name, f"fault: event {job.request_id} attempt {job.attempt + 1} failed")
        error = {"errorType": "Runtime.ExitError", "errorMessage": "fault injected"}
        return InvocationResult(json.dumps(error).encode("utf-8"), error["errorType"], "")

    def _retry_or_give_up(self, job: PendingEvent, result: InvocationResult) -> None:
        """AWS's asynchronous retry policy: a few more attempts, with growing delays, then
        the on-failure destination."""
        name = f"lambda:{job.function.function_name}"
        retries = _max_retries(job.function)
        if job.attempt >= retries:
            self._console.line(name, f"event {job.request_id} failed {job.attempt + 1} time(s)")
            self._give_up(job, destinations.RETRIES_EXHAUSTED, json.loads(result.payload))
            return
        delays = self.settings.retry_delays or (0.0,)
        delay = delays[min(job.attempt, len(delays) - 1)]
        self._console.line(name, f"retry {job.attempt + 1} of {retries} in {delay:g} s")
        job.attempt += 1
        self._enqueue(job, delay)

    def _give_up(self, job: PendingEvent, condition: str, error: Any = None) -> None:
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


def _max_retries(fn: LambdaFunction) -> int:
    config = destinations.invoke_config(fn)
    return int(config.get("MaximumRetryAttempts", DEFAULT_MAX_RETRIES))
