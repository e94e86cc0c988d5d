"""Faults injected into a running ``python -m localcloud up``, from outside, as an operator would.

Processes are found in the cloud's process tree (tests/e2e/cloud_process.py records it):
batch workers by their command line (``-m service worker``), the endpoint by ``-m service
serve``, a Lambda invocation by the local runtime's bootstrap script. A kill is SIGKILL: no
handler runs, no message is handed back, nothing is flushed.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import psutil

from tests.e2e.cloud_process import (
    ENDPOINT_COMMAND,
    REPO_ROOT,
    WORKER_COMMAND,
    LocalCloudProcess,
    Seen,
)
from tests.support import wait_for

LAMBDA_BOOTSTRAP = "localcloud/bootstrap.py"
BUSY_SAMPLE_SECONDS = 0.1  # CPU sampled this long to tell a busy worker from an idle one
TASK_STOPPED = re.compile(r"^task (\w{8}) STOPPED")
S3_EVENT_SAMPLE = REPO_ROOT / "tests" / "events" / "s3_put_several.json"
# Lambda's asynchronous retry delays (60 s, 120 s) times this: 3 s and 6 s.
RETRY_SCALE = 0.05


class FaultCloud(LocalCloudProcess):
    """The e2e suite's local cloud with short Lambda retry delays (``--retry-scale``) and,
    optionally, a fraction of asynchronous Lambda events failing every attempt
    (``--fault-drop-events``: they reach the trigger's on-failure queue).

    A SIGKILLed invocation is an error Lambda retries after a minute; at that pace the
    objects of the killed event would wait longer than the whole test.
    """

    def __init__(
        self,
        work_dir: Path,
        parameters: dict[str, str],
        retry_scale: float,
        drop_events: float = 0.0,
    ) -> None:
        arguments = ["--retry-scale", str(retry_scale)]
        if drop_events:
            arguments += ["--fault-drop-events", str(drop_events)]
        super().__init__(work_dir, parameters, extra_args=arguments)
        self.retry_scale = retry_scale
        self.drop_events = drop_events

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def fault_cloud(
    work_dir: Path,
    parameters: dict[str, str],
    retry_scale: float = RETRY_SCALE,
    drop_events: float = 0.0,
) -> Iterator[FaultCloud]:
    """Start a cloud, yield it ready; stop it with SIGTERM and fail if any process remains."""
    cloud = FaultCloud(work_dir, parameters, retry_scale, drop_events)
    try:
        cloud.start()
        cloud.wait_ready()
        yield cloud
        cloud.terminate()
        code = cloud.wait_exit()
        cloud.assert_nothing_left()
        assert code == 0, f"localcloud up exited with {code}:\n{cloud.log_tail()}"
    finally:
        cloud.kill_everything()


# -- finding and killing processes ---------------------------------------------------------


def workers(cloud: LocalCloudProcess) -> list[Seen]:
    return cloud.processes(WORKER_COMMAND)


def lambda_invocations(cloud: LocalCloudProcess) -> list[Seen]:
    return cloud.processes(LAMBDA_BOOTSTRAP)


def endpoint_parent(cloud: LocalCloudProcess) -> Seen:
    """The ``python -m service serve`` process the agent started (its server processes are
    its children and share its command line)."""
    serving = cloud.processes(ENDPOINT_COMMAND)
    pids = {seen.pid for seen in serving}
    parents = []
    for seen in serving:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(seen.pid).ppid() not in pids:
                parents.append(seen)
    assert len(parents) == 1, f"expected one endpoint parent, found {parents}"
    return parents[0]


def sigkill(seen: Seen) -> bool:
    """SIGKILL the process if it is still the one recorded (a PID may be reused)."""
    try:
        process = psutil.Process(seen.pid)
        if abs(process.create_time() - seen.created) > 0.01:
            return False
        process.send_signal(signal.SIGKILL)
    except psutil.NoSuchProcess:
        return False
    return True


def busy(seen: Seen) -> bool:
    """Whether a worker has a file in work: it spends CPU (reading, predicting, uploading)
    over a short sample, while an idle one rests in its SQS long poll. The worker streams
    each file from S3 to S3, so no file on disk marks it."""
    with contextlib.suppress(psutil.Error):
        process = psutil.Process(seen.pid)
        before = sum(process.cpu_times()[:2])
        time.sleep(BUSY_SAMPLE_SECONDS)
        return sum(process.cpu_times()[:2]) - before > BUSY_SAMPLE_SECONDS * 0.2
    return False


@dataclass(frozen=True)
class Kill:
    """One SIGKILL the injector sent: when (seconds after it started), whom, and whether
    the worker had a file in work."""

    at: float
    pid: int
    busy: bool


@dataclass
class WorkerKiller:
    """A thread that SIGKILLs a running worker ``times`` times, about every ``interval``
    seconds (jittered, so kills do not fall into step with redeliveries): a random busy one
    if any shows up within ``patience`` seconds, else a random one old enough to have
    loaded the model.

    It interrupts each file at most once: it holds its fire while any file in work is a
    redelivery (the workers log ``receives`` with every ``file_started``). A file whose
    worker dies on each of its three receives goes to the dead-letter queue by design; the
    first version of this injector did that to two files by finding the same file busy
    again on its next round.
    """

    cloud: LocalCloudProcess
    times: int
    interval: float
    patience: float
    min_age: float
    seed: int = 7
    kills: list[Kill] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._log = LogFollower(self.cloud.log_path)
        self._in_work: dict[str, int] = {}

    def __enter__(self) -> WorkerKiller:
        self._thread = threading.Thread(target=self._run, name="worker-killer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def done(self) -> bool:
        return len(self.kills) >= self.times

    def _run(self) -> None:
        rng = random.Random(self.seed)
        started = time.monotonic()
        while not self.done() and not self._stop.wait(self.interval * rng.uniform(0.6, 1.4)):
            try:
                self._kill_one(rng, started)
            except Exception as exc:  # keep injecting; the test reports what went wrong
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _kill_one(self, rng: random.Random, started: float) -> None:
        give_up_busy = time.monotonic() + self.patience
        while not self._stop.is_set():
            if self._redelivery_in_work():
                self._stop.wait(0.01)
                continue
            now = time.time()
            candidates = [s for s in workers(self.cloud) if now - s.created >= self.min_age]
            working = [s for s in candidates if busy(s)]
            late = time.monotonic() >= give_up_busy
            pool = working or (candidates if late else [])
            if pool:
                victim = rng.choice(pool)
                if sigkill(victim):
                    at = time.monotonic() - started
                    self.kills.append(Kill(round(at, 2), victim.pid, bool(working)))
                    return
            self._stop.wait(0.01)

    def _redelivery_in_work(self) -> bool:
        """Whether a worker is working on a file for the second time or more, by its log."""
        for line in self._log.new_lines():
            source, _, text = line.partition(" | ")
            stopped = TASK_STOPPED.search(text) if source.strip() == "ecs" else None
            if stopped:
                self._in_work.pop(f"ecs:{stopped[1]}", None)
            elif source.startswith("ecs:") and '"event": "file' in text:
                with contextlib.suppress(ValueError, KeyError):
                    entry = json.loads(text)
                    task = source.split()[0]
                    if entry["event"] == "file_started":
                        self._in_work[task] = int(entry["receives"])
                    elif entry["event"] == "file":
                        self._in_work.pop(task, None)
        return any(receives > 1 for receives in self._in_work.values())


@dataclass(frozen=True)
class InvocationKill:
    """The Lambda invocation the injector killed; ``mid_event`` when it had queued objects
    and not yet finished (its retry then queues them a second time)."""

    request_id: str
    mid_event: bool
    at: float


def kill_invocation(cloud: LocalCloudProcess, deadline: float, prefer: float) -> InvocationKill:
    """SIGKILL the execution environment running an invocation of the batch trigger,
    preferably (for ``prefer`` seconds) one between its "queued" and "summary" log lines;
    fail if none runs before the deadline.

    Environments are warm processes that serve one invocation after another, so the running
    request is read from the log (a START without its END), and the kill is made only while
    exactly one request runs and one environment exists (the trigger's reserved concurrency
    is 1), so the request the kill interrupts is known.
    """
    follower = LogFollower(cloud.log_path)
    log = InvocationLog()
    started = time.monotonic()

    def kill_the_one_running() -> InvocationKill | None:
        log.read(follower.new_lines())
        late = time.monotonic() - started >= prefer
        environments = lambda_invocations(cloud)
        if len(log.running) != 1 or len(environments) != 1:
            return None
        (request_id,) = log.running
        mid_event = request_id in log.queued and request_id not in log.finished
        if (mid_event or late) and sigkill(environments[0]):
            return InvocationKill(request_id, mid_event, time.monotonic() - started)
        return None

    return wait_for(
        kill_the_one_running, deadline, "a Lambda invocation to run", 0.005, cloud.log_tail
    )


@dataclass
class InvocationLog:
    """What the trigger's log lines say about its invocations so far."""

    running: set[str] = field(default_factory=set)
    queued: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)

    def read(self, lines: list[str]) -> None:
        for line in lines:
            name, _, text = line.partition(" | ")
            if not name.startswith("lambda:"):
                continue
            if text.startswith("START RequestId: "):
                self.running.add(text.split()[2])
            elif text.startswith("END RequestId: "):
                self.running.discard(text.split()[2])
        for entry in json_lines(lines, "lambda:"):
            if entry.get("message") == "queued":
                self.queued.add(entry.get("request_id", ""))
            elif entry.get("message") == "summary":
                self.finished.add(entry.get("request_id", ""))


