"""``python -m localcloud demo``: a file through the batch transform and the endpoint agree."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from localcloud.settings import REPO_ROOT
from tests.support import free_port

pytestmark = pytest.mark.e2e


def test_demo_prints_identical_batch_and_endpoint_predictions(
    tmp_path: Path, unused_port: int, processes_using: Callable[[str], list[psutil.Process]]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "localcloud", "demo", "--port", str(unused_port),
         "--endpoint-port", str(free_port()), "--state-dir", str(tmp_path / "state")],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )  # fmt: skip

    log = (tmp_path / "state" / "demo.log").read_text()
    assert result.returncode == 0, result.stdout + result.stderr + log[-4000:]
    assert "predictions written" in result.stdout
    assert "100 rows, model example version 1: batch and endpoint are identical" in result.stdout
    assert processes_using(f"http://127.0.0.1:{unused_port}") == []
    assert "Task timed out" not in log


def test_demo_whose_reader_goes_away_still_stops_every_process(
    tmp_path: Path, unused_port: int, processes_using: Callable[[str], list[psutil.Process]]
) -> None:
    """`python -m localcloud demo | head -1`: the pipe closes after the first line; the next
    print fails, and the demo must still stop the tasks it started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localcloud", "demo", "--port", str(unused_port),
         "--endpoint-port", str(free_port()), "--state-dir", str(tmp_path / "state")],
        cwd=REPO_ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"starting the local cloud")
        process.stdout.close()
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "state" / "demo.log").read_text()
    assert "has started 1 task(s)" in log, log[-4000:]  # there was a task to stop
    assert processes_using(f"http://127.0.0.1:{unused_port}") == [], log[-4000:]
