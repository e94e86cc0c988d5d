"""One wrk run: requests, latencies with and without wrk's coordinated-omission correction,
errors, and wrk's own CPU time.

`bench/wrk/post.lua` POSTs one body and prints one JSON line at the end, and writes wrk's
latency histogram to a file, from which `bench.latency` takes the correction back out.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
from pathlib import Path

from bench.latency import expected_interval, percentile, read_histogram, uncorrect
from bench.stats import DATA_DIR

LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
HISTOGRAM = DATA_DIR / "wrk-histogram.txt"
ERRORS = ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")


def run_wrk(
    url: str, body: Path, content_type: str, connections: int, seconds: float, keep_alive: bool
) -> dict:
    """One wrk run; latencies with and without wrk's coordinated-omission correction, and
    wrk's own CPU seconds."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    if not keep_alive:
        command += ["-H", "Connection: close"]
    command += ["-s", str(LUA), url]
    HISTOGRAM.unlink(missing_ok=True)
    env = dict(
        os.environ,
        BENCH_BODY=str(body),
        BENCH_TYPE=content_type,
        BENCH_HISTOGRAM=str(HISTOGRAM),
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            result = json.loads(line[6:])
            result["errors"] = sum(result[k] for k in ERRORS)
            result["wrk_cpu_seconds"] = (
                after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            )
            if result["histogram"]:
                add_uncorrected(result, connections)
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


def add_uncorrected(result: dict, connections: int) -> None:
    interval = expected_interval(result["duration_us"], result["requests"], connections)
    raw = uncorrect(read_histogram(HISTOGRAM), interval)
    result["raw_samples"] = sum(raw.values())  # = requests unless a latency was off wrk's scale
    result["p50_raw_us"] = percentile(raw, 50)
    result["p99_raw_us"] = percentile(raw, 99)
