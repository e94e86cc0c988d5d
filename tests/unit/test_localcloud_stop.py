"""``localcloud up`` stops on a signal, whichever of its threads the kernel hands it to."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A SIGTERM raised in another thread: CPython runs the handler in the main thread only, and
# a main thread blocked without a timeout (threading.Event.wait()) never wakes up to run it.
PROGRAM = textwrap.dedent(
    """
    import signal, threading
    from localcloud.cli import StopRequest

    stop = StopRequest()

    def on_signal(number, frame):
        stop.count += 1

    signal.signal(signal.SIGTERM, on_signal)
    started = threading.Event()

    def other_thread():
        started.wait()
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=other_thread).start()
    started.set()
    stop.wait()
    print("stopped", stop.count)
    """
)


def test_a_signal_delivered_to_another_thread_stops_the_wait() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=REPO, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["stopped", "1"]
