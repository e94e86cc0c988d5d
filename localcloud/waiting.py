"""Wait on a condition with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str = "condition",
    interval: float = 0.05,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return the first truthy value of ``condition()``; TimeoutError names ``what``.

    ``clock`` and ``sleep`` let a caller with its own pacing (tests that must not wait)
    drive the same loop.
    """
    deadline = clock() + timeout
    while True:
        value = condition()
        if value:
            return value
        if clock() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        sleep(interval)
