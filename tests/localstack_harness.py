"""LocalStack for the integration suites: install it, start it on loopback, run a command, stop it.

    python -m tests.localstack_harness run [--venv DIR] -- pytest tests/integration/...

localstack-core 4.9.2 (requirements-localstack.txt) runs in host mode from its own virtual
environment, created on first use, because it pins an older boto3 than ours. It starts from an
empty folder under a temporary directory, with the variables that keep it on 127.0.0.1 and
offline (no DNS server, no certificate download, no analytics). The command runs with
TEST_AWS_BACKEND=localstack and LOCALSTACK_ENDPOINT set, which tests/backends.py reads.
LocalStack's whole process group is stopped afterwards, whatever the command did.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.waiting import wait_until
from tests.support import free_port, make_venv

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements-localstack.txt"
DEFAULT_VENV = REPO / ".tox" / "localstack-venv"
LOOPBACK = "127.0.0.1"
HEALTH_PATH = "/_localstack/health"
STOP_GRACE_SECONDS = 15.0
START_ATTEMPTS = 3
MARKER = "requirements.sha256"
# localstack-core 4.9.2 keeps S3 object data under a fixed /tmp/localstack-s3-storage, not under
# FILESYSTEM_ROOT, and leaves a folder per bucket there: point it into our folder before start.
LAUNCH = """
import sys
import localstack.services.s3.provider as s3_provider
s3_provider.DEFAULT_S3_TMP_DIR = sys.argv[1]
from localstack.runtime.main import main
main()
"""


class HarnessError(RuntimeError):
    """LocalStack could not be installed, started or stopped; the message says what to check."""


class ExitedEarly(HarnessError):
    """The LocalStack process ended before it answered its health check."""


def log(message: str) -> None:
    print(f"[localstack] {message}", file=sys.stderr, flush=True)


# --- install ----------------------------------------------------------------------------------


def ensure_venv(target: Path, requirements: Path = REQUIREMENTS) -> Path:
    """Create `target` with LocalStack installed, unless it holds this requirements file already.

    A hash of the requirements file marks a finished install, so an interrupted or outdated
    one is rebuilt from scratch. Returns the venv's Python.
    """
    target = target.absolute()
    python = target / "bin" / "python"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    marker = target / MARKER
    if python.exists() and marker.exists() and marker.read_text().strip() == digest:
        return python
    log(f"installing {requirements.name} into {target} (once)")
    started = time.monotonic()
    try:
        make_venv(target, requirements)
    except subprocess.CalledProcessError:
        raise HarnessError(f"installing -r {requirements} into {target} failed") from None
    check = [str(python), "-c", "import localstack.runtime.main"]
    if subprocess.run(check, check=False).returncode != 0:
        raise HarnessError(f"LocalStack does not import in {target}")
    marker.write_text(digest + "\n")
    log(f"installed in {time.monotonic() - started:.0f} s")
    return python


# --- start and stop ---------------------------------------------------------------------------


def localstack_env(port: int, folder: Path, python: Path) -> dict[str, str]:
    """A minimal environment: each variable keeps LocalStack on loopback, offline and in `folder`.

    Nothing of ours (AWS_*, PYTHONPATH) leaks in: LocalStack's internal clients must not
    follow our endpoint variables.
    """
    address = f"{LOOPBACK}:{port}"
    kept = {name: os.environ[name] for name in ("LANG", "LC_ALL", "TZ") if name in os.environ}
    return {
        **kept,
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "HOME": str(folder / "home"),
        "TMPDIR": str(folder / "tmp"),
        "XDG_CACHE_HOME": str(folder / "cache"),
        "FILESYSTEM_ROOT": str(folder / "fs"),
        "OVERRIDE_IN_DOCKER": "0",
        "GATEWAY_SERVER": "hypercorn",
        "GATEWAY_LISTEN": address,
        "LOCALSTACK_HOST": address,
        "DNS_ADDRESS": "0",
        "SKIP_SSL_CERT_DOWNLOAD": "1",
        "DISABLE_EVENTS": "1",
        "SQS_DISABLE_CLOUDWATCH_METRICS": "1",
        "SQS_ENDPOINT_STRATEGY": "path",
        "PYTHONUNBUFFERED": "1",
    }


@dataclass
class LocalStack:
    """One LocalStack process (and its children) in its own process group."""

    python: Path
    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "localstack.log"

    def start(self) -> None:
        """Start it from an empty working folder; its output goes to localstack.log."""
        workdir = self.folder / "run"
        for name in ("run", "home", "tmp", "cache", "fs", "s3"):
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as output:
            self.process = subprocess.Popen(
                [str(self.python), "-c", LAUNCH, str(self.folder / "s3")],
                cwd=workdir,
                env=localstack_env(self.port, self.folder, self.python),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float) -> dict[str, object]:
        """Poll /_localstack/health until it answers; fail at once if the process exits."""
        process = self.process
        assert process is not None

        def healthy() -> dict[str, object] | None:
            if process.poll() is not None:
                raise ExitedEarly(
                    f"LocalStack exited with {process.returncode} before it was healthy"
                )
            return self.health()

        try:
            return wait_until(healthy, timeout, f"LocalStack on {self.endpoint} to be healthy", 0.2)
        except TimeoutError as error:
            raise HarnessError(str(error)) from None

    def health(self) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(self.endpoint + HEALTH_PATH, timeout=2) as response:
                document = json.load(response)
        except (OSError, ValueError):
            return None
        return document if isinstance(document, dict) and "services" in document else None

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM to the whole group, SIGKILL to whatever is left after `grace` seconds."""
        if self.process is None:
            return
        group = self.process.pid
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        if not _group_gone(group, deadline - time.monotonic()):
            log(f"LocalStack did not stop within {grace:.0f} s of SIGTERM: SIGKILL")
            _signal_group(group, signal.SIGKILL)
            self.process.wait(timeout=10)
            if not _group_gone(group, 10):
                raise HarnessError(f"processes of LocalStack's group {group} survived SIGKILL")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def _group_gone(group: int, seconds: float) -> bool:
    """Whether every process of the group has exited within ``seconds``."""
    try:
        wait_until(lambda: not _group_alive(group), max(seconds, 0.0), "the group", 0.1)
    except TimeoutError:
        return False
    return True


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_healthy(python: Path, folder: Path, timeout: float) -> LocalStack:
    """LocalStack answering its health check on a free port.

    A start that exits early (another process took the port in between) is retried on a
    new port; any failure stops what was started.
    """
    attempt = 1
    while True:
        server = LocalStack(python, folder)
        started = time.monotonic()
        server.start()
        try:
            server.wait_healthy(timeout)
        except BaseException as error:
            server.stop()
            if isinstance(error, ExitedEarly) and attempt < START_ATTEMPTS:
                log(f"{error}; trying another port")
                attempt += 1
                continue
            if isinstance(error, HarnessError):
                tail = server.log_tail()
                raise HarnessError(f"{error}; {server.log_path}:\n{tail}") from None
            raise
        log(f"healthy on {server.endpoint} in {time.monotonic() - started:.1f} s")
        return server


