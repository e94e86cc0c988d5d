"""A received message's lease: visibility changes, the heartbeat that extends it while a
file is in work, and the signals that make a worker hand it back."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from service.worker_logs import log_event

STOP_CHECK_SECONDS = 0.1


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
