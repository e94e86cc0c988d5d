"""Batch benchmark: the local cloud's upload-to-output path against the in-process limit.

Parts (each interleaves what it compares, round by round):

- throughput: the 1M-row parquet file uploaded to the input bucket, timed from the start of
  the upload until HeadObject finds the output (polled every 0.05 s, so up to 0.05 s late),
  and until the time of the worker's log line for the file (to the millisecond, written
  once the output and the report are written and the message deleted), with a warm worker
  running, which has transformed the file once, as the limit has (`first_files`); and from
  the moment the upload returned (the input object exists), against the worker's own file
  transform (worker.transform_file, the worker's BATCH_ROWS) on the same file from and to
  local disk in this process. Each side starts once the kernel has handed freed memory
  back to the host (bench.host_memory).
- latency: a 1,000-row file, upload to output, with a worker already running (warm) and
  with none (cold: every worker task stopped and gone before the upload).
- memory: peak resident memory (the kernel's VmHWM, read until it exits) of `python -m service
  worker` run directly against the local cloud, with the task definition's environment and
  a private queue, on the 1M-row and the 10M-row file; one fresh process per file.
- scaling: 40 files of 500,000 rows uploaded at once to two clouds, MaxWorkers 1 and 2
  (FilesPerWorker 1), each round starting with no worker running; the CPU time of each
  cloud's processes is split by kind while it works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from bench import datagen
from bench.cloud import REPO_ROOT, STACK_NAME, Cloud, wait_object
from bench.cpu import MachineCpu
from bench.host_memory import settle
from bench.stats import DATA_DIR, Recorder
from localcloud.waiting import wait_until

PARTS = ("throughput", "latency", "memory", "scaling")
SCALING_FILES = 40
SLOW_PART_ROUNDS = 3
QUIET_NEIGHBOUR_CORES = 0.25  # a round is quiet when other tenants used less on both sides
SCALING_IDLE_SECONDS = 5  # each round starts after the workers idled out
MAIN_PARAMETERS = {"MaxWorkers": "2", "FilesPerWorker": "5", "IdleSeconds": "600"}
OUTPUT_SECONDS = 900
TIME = "/usr/bin/time"
TIME_MARKER = "BENCH_MAXRSS_KIB="
CPU_MARKER = "BENCH_CPU_SECONDS="


def run(parts: list[str], rounds: int = 7) -> Recorder:
    """`rounds` for throughput and latency; memory and scaling (long, steadier) take 3."""
    recorder = Recorder("batch")
    recorder.notes["rounds"] = rounds
    needed = {"throughput": ("1k", "1m"), "latency": ("1k",), "memory": ("1m", "10m")}
    needed["scaling"] = ("500k",)
    files = {name: datagen.dataset(name) for part in parts for name in needed[part]}
    recorder.notes["files_mb"] = {n: round(p.stat().st_size / 1e6, 1) for n, p in files.items()}
    work = Path(tempfile.mkdtemp(prefix="bench-batch-", dir=DATA_DIR))
    try:
        if {"throughput", "latency", "memory"} & set(parts):
            cloud = Cloud(work / "main", MAIN_PARAMETERS, schedule_scale=1.0).start()
            try:
                bundle = load_served_bundle(cloud)
                if "throughput" in parts:
                    throughput(cloud, bundle, files["1m"], rounds, recorder, work)
                if "latency" in parts:
                    latency(cloud, files["1k"], max(rounds, 5), recorder)
                if "memory" in parts:
                    memory(cloud, files, SLOW_PART_ROUNDS, recorder, work)
            finally:
                cloud.stop()
        if "scaling" in parts:
            scaling(files["500k"], SLOW_PART_ROUNDS, recorder, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return recorder


# -- helpers ----------------------------------------------------------------------------


def load_served_bundle(cloud: Cloud) -> Any:
    """The bundle the stack serves, read and verified from the local S3 in this process."""
    from service.artifacts import S3Source, load_bundle

    return load_bundle(S3Source(cloud.outputs["ModelUri"], cloud.client("s3")))


def batch_rows() -> int:
    from service.settings import WorkerSettings

    return int(WorkerSettings.model_fields["batch_rows"].default)


def transform_locally(source: Path, target: Path, bundle: Any) -> int:
    """The limit: the worker's own file transform (service.transform.transform_file: read-ahead,
    prepare + predict, write) on local files, nothing else."""
    from service.files import FileFormat
    from service.transform import transform_file

    return transform_file(
        str(source), FileFormat("parquet"), str(target), bundle, "parquet", batch_rows()
    )


def output_key_for(cloud: Cloud, bundle: tuple[str, str], key: str) -> str:
    return cloud.output_key(bundle, key + ".parquet")


def model_id(cloud: Cloud) -> tuple[str, str]:
    s3 = cloud.client("s3")
    bucket, _, prefix = cloud.outputs["ModelUri"].removeprefix("s3://").partition("/")
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read())
    return manifest["name"], str(manifest["version"])


def upload_and_wait(
    cloud: Cloud, path: Path, key: str, model: tuple[str, str], poll: float = 0.02
) -> dict:
    """Seconds from the start of the upload until the output exists (as a user sees it),
    polling HeadObject every `poll` seconds (each poll costs the local S3 some CPU)."""
    s3 = cloud.client("s3")
    started_at, started = time.time(), time.monotonic()
    s3.upload_file(str(path), cloud.outputs["InputBucketName"], key)
    uploaded = time.monotonic()
    output = output_key_for(cloud, model, key)
    seen = wait_object(s3, cloud.outputs["OutputBucketName"], output, OUTPUT_SECONDS, poll)
    return {
        "seconds": seen - started,
        "upload_seconds": uploaded - started,
        "after_upload_seconds": seen - uploaded,
        "started_at": started_at,
    }


def worker_phases(cloud: Cloud, key: str, timeout: float = 15) -> dict[str, float]:
    """The worker's phase seconds (stream: read, predict and upload parts; commit: complete
    the upload) from its `file` log line for `key`, and the line's time (`logged_at`, epoch
    seconds to the millisecond: after the output and the report are written and the
    message deleted)."""
    logs = cloud.client("logs")
    group = f"/ecs/{STACK_NAME}/worker"

    def find() -> dict[str, float] | None:
        with contextlib.suppress(Exception):
            for page in logs.get_paginator("filter_log_events").paginate(logGroupName=group):
                for event in page["events"]:
                    entry = _json_object(event["message"])
                    wanted = ("file", key, "succeeded")
                    if (entry.get("event"), entry.get("key"), entry.get("status")) == wanted:
                        phases = {
                            k.removesuffix("_seconds"): float(v)
                            for k, v in entry.items()
                            if k.endswith("_seconds")
                        }
                        logged = datetime.fromisoformat(entry["time"]).timestamp()
                        return phases | {"total": float(entry["seconds"]), "logged_at": logged}
        return None

    with contextlib.suppress(TimeoutError):
        return wait_until(find, timeout, f"the worker's log line for {key}", 0.5)
    return {}


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# -- throughput -------------------------------------------------------------------------


def throughput(
    cloud: Cloud, bundle: Any, source: Path, rounds: int, recorder: Recorder, work: Path
) -> None:
    model = (bundle.name, bundle.version)
    rows = datagen_rows(source)
    recorder.notes["throughput_input"] = local_s3_storage(source)
    upload_and_wait(cloud, datagen.dataset("1k"), "warmup/first.parquet", model)
    cloud.wait_workers(1)
    target = work / "limit-output.parquet"
    first_files(cloud, source, target, bundle, model, recorder)
    for number in range(rounds):
        order = ("limit", "ours") if number % 2 == 0 else ("ours", "limit")
        figures: dict[str, float] = {}
        for which in order:
            settle()
            if which == "limit":
                with MachineCpu() as machine:
                    started = time.monotonic()
                    done = transform_locally(source, target, bundle)
                    seconds = time.monotonic() - started
                assert done == rows
                figures["limit"] = rows / seconds
                recorder.add("1M rows: limit (in-process, local disk)", "rows/s", rows / seconds)
                record_machine(recorder, "limit", machine, seconds, machine.client, figures)
            else:
                key = f"throughput/r{number}-1m.parquet"
                root = psutil.Process(cloud.process.pid)
                with CpuSampler(root) as sampler, MachineCpu() as machine:
                    timing = upload_and_wait(cloud, source, key, model, poll=0.05)
                record_ours(recorder, figures, rows, timing)
                phases = worker_phases(cloud, key)
                if "logged_at" in phases:
                    logged = phases.pop("logged_at") - timing["started_at"]
                    figures["ours to the log line"] = rows / logged
                    recorder.add("1M rows: ours, upload to the worker's log line time", "s", logged)
                for phase, value in phases.items():
                    recorder.add(f"1M rows: worker {phase}", "s", value)
                figures.update({f"worker {k}": v for k, v in phases.items()})
                own = machine.client + sum(sampler.totals().values())
                record_machine(recorder, "ours", machine, timing["seconds"], own, figures)
        record_throughput_ratios(recorder, figures, rows)
        print_round(number, rounds, figures)


def first_files(
    cloud: Cloud, source: Path, target: Path, bundle: Any, model: tuple, recorder: Recorder
) -> None:
    """Unmeasured by the rounds: the limit's first run on the file in this process and the
    warm worker's first file of that size. Each is up to 3x slower than later ones (its
    memory comes from the kernel, and the host: bench.host_memory), so both sides of every
    round have done the file once before; recorded here, the first files' own figures."""
    rows = datagen_rows(source)
    settle()
    started = time.monotonic()
    transform_locally(source, target, bundle)
    limit = rows / (time.monotonic() - started)
    settle()
    timing = upload_and_wait(cloud, source, "warmup/first-1m.parquet", model, poll=0.05)
    ours = rows / timing["after_upload_seconds"]
    recorder.add("1M rows: first file: limit (in-process, local disk)", "rows/s", limit)
    recorder.add("1M rows: first file: ours, input in S3 to output", "rows/s", ours)
    recorder.add("1M rows: first file: ratio ours from input in S3 / limit", "x", ours / limit)
    print(f"first files: limit {limit:,.0f} rows/s, ours from input in S3 {ours / limit:.2f}x")


