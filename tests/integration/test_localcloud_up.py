"""``python -m localcloud up`` deploys the real stack, serves, and stops without leftovers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import boto3
import psutil

from localcloud.settings import LOOPBACK, REPO_ROOT
from localcloud.waiting import wait_until
from tests.support import free_port


def port_in_use(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((LOOPBACK, port)) == 0


class Output:
    """The child's output lines, read in a thread so the pipe never fills."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            self.lines.append(raw.decode("utf-8", "replace").rstrip())

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def __str__(self) -> str:
        return "\n".join(self.lines[-60:])


def test_up_reaches_ready_and_sigterm_leaves_no_process(
    tmp_path: Path, unused_port: int, processes_using: Callable[[str], list[psutil.Process]]
) -> None:
    port = unused_port
    endpoint_port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcloud",
            "up",
            "--port",
            str(port),
            "--endpoint-port",
            str(endpoint_port),
            "--state-dir",
            str(tmp_path / "state"),
            "--schedule-scale",
            "0.1",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = Output(process)
    tree: list[psutil.Process] = []
    try:
        wait_until(lambda: output.has("| ready") or process.poll() is not None, 120, "ready")
        assert process.poll() is None, f"up exited early:\n{output}"
        root = psutil.Process(process.pid)
        tree = [root, *root.children(recursive=True)]
        commands = [" ".join(p.cmdline()) for p in tree[1:]]
        assert any("-m service serve" in command for command in commands), commands
        assert output.has(f"endpoint http://127.0.0.1:{endpoint_port} healthy"), str(output)
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint_port}/ping", timeout=5) as ping:
            assert ping.status == 200
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="any",
            aws_secret_access_key="any",
        )
        buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert any("-input-" in name for name in buckets), buckets

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, str(output)

        leftovers = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert leftovers == [], leftovers
        assert processes_using(f"http://127.0.0.1:{port}") == []
        assert output.has("| stopped")
        assert not port_in_use(port)
        assert not port_in_use(endpoint_port)
    finally:
        for leftover in [*tree, psutil.Process(process.pid)] if process.poll() is None else tree:
            if leftover.is_running():
                leftover.kill()
