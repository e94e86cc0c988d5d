"""Child processes in their own process group, so stopping one never leaves a grandchild behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from localcloud.console import Console

# Variables a local child needs to run at all; everything else comes from its definition.
PASS_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")
DUMMY_KEY = "localcloud"


def aws_environment(endpoint_url: str, region: str) -> dict[str, str]:
    """What a child needs to reach the local cloud and never a real account."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": DUMMY_KEY,
        "AWS_SECRET_ACCESS_KEY": DUMMY_KEY,
        "AWS_SESSION_TOKEN": DUMMY_KEY,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def base_environment() -> dict[str, str]:
    """The few host variables every child inherits, plus unbuffered Python output."""
    env = {key: os.environ[key] for key in PASS_THROUGH if key in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A running child whose output goes to the console; ``stop`` ends its whole group.

    A watcher thread waits for the process without reaping it, kills what is left of its
    process group while the PID cannot be reused, then reaps it.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        console: Console,
        env: Mapping[str, str],
        cwd: Path | str,
        on_line: Callable[[str], bool | None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        interactive: bool = False,
    ) -> None:
        """``interactive``: a stdin pipe kept open for ``send`` (else /dev/null)."""
        self.name = name
        self._on_exit = on_exit
        self._exited = threading.Event()
        self._reap_lock = threading.Lock()
        self._process = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        self._reader = console.pipe(name, self._process.stdout, on_line)
        threading.Thread(target=self._watch, name=f"watch-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the child has exited, else None."""
        return self._process.returncode if self._exited.is_set() else None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit and the last line of output; None if still running at the deadline."""
        if not self._exited.wait(timeout):
            return None
        self._reader.join(5)
        return self._process.returncode

    def stop(self, grace: float) -> int:
        """SIGTERM the child, SIGKILL its group after ``grace`` seconds, like ``docker stop``.

        Only the main process gets SIGTERM (it is PID 1 of a container); whatever is left
        of the group when it exits is killed, as a container's teardown would.
        """
        if not self._exited.is_set():
            if grace > 0:
                self._signal_main(signal.SIGTERM)
            if not self._exited.wait(grace):
                self._signal_group(signal.SIGKILL)
        code = self.wait()
        assert code is not None
        return code

    def kill(self) -> int:
        """SIGKILL the group at once (timeouts)."""
        return self.stop(0)

    def _watch(self) -> None:
        os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOWAIT)
        self._signal_group(signal.SIGKILL)
        with self._reap_lock:
            code = self._process.wait()
            self._exited.set()
        if self._on_exit is not None:
            self._on_exit(code)

    def _signal_main(self, signum: int) -> None:
        with self._reap_lock, contextlib.suppress(ProcessLookupError):
            if not self._exited.is_set():
                os.kill(self._process.pid, signum)

    def _signal_group(self, signum: int) -> None:
        with self._reap_lock, contextlib.suppress(ProcessLookupError, PermissionError):
            if not self._exited.is_set():
                os.killpg(self._process.pid, signum)

    def send(self, data: bytes) -> bool:
        """Write to an interactive child's stdin; False when it no longer reads."""
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return False
        return True