def local_s3_storage(source: Path) -> dict[str, Any]:
    """Where the local S3 keeps the input: moto holds an object in a SpooledTemporaryFile of
    MOTO_S3_DEFAULT_KEY_BUFFER_SIZE bytes (5 MiB - 1 KiB) and spills a bigger one to a file
    under the temporary folder, so every GET of it reads that file (page cache or disk)."""
    from moto import settings

    buffer = settings.get_s3_default_key_buffer_size()
    size = source.stat().st_size
    return {
        "bytes": size,
        "moto_key_buffer_bytes": buffer,
        "spilled_to_disk": size > buffer,
        "moto_temporary_folder": os.environ.get("TMPDIR", tempfile.gettempdir()),
    }


def record_ours(recorder: Recorder, figures: dict[str, float], rows: int, timing: dict) -> None:
    figures["ours"] = rows / timing["seconds"]
    figures["ours after upload"] = rows / timing["after_upload_seconds"]
    figures["upload seconds"] = timing["upload_seconds"]
    recorder.add("1M rows: ours, upload to output", "rows/s", figures["ours"])
    recorder.add("1M rows: ours, input in S3 to output", "rows/s", figures["ours after upload"])
    recorder.add("1M rows: ours, input in S3 to output time", "s", timing["after_upload_seconds"])
    recorder.add("1M rows: ours, upload to output time", "s", timing["seconds"])
    recorder.add("1M rows: ours, of which the upload", "s", timing["upload_seconds"])


def record_machine(
    recorder: Recorder,
    which: str,
    machine: MachineCpu,
    seconds: float,
    own: float,
    figures: dict[str, float],
) -> None:
    """The machine while one side ran: busy and stolen cores, the cores that neither the
    benchmark nor its local cloud used (the neighbours), I/O wait, disk traffic and memory
    handed back to the host (bench.host_memory)."""
    values = {
        "machine busy cores": machine.busy / seconds,
        "stolen cores": machine.steal / seconds,
        "neighbour cores": (machine.busy - own) / seconds,
        "I/O wait cores": machine.iowait / seconds,
        "disk read MB": machine.read_bytes / 1e6,
        "disk written MB": machine.written_bytes / 1e6,
        "dirty page cache at the end MB": machine.dirty_bytes / 1e6,
        "memory available at the end MB": machine.available_bytes / 1e6,
        "memory handed back to the host MB": machine.handed_back_bytes / 1e6,
    }
    for name, value in values.items():
        unit = "MB" if name.endswith("MB") else "cores"
        recorder.add(f"1M rows: {which}: {name.removesuffix(' MB')}", unit, value)
        figures[f"{which} {name}"] = value


def record_throughput_ratios(recorder: Recorder, figures: dict[str, float], rows: int) -> None:
    """The round's ratios; again under "quiet rounds" when other tenants left both sides alone."""
    neighbours = max(figures["limit neighbour cores"], figures["ours neighbour cores"])
    figures["neighbour cores"] = neighbours
    recorder.add("1M rows: neighbour cores, the busier side", "cores", neighbours)
    for prefix in ("", "quiet rounds: ") if neighbours < QUIET_NEIGHBOUR_CORES else ("",):
        recorder.add(
            f"{prefix}ratio 1M rows/s ours / limit", "x", figures["ours"] / figures["limit"]
        )
        recorder.add(
            f"{prefix}ratio 1M rows/s ours from input in S3 / limit",
            "x",
            figures["ours after upload"] / figures["limit"],
        )
    recorder.add("1M rows: limit time", "s", rows / figures["limit"])
    bound_seconds = figures["upload seconds"] + rows / figures["limit"]
    for ours, name in (
        ("ours", "ratio 1M rows/s ours / bound (this round's upload, then the limit)"),
        ("ours to the log line", "ratio 1M rows/s ours to the worker's log line / bound"),
    ):
        if ours in figures:
            figures[f"{ours} / bound"] = figures[ours] * bound_seconds / rows
            recorder.add(name, "x", figures[f"{ours} / bound"])
    if "worker total" in figures:
        limit_seconds = rows / figures["limit"]
        recorder.add(
            "ratio 1M limit time / worker's own time (input in S3 to output)",
            "x",
            limit_seconds / figures["worker total"],
        )
    if "worker stream" in figures:
        recorder.add(
            "ratio 1M limit time / worker's stream phase (read, predict, upload parts)",
            "x",
            rows / figures["limit"] / figures["worker stream"],
        )


def print_round(number: int, rounds: int, figures: dict[str, float]) -> None:
    """One line per round: the spread of the medians is read from these."""
    quiet = figures["neighbour cores"] < QUIET_NEIGHBOUR_CORES
    print(
        f"throughput round {number + 1}/{rounds}: limit {figures['limit']:,.0f} rows/s, "
        f"from input in S3 {figures['ours after upload'] / figures['limit']:.2f}x, "
        f"upload to output / bound {figures['ours / bound']:.3f}x (seen by HeadObject), "
        f"{figures.get('ours to the log line / bound', float('nan')):.3f}x (to the log line), "
        f"worker stream {figures.get('worker stream', float('nan')):.3f} s "
        f"commit {figures.get('worker commit', float('nan')):.3f} s; "
        f"neighbours {figures['limit neighbour cores']:.2f} / "
        f"{figures['ours neighbour cores']:.2f} cores, stolen "
        f"{figures['limit stolen cores']:.2f} / {figures['ours stolen cores']:.2f}, "
        f"I/O wait {figures['ours I/O wait cores']:.2f}, disk read "
        f"{figures['ours disk read MB']:.0f} MB written {figures['ours disk written MB']:.0f} MB "
        f"dirty {figures['ours dirty page cache at the end MB']:.0f} MB, handed back to the host "
        f"{figures['limit memory handed back to the host MB']:.0f} / "
        f"{figures['ours memory handed back to the host MB']:.0f} MB (limit / ours; disk: ours)"
        + ("" if quiet else ": NOT QUIET, this round measures the neighbours as much as ours"),
        flush=True,
    )


def datagen_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# -- latency ----------------------------------------------------------------------------


def latency(cloud: Cloud, source: Path, rounds: int, recorder: Recorder) -> None:
    model = model_id(cloud)
    for number in range(rounds):
        print(f"latency round {number + 1}/{rounds}", flush=True)
        cloud.stop_workers()
        cold = upload_and_wait(cloud, source, f"latency/r{number}-cold.parquet", model)
        recorder.add("1k rows: cold start (no worker), upload to output", "s", cold["seconds"])
        cloud.wait_workers(1)
        for second in range(2):
            key = f"latency/r{number}-warm{second}.parquet"
            warm = upload_and_wait(cloud, source, key, model)
            recorder.add("1k rows: warm worker, upload to output", "s", warm["seconds"])
        print(f"  cold {cold['seconds']:.2f} s, warm {warm['seconds']:.2f} s", flush=True)


# -- memory -----------------------------------------------------------------------------


def memory(
    cloud: Cloud, files: dict[str, Path], rounds: int, recorder: Recorder, work: Path
) -> None:
    """Each file in a fresh worker process; the peak RSS the kernel recorded for it."""
    s3, sqs = cloud.client("s3"), cloud.client("sqs")
    bucket = "bench-memory-input"
    s3.create_bucket(Bucket=bucket)
    queue = sqs.create_queue(QueueName="bench-memory")["QueueUrl"]
    heads = {}
    for name in ("1m", "10m"):
        key = f"memory/{name}.parquet"
        s3.upload_file(str(files[name]), bucket, key)
        heads[name] = (key, s3.head_object(Bucket=bucket, Key=key))
    environment = cloud.environment() | cloud.worker_environment()
    environment.update(JOB_QUEUE_URL=queue, IDLE_SECONDS="1", WAIT_SECONDS="1")
    idle = run_worker_once(environment, work / "worker-idle.log", expect_file=False)
    recorder.add("worker peak RSS with no file (imports, model)", "MiB", idle["peak_mib"])
    if "time_mib" in idle:
        recorder.add("worker max RSS with no file (/usr/bin/time)", "MiB", idle["time_mib"])
    for number in range(rounds):
        print(f"memory round {number + 1}/{rounds}", flush=True)
        order = ("1m", "10m") if number % 2 == 0 else ("10m", "1m")
        peaks = {}
        for name in order:
            key, head = heads[name]
            body = {
                "bucket": bucket,
                "key": key,
                "etag": head["ETag"].strip('"'),
                "size": head["ContentLength"],
            }
            sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
            env = dict(environment, OUTPUT_PREFIX=f"bench-memory/r{number}")
            result = run_worker_once(env, work / f"worker-{number}-{name}.log")
            peaks[name] = result["peak_mib"]
            rows = name.upper()
            recorder.add(f"{rows} rows: worker peak RSS", "MiB", result["peak_mib"])
            if "time_mib" in result:
                recorder.add(
                    f"{rows} rows: worker max RSS (/usr/bin/time)", "MiB", result["time_mib"]
                )
            recorder.add(f"{rows} rows: worker run (start to exit)", "s", result["seconds"])
            print(f"  {name}: peak {result['peak_mib']:.0f} MiB in {result['seconds']:.1f} s")
        recorder.add("ratio peak RSS 10M / 1M", "x", peaks["10m"] / peaks["1m"])


