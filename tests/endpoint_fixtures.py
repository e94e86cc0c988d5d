"""Helpers for the endpoint's integration tests: the real server as a subprocess.

`EndpointServer` runs `python -m service serve` in its own process group, waits
until every server process reports ready, and is always stopped (process group
killed) by the fixture that started it. Bundles are written the way an operator
updates a model: data files first, the manifest last, each by an atomic rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parent.parent
READY_SECONDS = 90.0


class EndpointServer:
    """`python -m service serve` on 127.0.0.1 with the given settings."""

    def __init__(self, log_path: Path, **settings: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"API_KEY", "WORKERS", "THREADS", "MAX_REQUEST_MB", "MODEL_URI"}
        }
        python_path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        python_path = [*map(str, settings.pop("extra_path", [])), *python_path]
        self.env.update(
            {
                "PYTHONPATH": os.pathsep.join(python_path),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WORKERS": "2",
                "LOG_LEVEL": "INFO",
            }
        )
        self.env.update({key.upper(): str(value) for key, value in settings.items()})
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EndpointServer:
        return self.launch().until_ready()

    def launch(self) -> EndpointServer:
        """Start the server without waiting for it: several can load their models at once."""
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def until_ready(self) -> EndpointServer:
        wait_for(self._ready, READY_SECONDS, f"the endpoint on {self.url} to report ready")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            pytest.fail(f"the server exited with {self.process.returncode}:\n{self.log()}")
        return "serving http://" in self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def children(self) -> list[int]:
        import psutil

        assert self.process is not None
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """Finalizer: nothing the server started may outlive the test."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def model_version(response: requests.Response) -> str:
    return response.headers["X-Model-Version"]


def metric(text: str, name: str, /, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" (\S+)$"
    for line in text.splitlines():
        match = re.match(pattern, line)
        if match:
            return float(match.group(1))
    return None


def publish_bundle(
    source: Path, dest: Path, manifest_changes: dict[str, Any] | None = None
) -> None:
    """Copy a bundle into `dest` as an operator would: files first, manifest last, atomically."""
    dest.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / "manifest.json").read_text())
    for entry in manifest["files"].values():
        _replace(dest / entry["path"], (source / entry["path"]).read_bytes())
    manifest.update(manifest_changes or {})
    _replace(dest / "manifest.json", json.dumps(manifest, indent=1).encode())


def publish_with_bad_hash(source: Path, dest: Path, version: str) -> None:
    """A new manifest whose model sha256 does not match the model file."""
    manifest = json.loads((source / "manifest.json").read_text())
    files = dict(manifest["files"])
    files["model"] = {**files["model"], "sha256": hashlib.sha256(b"something else").hexdigest()}
    publish_bundle(source, dest, {"version": version, "files": files})


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def copy_bundle(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest
