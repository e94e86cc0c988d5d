"""Batch benchmark part `stream`: one worker process from the input in S3 to the output.

The 1M-row file (one row group) and the 10M-row file (row groups of datagen.CHUNK_ROWS) are
put in the local S3 once, each under two keys; per round, alternating the order of the files
and of the trees, each tree's worker (`python -m service worker` from this checkout, and
from every `--compare LABEL=DIR` tree, with that tree's code) transforms each file twice in
a fresh process (the two keys: a new task's first file, then a file it takes once warm),
and the in-process limit (this tree's `transform_file`, local disk in and out) runs on the
same file in this process (warm: it has run on every file before) and twice in a fresh
process (`limit`, below). A fresh process's first large transform is slower than its second
(the first one's memory comes from the kernel, and the host: bench.host_memory), so the
worker's first file is compared with the fresh limit's first run, and its second with the
second run, as well as each with the warm limit. Recorded per file and tree: the worker's
own time for each file (its `file` log line: from taking the message, input in S3, to the
output and report written), rows/s and the ratios, and the process's peak RSS (VmHWM). Also
the CPU seconds of the limit, of the worker (its whole life: two files) and of the local
cloud during the worker's run (half of it: per file), and the worker's first file over the
bound they set on this machine's cores (`bench.batch.stream_bound`): the local S3
shares the cores with the worker here, which it does not on AWS. The limit and each worker
start once the kernel has handed freed memory back to the host (bench.host_memory); the MB
handed back during a worker's run and its system CPU are recorded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import datagen
from bench.batch import (
    MAIN_PARAMETERS,
    datagen_rows,
    load_served_bundle,
    run_worker_once,
    stream_bound,
    transform_locally,
)
from bench.cloud import REPO_ROOT, Cloud
from bench.host_memory import reported_mib, settle
from bench.run import parse_compare
from bench.stats import DATA_DIR, Recorder

FILES = ("1m", "10m")
AGAIN = "-again"  # the second key of each file


def stream(
    cloud: Cloud,
    files: dict[str, Path],
    rounds: int,
    recorder: Recorder,
    work: Path,
    compare: dict[str, Path],
) -> None:
    trees = {"ours": REPO_ROOT, **compare}
    bundle = load_served_bundle(cloud)
    cloud_process = cloud.process
    assert cloud_process is not None
    s3, sqs = cloud.client("s3"), cloud.client("sqs")
    bucket = "bench-stream-input"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName="bench-stream")["QueueUrl"]
    messages = {
        name: [_put(s3, bucket, f"stream/{name}{k}.parquet", files[name]) for k in ("", AGAIN)]
        for name in FILES
    }
    environment = cloud.environment() | cloud.worker_environment()
    environment.update(JOB_QUEUE_URL=queue, IDLE_SECONDS="1", WAIT_SECONDS="1")
    recorder.notes["stream_trees"] = {label: str(tree) for label, tree in trees.items()}
    for name in FILES:  # unmeasured: a first run is up to 3x slower
        transform_locally(files[name], work / "stream-limit.parquet", bundle)
    for number in range(rounds):
        names = FILES if number % 2 == 0 else FILES[::-1]
        labels = list(trees) if number % 2 == 0 else list(trees)[::-1]
        peaks: dict[str, dict[str, float]] = {label: {} for label in trees}
        for name in names:
            rows = datagen_rows(files[name])
            settle()
            started, cpu = time.monotonic(), time.process_time()
            transform_locally(files[name], work / "stream-limit.parquet", bundle)
            limit_cpu = time.process_time() - cpu
            limit_seconds = time.monotonic() - started
            limit = rows / limit_seconds
            recorder.add(f"{name.upper()} rows: limit (in-process, local disk)", "rows/s", limit)
            recorder.add(f"{name.upper()} rows: limit CPU", "s", limit_cpu)
            fresh = _fresh_limit(cloud, files[name], work)
            for run, (seconds, cpu_seconds) in zip(("first", "second"), fresh, strict=True):
                prefix = f"{name.upper()} rows: limit, {run} run in a fresh process"
                recorder.add(prefix, "rows/s", rows / seconds)
                recorder.add(f"{prefix}, CPU", "s", cpu_seconds)
            for label in labels:
                for message in messages[name]:
                    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(message))
                env = dict(environment, OUTPUT_PREFIX=f"bench-stream/{label}/r{number}")
                env["PYTHONPATH"] = str(trees[label])
                log = work / f"stream-{label}-{number}-{name}.log"
                settle()
                cloud_cpu, reported = cloud_process.cpu_seconds(), reported_mib()
                result = run_worker_once(env, log, cwd=trees[label])
                # per file: the worker transforms it twice (its two keys)
                result["cloud_cpu_seconds"] = (cloud_process.cpu_seconds() - cloud_cpu) / 2
                after = reported_mib()
                if reported is not None and after is not None:
                    result["handed_back_mib"] = after - reported
                line, again = _file_lines(log)
                speed = rows / float(line["seconds"])
                bound = stream_bound(limit_seconds, limit_cpu, result["cloud_cpu_seconds"])
                result["bound_ratio"] = bound / float(line["seconds"])
                _record(recorder, f"{name.upper()} rows: {label}", speed, limit, result, line)
                first, second = _record_same_state(
                    recorder, f"{name.upper()} rows: {label}", rows, (line, again), fresh, limit
                )
                peaks[label][name] = result["peak_mib"]
                print(
                    f"stream round {number + 1}/{rounds} {name} {label}: "
                    f"{speed:,.0f} rows/s = {speed / limit:.2f}x limit {limit:,.0f}, "
                    f"peak {result['peak_mib']:.0f} MiB; same state: first file "
                    f"{first:.2f}x the fresh limit's first run, second {second:.2f}x its second",
                    flush=True,
                )
        for label, peak in peaks.items():
            recorder.add(f"{label}: ratio peak RSS 10M / 1M", "x", peak["10m"] / peak["1m"])


def _put(s3: Any, bucket: str, key: str, path: Path) -> dict[str, Any]:
    s3.upload_file(str(path), bucket, key)
    head = s3.head_object(Bucket=bucket, Key=key)
    return {
        "bucket": bucket,
        "key": key,
        "etag": head["ETag"].strip('"'),
        "size": head["ContentLength"],
    }


def _file_lines(log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker's `file` lines for its first and its second file, in the order it took them."""
    lines = []
    for text in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(text)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "file":
            lines.append(entry)
    if len(lines) != 2:
        raise RuntimeError(f"{len(lines)} file lines in {log}, not 2")
    return lines[0], lines[1]


def _fresh_limit(cloud: Cloud, source: Path, work: Path) -> list[tuple[float, float]]:
    """Seconds and CPU seconds of the limit's first and second run in a new process (the
    served bundle loaded first, not timed), each once memory has been handed back."""
    env = cloud.environment() | {"PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "bench.batch_stream", "limit", cloud.outputs["ModelUri"]]
    command += [str(source), str(work / "stream-fresh-limit.parquet")]
    done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the fresh limit failed:\n{done.stderr[-3000:]}")
    return [tuple(run) for run in json.loads(done.stdout.splitlines()[-1])]


def fresh_limit_runs(model_uri: str, source: str, target: str) -> None:
    """`python -m bench.batch_stream limit MODEL_URI SOURCE TARGET`: two timed runs, as JSON."""
    import service.files
    import service.transform  # imported before the first run, as the worker has them
    from service.artifacts import load_bundle

    del service.files, service.transform
    bundle, runs = load_bundle(model_uri), []
    for _ in range(2):
        settle()
        started, cpu = time.monotonic(), time.process_time()
        transform_locally(Path(source), Path(target), bundle)
        runs.append((time.monotonic() - started, time.process_time() - cpu))
    print(json.dumps(runs))


def _record_same_state(
    recorder: Recorder,
    prefix: str,
    rows: int,
    lines: tuple[dict[str, Any], dict[str, Any]],
    fresh: list[tuple[float, float]],
    limit: float,
) -> list[float]:
    """The worker's first file against the fresh limit's first run, its second against the
    second: each side in the same state (a new process's first large transform, or not).
    The two ratios, first and second."""
    ratios = []
    for run, line, (seconds, _) in zip(("first", "second"), lines, fresh, strict=True):
        speed = rows / float(line["seconds"])
        ratios.append(speed * seconds / rows)
        recorder.add(f"{prefix} worker, {run} file in its process", "rows/s", speed)
        recorder.add(
            f"{prefix} worker's {run} file / limit's {run} run in a fresh process", "x", ratios[-1]
        )
        recorder.add(f"{prefix} worker's {run} file / limit (warm)", "x", speed / limit)
    return ratios


def _record(
    recorder: Recorder,
    prefix: str,
    speed: float,
    limit: float,
    result: dict[str, float],
    line: dict[str, Any],
) -> None:
    recorder.add(f"{prefix} worker, input in S3 to output", "rows/s", speed)
    recorder.add(f"{prefix} worker / limit", "x", speed / limit)
    recorder.add(f"{prefix} worker peak RSS", "MiB", result["peak_mib"])
    recorder.add(
        f"{prefix} local cloud CPU during the worker's run", "s", result["cloud_cpu_seconds"]
    )
    recorder.add(
        f"{prefix} worker / bound (limit + local S3 CPU on the cores)", "x", result["bound_ratio"]
    )
    if "cpu_seconds" in result:
        recorder.add(f"{prefix} worker CPU", "s", result["cpu_seconds"])
        recorder.add(f"{prefix} worker system CPU", "s", result["system_cpu_seconds"])
    if "handed_back_mib" in result:
        recorder.add(
            f"{prefix} memory handed back to the host during the run",
            "MiB",
            result["handed_back_mib"],
        )
    for key, value in line.items():
        if key.endswith("_seconds"):
            recorder.add(f"{prefix} worker phase {key.removesuffix('_seconds')}", "s", value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_stream", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run the worker from DIR (a tree with another service/), interleaved",
    )
    args = parser.parse_args(argv)
    compare = parse_compare(args.compare)
    recorder = Recorder("batch-stream")
    recorder.notes["rounds"] = args.rounds
    files = {name: datagen.dataset(name) for name in FILES}
    recorder.notes["files_mb"] = {n: round(p.stat().st_size / 1e6, 1) for n, p in files.items()}
    work = Path(tempfile.mkdtemp(prefix="bench-stream-", dir=DATA_DIR))
    cloud = Cloud(work / "cloud", MAIN_PARAMETERS, schedule_scale=1.0)
    try:
        cloud.start()
        stream(cloud, files, args.rounds, recorder, work, compare)
    finally:
        cloud.stop()
        shutil.rmtree(work, ignore_errors=True)
    recorder.print_table()
    recorder.save()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["limit"]:
        fresh_limit_runs(*sys.argv[2:5])
    else:
        sys.exit(main())
