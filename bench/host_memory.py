"""Memory the guest kernel hands back to the host, and waiting until it has.

This machine is a virtual machine whose balloon driver reports free memory to the host
(free page reporting): about two seconds after a process frees a few hundred MB, the
kernel gives those pages back, and the next process to allocate them waits while the host
supplies fresh ones. Measured here, a worker that touches ~600 MB spent 0.4-0.5 s more
system CPU when the memory it got had been handed back than when it reused pages another
process had just freed (bench/RESULTS.md, "Memory handed back to the host"). Which side of
a paired run got the handed-back memory decided the pair by up to 1.7x, so each measured
side starts once the hand-back has stopped: every side then starts from the same state,
the one a new task on a new machine starts from.
"""

from __future__ import annotations

import time
from pathlib import Path

REPORTED_KIB = Path("/sys/module/page_reporting/parameters/reported_kib")
QUIET_SECONDS = 2.5  # longer than the kernel's reporting delay (2 s)
SETTLE_DEADLINE = 20.0


def reported_mib() -> float | None:
    """MiB the kernel has handed back to the host since it started; None where it does not
    report free memory (no balloon, or an older kernel)."""
    try:
        return int(REPORTED_KIB.read_text(encoding="ascii")) / 1024
    except (OSError, ValueError):
        return None


def settle(quiet: float = QUIET_SECONDS, deadline: float = SETTLE_DEADLINE) -> float:
    """Wait until the kernel has handed back what was freed (the count unchanged for
    `quiet` seconds), at most `deadline` seconds; the seconds waited."""
    started = time.monotonic()
    last, since = reported_mib(), started
    if last is None:
        return 0.0
    while time.monotonic() - since < quiet and time.monotonic() - started < deadline:
        time.sleep(0.1)
        now = reported_mib()
        if now != last:
            last, since = now, time.monotonic()
    return time.monotonic() - started