def run_worker_once(
    env: dict[str, str], log: Path, expect_file: bool = True, cwd: Path = REPO_ROOT
) -> dict[str, float]:
    """`python -m service worker` until it idles out; its peak RSS, measured twice.

    `peak_mib`: the kernel's high-water mark of the worker's own memory (VmHWM), read every
    20 ms until it exits (it only grows). `time_mib`: /usr/bin/time's maximum resident set
    size, when that program is installed (getrusage of our own child would not do: Linux
    carries the forking parent's peak into the child's, and this process is large).
    """
    started = time.monotonic()
    peak_kib = 0
    time_format = f"{TIME_MARKER}%M\n{CPU_MARKER}%U %S"
    wrapper = [TIME, "-f", time_format] if Path(TIME).exists() else []
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "service", "worker"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while process.poll() is None:
                peak_kib = max(peak_kib, _tree_high_water_kib(process.pid))
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    text = log.read_text(encoding="utf-8", errors="replace")
    if process.returncode != 0 or (expect_file and '"status": "succeeded"' not in text):
        raise RuntimeError(
            f"the worker did not succeed (exit {process.returncode}):\n{text[-3000:]}"
        )
    result = {"peak_mib": peak_kib / 1024, "seconds": time.monotonic() - started}
    for line in text.splitlines():
        if line.startswith(TIME_MARKER):
            result["time_mib"] = int(line.removeprefix(TIME_MARKER)) / 1024
        elif line.startswith(CPU_MARKER):
            user, system = map(float, line.removeprefix(CPU_MARKER).split())
            result["cpu_seconds"], result["system_cpu_seconds"] = user + system, system
    return result


def _tree_high_water_kib(pid: int) -> int:
    try:
        processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return 0
    return max((high_water_kib(p.pid) for p in processes), default=0)


def high_water_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- scaling ----------------------------------------------------------------------------