# -- S3 events, delivered again ----------------------------------------------------------


def s3_put_event(
    bucket: str, key: str, etag: str, size: int, version_id: str | None, region: str
) -> dict[str, Any]:
    """An ``ObjectCreated:Put`` notification for one object, in AWS's documented shape
    (tests/events/s3_put_several.json), with the key URL-encoded as S3 sends it."""
    sample = json.loads(S3_EVENT_SAMPLE.read_text(encoding="utf-8"))
    record = copy.deepcopy(sample["Records"][0])
    record["awsRegion"] = region
    record["eventTime"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    obj = {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag.strip('"')}
    if version_id:
        obj["versionId"] = version_id
    obj["sequencer"] = f"{time.time_ns():016X}"
    record["s3"]["object"] = obj
    return {"Records": [record]}


def deliver_again(cloud: LocalCloudProcess, event: dict[str, Any]) -> None:
    """What S3's at-least-once delivery does now and then: invoke the trigger asynchronously
    with the same event once more."""
    response = cloud.client("lambda").invoke(
        FunctionName=cloud.outputs["FunctionName"],
        InvocationType="Event",
        Payload=json.dumps(event).encode(),
    )
    assert response["StatusCode"] == 202, response


def object_versions(s3: Any, bucket: str, prefix: str) -> dict[str, list[dict[str, Any]]]:
    """Every version of every object under a prefix, by key (delete markers left out)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for version in page.get("Versions", []):
            found.setdefault(version["Key"], []).append(version)
    return found


# -- reading the cloud's console ----------------------------------------------------------


class LogFollower:
    """New lines of the cloud's console log since the last call (it only grows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        self._offset += len(data)
        data, self._partial = self._partial + data, b""
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", "replace") for line in lines]


def json_lines(lines: list[str], source: str) -> list[dict[str, Any]]:
    """The JSON log entries of one kind of process (``ecs:`` tasks, ``lambda:`` functions)."""
    entries = []
    for line in lines:
        name, sep, text = line.partition(" | ")
        if sep and name.startswith(source) and text.startswith("{"):
            with contextlib.suppress(ValueError):
                entries.append(json.loads(text))
    return entries