@contextlib.contextmanager
def running_localstack(python: Path, folder: Path, timeout: float) -> Iterator[LocalStack]:
    """LocalStack healthy for the block's duration, stopped afterwards whatever happens."""
    server = start_healthy(python, folder, timeout)
    try:
        yield server
    finally:
        stopping = time.monotonic()
        server.stop()
        log(f"stopped in {time.monotonic() - stopping:.1f} s")


# --- run a command ----------------------------------------------------------------------------


def run_command(command: Sequence[str], env: dict[str, str]) -> int:
    """Run the command to its end and return its exit status (128 + N after signal N).
    SIGTERM is passed on; on Ctrl-C (which it gets from the terminal too) it is left to
    finish its own clean-up."""
    child = subprocess.Popen(list(command), env=env)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: child.send_signal(signum))
    try:
        while True:
            try:
                status = child.wait()
                return 128 - status if status < 0 else status
            except KeyboardInterrupt:
                log("interrupted: waiting for the command to finish")
    finally:
        signal.signal(signal.SIGTERM, previous)
        if child.poll() is None:
            child.kill()
            child.wait()


def run(command: Sequence[str], venv_dir: Path, timeout: float, keep: bool) -> int:
    """Install if needed, start LocalStack, run the command against it, stop LocalStack."""
    python = ensure_venv(venv_dir)
    folder = Path(tempfile.mkdtemp(prefix="localstack-"))
    status = 1
    try:
        with running_localstack(python, folder, timeout) as server:
            env = {
                **os.environ,
                "TEST_AWS_BACKEND": "localstack",
                "LOCALSTACK_ENDPOINT": server.endpoint,
            }
            started = time.monotonic()
            status = run_command(command, env)
            log(f"command exited with {status} after {time.monotonic() - started:.0f} s")
    finally:
        if keep or status != 0:
            log(f"LocalStack's folder and log kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.localstack_harness", description=__doc__)
    commands = parser.add_subparsers(dest="action", required=True)
    install = commands.add_parser("install", help="create the LocalStack venv if needed")
    install.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    runner = commands.add_parser("run", help="run a command against a fresh LocalStack")
    runner.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    runner.add_argument("--health-timeout", type=float, default=120.0)
    runner.add_argument("--keep", action="store_true", help="keep LocalStack's folder and log")
    runner.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.action == "install":
            ensure_venv(args.venv)
            return 0
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command after --")
        return run(command, args.venv, args.health_timeout, args.keep)
    except HarnessError as error:
        log(str(error))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