class CpuSampler:
    """CPU seconds of a process tree by kind of process, sampled while it works."""

    KINDS = (
        ("worker", "-m service worker"),
        ("endpoint", "-m service serve"),
        ("lambda", "bootstrap.py"),
    )

    def __init__(self, root: psutil.Process, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.first: dict[tuple[int, float], float] = {}
        self.last: dict[tuple[int, float], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        for process in self._tree():
            with contextlib.suppress(psutil.Error):
                ident = (process.pid, process.create_time())
                times = process.cpu_times()
                cpu = times.user + times.system
                if first:
                    self.first[ident] = cpu
                known = self.last.get(ident)
                # a child seen between fork and exec still shows its parent's command line
                kind = known[0] if known and known[0] != "other" else self._kind(process)
                self.last[ident] = (kind, cpu)

    def _tree(self) -> Iterator[psutil.Process]:
        yield self.root
        with contextlib.suppress(psutil.Error):
            yield from self.root.children(recursive=True)

    def _kind(self, process: psutil.Process) -> str:
        if process.pid == self.root.pid:
            return "localcloud (moto, runtime, agent)"
        command = " ".join(process.cmdline())
        for kind, marker in self.KINDS:
            if marker in command:
                return kind
        return "other"

    def totals(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for ident, (kind, cpu) in self.last.items():
            found[kind] = found.get(kind, 0.0) + cpu - self.first.get(ident, 0.0)
        return found


def scaling(source: Path, rounds: int, recorder: Recorder, work: Path) -> None:
    clouds = {}
    try:
        for workers in (1, 2):
            parameters = {
                "MaxWorkers": str(workers),
                "FilesPerWorker": "1",
                "IdleSeconds": str(SCALING_IDLE_SECONDS),
            }
            clouds[workers] = Cloud(work / f"scale{workers}", parameters, 1.0).start()
        rows = datagen_rows(source) * SCALING_FILES
        for number in range(rounds):
            print(f"scaling round {number + 1}/{rounds}", flush=True)
            order = (1, 2) if number % 2 == 0 else (2, 1)
            rates, busy_cpu = {}, {}
            for workers in order:
                cloud = clouds[workers]
                cloud.wait_no_workers(SCALING_IDLE_SECONDS + 60)
                settle()
                root = psutil.Process(cloud.process.pid)
                with CpuSampler(root) as sampler, MachineCpu() as machine:
                    seconds = upload_many(cloud, source, f"scaling/r{number}")
                rates[workers] = rows / seconds
                name = f"{SCALING_FILES} files, MaxWorkers {workers}"
                recorder.add(f"{name}: upload to last output", "s", seconds)
                recorder.add(f"{name}: throughput", "rows/s", rows / seconds)
                for kind, cpu in sampler.totals().items():
                    recorder.add(f"{name}: CPU of {kind}", "s", cpu)
                busy = sum(sampler.totals().values()) / seconds
                busy_cpu[workers] = sum(sampler.totals().values()) + machine.client
                recorder.add(f"{name}: cores busy with the local cloud", "cores", busy)
                recorder.add(f"{name}: CPU of the client (this process)", "s", machine.client)
                recorder.add(f"{name}: cores busy, whole machine", "cores", machine.busy / seconds)
                recorder.add(
                    f"{name}: cores stolen by the hypervisor", "cores", machine.steal / seconds
                )
                print(f"  MaxWorkers {workers}: {seconds:.1f} s, {busy:.2f} cores", flush=True)
            recorder.add("ratio throughput MaxWorkers 2 / 1", "x", rates[2] / rates[1])
            bound = scaling_bound(rows / rates[1], busy_cpu[2])
            recorder.add("bound of MaxWorkers 2 / 1 from this round's CPU", "x", bound)
            recorder.add("ratio (MaxWorkers 2 / 1) / its bound", "x", rates[2] / rates[1] / bound)
    finally:
        for cloud in clouds.values():
            cloud.stop()


def scaling_bound(one_worker_seconds: float, two_workers_cpu_seconds: float) -> float:
    """The best MaxWorkers 2 / 1 speed-up this machine allows: two workers at most halve the
    time, and the CPU seconds the two-worker run needed (workers, local cloud, client) cannot
    take less than themselves divided by the machine's cores."""
    cores = os.cpu_count() or 1
    fastest = max(one_worker_seconds / 2, two_workers_cpu_seconds / cores)
    return one_worker_seconds / fastest


def stream_bound(limit_seconds: float, limit_cpu_seconds: float, cloud_cpu_seconds: float) -> float:
    """The fewest seconds a worker can take from the input in S3 to the output here: the
    in-process limit's time, and the CPU the limit's transform and the local S3's serving
    of the same file need, on this machine's cores (on AWS, S3 runs elsewhere)."""
    cores = os.cpu_count() or 1
    return max(limit_seconds, (limit_cpu_seconds + cloud_cpu_seconds) / cores)


def upload_many(cloud: Cloud, source: Path, folder: str) -> float:
    """Upload the files at once (8 parallel PUTs, as `aws s3 cp --recursive` does; single
    PUTs, so one event each); seconds until the last output exists. Then delete them."""
    s3 = cloud.client("s3")
    model = model_id(cloud)
    body = source.read_bytes()
    inputs = cloud.outputs["InputBucketName"]
    keys = [f"{folder}/part-{number:02d}.parquet" for number in range(SCALING_FILES)]
    prefix = cloud.output_key(model, f"{folder}/")
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for future in [
            pool.submit(s3.put_object, Bucket=inputs, Key=key, Body=body) for key in keys
        ]:
            future.result()

    def all_outputs() -> bool:
        listed = s3.list_objects_v2(Bucket=cloud.outputs["OutputBucketName"], Prefix=prefix)
        return listed.get("KeyCount", 0) >= len(keys)

    wait_until(all_outputs, OUTPUT_SECONDS, f"{len(keys)} outputs under {prefix}", 0.1)
    seconds = time.monotonic() - started
    s3.delete_objects(Bucket=inputs, Delete={"Objects": [{"Key": key} for key in keys]})
    return seconds
