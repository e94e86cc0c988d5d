"""``python -m localcloud up`` run the way a person runs it: a subprocess in its own group.

The end-to-end tests talk to it only as a user would: boto3 against its AWS port and HTTP
against the endpoint. While it runs, a sampling thread records every process it starts
(ECS tasks, their forks, Lambda invocations), so a stop can prove that none of them is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import psutil
from botocore.config import Config

from localcloud.procs import aws_environment
from tests.support import free_port, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_PARAMS = REPO_ROOT / "infra" / "params" / "local.json"
LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
DUMMY_KEY = "e2e"
STACK_NAME = "model-endpoint-local"
# The stack's one-minute rescale rule then fires every 6 s.
SCHEDULE_SCALE = 0.1
READY_SECONDS = 180.0
STOP_SECONDS = 90.0
GONE_SECONDS = 30.0
SAMPLE_SECONDS = 0.1
READY_LINE = "ready (Ctrl-C stops everything)"
STOPPED_LINE = "| stopped"
WORKER_COMMAND = "-m service worker"
ENDPOINT_COMMAND = "-m service serve"


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) == 0


def listener_pid(port: int) -> int | None:
    """The process listening on ``port`` on the loopback interface, when it can be seen."""
    with contextlib.suppress(psutil.AccessDenied, OSError):
        for connection in psutil.net_connections("tcp"):
            local = connection.laddr
            if local and local.port == port and connection.status == psutil.CONN_LISTEN:
                return connection.pid
    return None


def port_owner(port: int) -> str:
    """Who listens on ``port``, for a failure message a person can act on."""
    pid = listener_pid(port)
    with contextlib.suppress(psutil.Error, TypeError, ValueError):
        return f"pid {pid}: {' '.join(psutil.Process(pid).cmdline())}"
    return "an unknown process"


def write_params(path: Path, overrides: dict[str, str]) -> Path:
    """The local parameter file with a few values changed, as a user would edit a copy."""
    entries = json.loads(LOCAL_PARAMS.read_text(encoding="utf-8"))
    known = {entry["ParameterKey"] for entry in entries}
    unknown = set(overrides) - known
    assert not unknown, f"not in {LOCAL_PARAMS.name}: {sorted(unknown)}"
    for entry in entries:
        entry["ParameterValue"] = overrides.get(entry["ParameterKey"], entry["ParameterValue"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Seen:
    """One process recorded while the local cloud ran."""

    pid: int
    created: float
    command: str

    def still_running(self) -> bool:
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.created) > 0.01:
                return False
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


class ProcessTree:
    """Samples the descendants of one process until stopped; short-lived ones included."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.seen: dict[tuple[int, float], Seen] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-tree", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def current(self) -> list[Seen]:
        """The root and its descendants now (and recorded as seen)."""
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        found = []
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                found.append(Seen(process.pid, process.create_time(), " ".join(process.cmdline())))
        with self._lock:
            for item in found:  # the latest: a child first shows its parent's command line,
                key = (item.pid, item.created)  # until it has exec'd its own; an exiting
                if item.command or key not in self.seen:  # one shows none
                    self.seen[key] = item
        return found

    def all_seen(self) -> list[Seen]:
        with self._lock:
            return list(self.seen.values())

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.current()


