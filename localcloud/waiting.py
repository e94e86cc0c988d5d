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
    backoff: float = 1.0,
    max_interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return the first truthy value of ``condition()``; TimeoutError names ``what``.

    After each miss the pause is multiplied by ``backoff``, up to ``max_interval``: a caller
    polling a service that is coming back asks often at first and gently later.
    ``clock`` and ``sleep`` let a caller with its own pacing (tests that must not wait)
    drive the same loop.
    """
    deadline = clock() + timeout
    pause = interval
    while True:
        value = condition()
        if value:
            return value
        if clock() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        sleep(pause)
        pause *= backoff
        if max_interval is not None:
            pause = min(pause, max_interval)
