"""Servers the benchmarks start: each in its own process group, all stopped on the way out.

`Managed` stops its whole group (SIGTERM, then SIGKILL after a grace period), and
`stop_all` runs on normal exit, on an exception and on Ctrl-C / SIGTERM, so a benchmark
never leaves a server behind.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import psutil

from localcloud.waiting import wait_until

LOOPBACK = "127.0.0.1"
_RUNNING: list[Managed] = []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class Managed:
    """A child in its own session; its output goes to a log file and a short tail."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.log_path = log
        self.tail: deque[str] = deque(maxlen=60)
        self._on_line = on_line
        log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            list(argv),
            cwd=str(cwd) if cwd else None,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _RUNNING.append(self)
        self._reader = threading.Thread(target=self._read, name=f"log-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        stream: IO[bytes] | None = self.process.stdout
        assert stream is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                log.write(line + "\n")
                log.flush()
                self.tail.append(line)
                if self._on_line is not None:
                    self._on_line(line)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants now."""
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU of the process tree so far (children that exited are lost)."""
        total = 0.0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def stop(self, signum: int = signal.SIGTERM, grace: float = 40.0) -> int | None:
        """Signal the process, wait, then SIGKILL its whole group."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._reader.join(5)
        if self in _RUNNING:
            _RUNNING.remove(self)
        return self.process.poll()

    def describe(self) -> str:
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(self.tail)


def stop_all() -> None:
    """Stop every server still running, newest first."""
    for managed in reversed(list(_RUNNING)):
        managed.stop(grace=20.0)


def _on_terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    """Stop our servers at exit, and turn SIGTERM into the same path as Ctrl-C."""
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_terminate)


def wait_ready(server: Managed, url: str, timeout: float = 180) -> None:
    """Until `url` answers 200; fails at once, with the server's output, if it exits."""

    def ready() -> bool:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.describe()}")
        return http_status(url) == 200

    wait_until(ready, timeout, f"{server.name} {url}")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None