class LocalCloudProcess:
    """One ``python -m localcloud up`` subprocess with a private state folder and port."""

    def __init__(
        self,
        work_dir: Path,
        parameters: dict[str, str] | None = None,
        schedule_scale: float = SCHEDULE_SCALE,
        extra_args: Sequence[str] = (),
        repo_root: Path = REPO_ROOT,
    ) -> None:
        self.work_dir = work_dir
        self.repo_root = repo_root
        self.extra_args = list(extra_args)
        self.params_file = write_params(work_dir / "params.json", parameters or {})
        self.port = free_port()
        self.endpoint_port = free_port()
        self.aws_url = f"http://{LOOPBACK}:{self.port}"
        self.log_path = work_dir / "localcloud.log"
        self.schedule_scale = schedule_scale
        self.outputs: dict[str, str] = {}
        self.parameters: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.tree: ProcessTree | None = None
        self._tail: deque[str] = deque(maxlen=80)
        self._lines_seen: list[str] = []
        self._reader: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Start ``up`` in its own process group; fail at once if the endpoint port is taken."""
        if port_in_use(self.endpoint_port):
            raise AssertionError(
                f"port {self.endpoint_port}, free when chosen, is now taken by "
                f"{port_owner(self.endpoint_port)}: run again"
            )
        command = [
            sys.executable,
            "-m",
            "localcloud",
            "up",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.work_dir / "state"),
            "--schedule-scale",
            str(self.schedule_scale),
            "--params",
            str(self.params_file),
            "--endpoint-port",
            str(self.endpoint_port),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(NO_COLOR="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            command,
            cwd=self.repo_root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.tree = ProcessTree(self.process.pid)
        self.tree.start()
        self._reader = threading.Thread(target=self._read_output, name="up-output", daemon=True)
        self._reader.start()

    def wait_ready(self) -> None:
        """Wait for the ready line, then read the stack and wait for the endpoint's /ping."""
        wait_for(
            lambda: self.has_line(READY_LINE) or self.exited(),
            READY_SECONDS,
            "the local cloud's ready line",
            context=self.log_tail,
        )
        if self.exited():
            raise AssertionError(
                f"localcloud up exited with {self.exit_code()}:\n{self.log_tail()}"
            )
        stack = self.client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"][0]
        self.outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        self.parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        endpoint = urlsplit(self.outputs["EndpointUrl"])
        assert (endpoint.hostname, endpoint.port) == (LOOPBACK, self.endpoint_port), endpoint
        wait_for(
            lambda: self.ping() == 200,
            60,
            "the endpoint's /ping to answer 200",
            context=self.log_tail,
        )
        owner = listener_pid(self.endpoint_port)
        ours = {seen.pid for seen in self.processes("")}
        if owner is not None and owner not in ours:
            raise AssertionError(
                f"port {self.endpoint_port} answers, but from {port_owner(self.endpoint_port)}, "
                f"not from this local cloud's endpoint:\n{self.log_tail()}"
            )

    def interrupt(self) -> None:
        """What Ctrl-C in the terminal does: SIGINT to the foreground process group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)

    def terminate(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = STOP_SECONDS) -> int:
        """The exit code of ``up``; fail if it does not stop in time."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"localcloud up still running {timeout:g} s after the signal:\n{self.log_tail()}"
            ) from None
        if self._reader is not None:
            self._reader.join(10)
        return code

    def leftovers(self) -> list[Seen]:
        """Recorded processes still running, and any process still pointed at this cloud."""
        assert self.tree is not None
        left = [seen for seen in self.tree.all_seen() if seen.still_running()]
        known = {seen.pid for seen in left}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.pid in known or process.pid == os.getpid():
                    continue
                if process.environ().get("AWS_ENDPOINT_URL") == self.aws_url:
                    command = " ".join(process.cmdline())
                    left.append(Seen(process.pid, process.create_time(), command))
        return left

    def assert_nothing_left(self) -> None:
        """Every process the cloud started is gone within a deadline, and its ports are free."""
        assert self.tree is not None
        self.tree.stop()
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not self.leftovers(), GONE_SECONDS, "the local cloud's processes")
        left = self.leftovers()
        for seen in left:
            with contextlib.suppress(psutil.Error, OSError):
                psutil.Process(seen.pid).kill()
        assert left == [], "processes left after the local cloud stopped:\n" + "\n".join(
            f"  {seen.pid} {seen.command}" for seen in left
        )
        assert not port_in_use(self.port), f"AWS port {self.port} still answers"
        assert not port_in_use(self.endpoint_port), f"port {self.endpoint_port} still answers"

    def kill_everything(self) -> None:
        """Last resort after a failed test: SIGKILL whatever of the cloud still runs."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.tree is not None:
            for seen in self.tree.all_seen():
                if seen.still_running():
                    with contextlib.suppress(psutil.Error):
                        psutil.Process(seen.pid).kill()

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    # -- output ------------------------------------------------------------------------

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with self.log_path.open("w", encoding="utf-8") as log:
            for raw in iter(self.process.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                log.write(line + "\n")
                log.flush()
                self._tail.append(line)
                if line.rstrip().endswith((READY_LINE, STOPPED_LINE)):
                    self._lines_seen.append(line)

    def log_text(self) -> str:
        """Everything the cloud printed so far."""
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def has_line(self, text: str) -> bool:
        return any(line.rstrip().endswith(text) for line in self._lines_seen)

    def log_tail(self) -> str:
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(self._tail)

    # -- as a user -----------------------------------------------------------------------

    def client(self, service: str) -> Any:
        """A boto3 client for the local cloud: its URL, us-east-1, dummy keys."""
        return boto3.client(
            service,
            endpoint_url=self.aws_url,
            region_name=REGION,
            aws_access_key_id=DUMMY_KEY,
            aws_secret_access_key=DUMMY_KEY,
            config=Config(retries={"mode": "standard", "max_attempts": 5}),
        )

    def user_environment(self) -> dict[str, str]:
        """What a person exports before running scripts against the local cloud."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(aws_environment(self.aws_url, REGION))
        return env

    @property
    def endpoint(self) -> str:
        return self.outputs["EndpointUrl"]

    def ping(self) -> int | None:
        url = self.outputs.get("EndpointUrl", f"http://{LOOPBACK}:{self.endpoint_port}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=3) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code
        except OSError:
            return None

    def processes(self, command: str) -> list[Seen]:
        """The cloud's processes running now whose command line contains ``command``."""
        assert self.tree is not None
        return [seen for seen in self.tree.current() if command in seen.command]

    def function_log(self) -> list[dict[str, Any]]:
        """The batch trigger's JSON log lines, read from its CloudWatch log group."""
        logs = self.client("logs")
        group = f"/aws/lambda/{self.outputs['FunctionName']}"
        entries = []
        for page in logs.get_paginator("filter_log_events").paginate(logGroupName=group):
            for event in page["events"]:
                with contextlib.suppress(ValueError):
                    entry = json.loads(event["message"])
                    if isinstance(entry, dict):
                        entries.append(entry)
        return entries
