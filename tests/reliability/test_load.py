"""Load: wrk holds 32 connections open against the endpoint on loopback for
RELIABILITY_LOAD_SECONDS (60 by default), each POSTing a single-row JSON request.
Zero errors allowed (non-2xx answers and socket errors), and the resident memory of the
server's process tree after the run stays within 10% of its value after a warm-up.

wrk comes from Debian (`apt-get install -y wrk`); the test installs nothing and skips
when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import requests

from tests.endpoint_fixtures import EndpointServer, metric

pytestmark = pytest.mark.reliability

WRK = shutil.which("wrk")
SECONDS = int(os.environ.get("RELIABILITY_LOAD_SECONDS", "60"))
WARM_UP_SECONDS = max(5, SECONDS // 6)
CONNECTIONS = 32
THREADS = 2
MEMORY_GROWTH = 0.10
# A shared 2-core machine can stall a request for a second; only a timeout this long is
# an error (wrk's own default, 2 s, measures the machine rather than the server).
REQUEST_TIMEOUT = "10s"

SCRIPT = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do
    table.insert(parts, string.format('"%d": %d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "seconds": %.3f, "connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d, "status": %d, "p50_ms": %.3f, "p99_ms": %.3f, "statuses": {%s}}\\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    table.concat(parts, ", ")))
end
"""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    socket_errors: int
    non_2xx: int
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float


def run_wrk(url: str, script: Path, seconds: int) -> LoadResult:
    command = [
        WRK,
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        f"--timeout={REQUEST_TIMEOUT}",
        "-s",
        str(script),
        f"{url}/invocations",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    assert done.returncode == 0, done.stderr
    match = re.search(r"^WRK_RESULT (.*)$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    found = json.loads(match.group(1))
    statuses = found["statuses"]
    return LoadResult(
        requests=found["requests"],
        seconds=found["seconds"],
        socket_errors=sum(found[k] for k in ("connect", "read", "write", "timeout")),
        non_2xx=found["status"]
        + sum(n for code, n in statuses.items() if not code.startswith("2")),
        statuses=statuses,
        p50_ms=found["p50_ms"],
        p99_ms=found["p99_ms"],
    )


def tree_rss(pid: int) -> int:
    """Resident bytes of the server and every process under it."""
    parent = psutil.Process(pid)
    return sum(process.memory_info().rss for process in [parent, *parent.children(True)])


@pytest.fixture(scope="module")
def request_script(tmp_path_factory: pytest.TempPathFactory, good_rows: pd.DataFrame) -> Path:
    row = good_rows.head(1).astype(object).where(good_rows.head(1).notna(), None)
    body = json.dumps({"dataframe_records": row.to_dict(orient="records")})
    lua = (
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n' + SCRIPT
    )
    path = tmp_path_factory.mktemp("wrk") / "single_row.lua"
    path.write_text(lua)
    return path


@pytest.mark.skipif(WRK is None, reason="wrk is not installed: apt-get install -y wrk")
def test_sustained_load_has_no_errors_and_no_memory_growth(
    endpoint: EndpointServer, request_script: Path
) -> None:
    probe = requests.post(
        f"{endpoint.url}/invocations",
        data=json.loads(re.search(r"wrk.body = (.*)", request_script.read_text()).group(1)),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert probe.status_code == 200 and len(probe.json()["predictions"]) == 1, probe.text
    assert endpoint.process is not None

    warm = run_wrk(endpoint.url, request_script, WARM_UP_SECONDS)
    before = tree_rss(endpoint.process.pid)
    load = run_wrk(endpoint.url, request_script, SECONDS)
    after = tree_rss(endpoint.process.pid)

    print(
        f"\nload: {load.requests} requests in {load.seconds:.1f} s "
        f"({load.requests / load.seconds:.0f}/s) over {CONNECTIONS} connections, "
        f"statuses {load.statuses}, socket errors {load.socket_errors}, "
        f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms; warm-up {warm.requests} requests; "
        f"RSS {before / 2**20:.1f} MiB after warm-up, {after / 2**20:.1f} MiB after the run "
        f"({(after - before) / before:+.1%})"
    )
    for result in (warm, load):
        assert result.socket_errors == 0
        assert result.non_2xx == 0, result.statuses
        assert result.requests > 0
    assert after <= before * (1 + MEMORY_GROWTH)
    text = requests.get(f"{endpoint.url}/metrics", timeout=10).text
    served = metric(text, "endpoint_requests_total", route="/invocations", code="200")
    assert served is not None and served >= warm.requests + load.requests
    assert len(endpoint.children()) == 2, "a server process died under load"
