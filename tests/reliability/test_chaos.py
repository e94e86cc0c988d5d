"""Chaos: 200 files through the batch transform while workers and the trigger are SIGKILLed
and a tenth of the trigger's events are lost at the Lambda runtime.

One ``python -m localcloud up`` (MaxWorkers 3, FilesPerWorker 2, WorkerVisibilitySeconds 5,
Lambda retry delays scaled to 3 s and 6 s, ``--fault-drop-events 0.1``) takes 200 files in
bursts of 40: parquet, CSV, gzip'd CSV and JSON Lines, in pairs that share a stem (``file
007.csv`` and ``file 007.csv.gz``), six of them poison from the catalogue. Meanwhile a fault
injector SIGKILLs a running worker ten times, about every two seconds (the next burst is
uploaded once its share of the kills is done, so files are in work for every kill however
fast they go) (a busy one when it can find one: a worker spending CPU, as one with a file in
work does) and one invocation of the batch trigger, between its "queued" and "summary" log
lines when it can, so its retry queues those objects a second time. The runtime fails every
attempt of about one asynchronous event in ten (uploads and schedule ticks alike), so those
events reach the trigger's on-failure queue, which the scheduled runs redrive.

Afterwards every input has exactly one outcome: one output (one S3 version of it) equal to
the in-process reference, or one ``failed`` report for a poison file; the job queue, the
failure queue and the dead-letter queue are empty, and no worker task is left RUNNING once
IdleSeconds have passed. The dead-letter queue must be empty, not merely hold "explainable"
messages: a SIGKILL costs a message one receive, the queue allows three, and a message that
reached the DLQ after a kill would be a file whose fate depends on an operator, which is the
failure this test exists to catch.
"""

from __future__ import annotations

import gzip
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from service.artifacts import Bundle
from service.model import predict
from tests.e2e.batch_helpers import (
    WorkerWatch,
    assert_same_predictions,
    load_served_bundle,
    output_key,
    queue_counts,
    read_parquet,
    report_key,
    running,
    to_csv,
    to_jsonl,
    to_parquet,
    wait_workers_stopped,
)
from tests.e2e.cloud_process import LocalCloudProcess, wait_for
from tests.reliability.faults import (
    FaultCloud,
    InvocationKill,
    InvocationLog,
    WorkerKiller,
    fault_cloud,
    json_lines,
    kill_invocation,
    object_versions,
)
from tests.reliability.poison.catalogue import CATALOGUE

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(480)]

PARAMETERS = {
    "MaxWorkers": "3",
    "FilesPerWorker": "2",
    "WorkerVisibilitySeconds": "5",
    "IdleSeconds": "10",
}
FILES = 200
BURST = 40
DROP_EVENTS = 0.1
FAILURES = "TriggerFailureQueueUrl"
WORKER_KILLS = 10
KILL_INTERVAL = 2.0
BUSY_PATIENCE = 3.0
MIN_WORKER_AGE = 1.0
LAMBDA_KILL_DEADLINE = 90.0
LAMBDA_KILL_PREFER = 45.0
BATCH_DEADLINE = 300.0
IDLE_SLACK = 30.0
DLQ = "DeadLetterQueueUrl"
POISON = (
    "corrupt_parquet",
    "truncated_parquet",
    "missing_feature_columns",
    "jsonl_one_broken_line",
    "infinities",
    "gzip_that_is_not_gzip",
)


def gzip_csv(frame: pd.DataFrame) -> bytes:
    return gzip.compress(to_csv(frame))


ENCODERS: dict[str, Callable[[pd.DataFrame], bytes]] = {
    ".parquet": to_parquet,
    ".csv": to_csv,
    ".csv.gz": gzip_csv,
    ".jsonl": to_jsonl,
}


@dataclass(frozen=True)
class Input:
    key: str
    body: bytes
    frame: pd.DataFrame | None  # None: poison, a failed report is its expected outcome

    @property
    def relative_output(self) -> str:
        """The whole input key plus .parquet (the contract)."""
        return self.key + ".parquet"


def make_inputs(train_example: ModuleType, good_rows: pd.DataFrame) -> list[Input]:
    """194 good files of 100-1,500 rows in four formats, two files (two formats) per stem,
    and six poison files among them."""
    poison = [p for p in CATALOGUE if p.name in POISON]
    assert len(poison) == len(POISON)
    stride = FILES // len(poison)
    inputs: list[Input] = []
    for number in range(FILES):
        if number % stride == stride // 2 and poison:
            kind = poison.pop()
            inputs.append(
                Input(
                    f"chaos/poison/{number:03d}-{kind.key.split('/')[-1]}",
                    kind.make(good_rows),
                    None,
                )
            )
            continue
        suffix = list(ENCODERS)[number % len(ENCODERS)]
        rows = 100 + (number * 37) % 1400
        frame = train_example.sample_rows(rows, seed=1000 + number)
        key = f"chaos/burst-{number // BURST}/file {number // 2:03d}{suffix}"
        inputs.append(Input(key, ENCODERS[suffix](frame), frame))
    return inputs


@dataclass
class ChaosRun:
    cloud: LocalCloudProcess
    bundle: Bundle
    inputs: list[Input]
    reports: dict[str, dict[str, Any]]
    outputs: dict[str, list[dict[str, Any]]]
    report_versions: dict[str, list[dict[str, Any]]]
    killer: WorkerKiller
    lambda_kill: InvocationKill
    max_running: int
    max_processes: int
    worker_tasks: list[dict[str, Any]]
    job_queue: tuple[int, int]
    failure_queue: tuple[int, int]
    dead_letters: list[dict[str, Any]]
    seconds: float
    log: list[str]

    def dropped_events(self) -> set[str]:
        """Request ids of the events whose every attempt the runtime's fault hook failed."""
        return dropped_ids(self.log)

    def events_sent_to_failure_queue(self) -> set[str]:
        """Request ids the runtime sent to the trigger's on-failure queue after its retries."""
        return given_up_ids(self.log)

    def figures(self) -> dict[str, Any]:
        workers_log = json_lines(self.log, "ecs:")
        files = [e for e in workers_log if e.get("event") == "file"]
        started = [e for e in workers_log if e.get("event") == "file_started"]
        statuses = Counter(e["status"] for e in files)
        trigger_log = json_lines(self.log, "lambda:")
        return {
            "files": len(self.inputs),
            "stems": len(
                {
                    item.key.rsplit(".", 2 if item.key.endswith(".gz") else 1)[0]
                    for item in self.inputs
                }
            ),
            "events_dropped": len(self.dropped_events()),
            "events_to_failure_queue": len(self.events_sent_to_failure_queue()),
            "objects_redriven": sum(
                int(e.get("objects", 0)) for e in trigger_log if e.get("event") == "redriven"
            ),
            "poison": sum(1 for i in self.inputs if i.frame is None),
            "worker_kills": len(self.killer.kills),
            "worker_kills_busy": sum(1 for k in self.killer.kills if k.busy),
            "lambda_kills": 1,
            "lambda_kill_mid_event": self.lambda_kill.mid_event,
            "outputs": len(self.outputs),
            "output_versions_max": max((len(v) for v in self.outputs.values()), default=0),
            "failed_reports": sum(1 for r in self.reports.values() if r["status"] == "failed"),
            "reports_written_twice": sum(1 for v in self.report_versions.values() if len(v) > 1),
            "redelivered_files": len({e["key"] for e in started if int(e["receives"]) > 1}),
            "reports_restored": sum(1 for e in workers_log if e.get("event") == "report_restored"),
            "worker_outcomes": dict(statuses),
            "dlq": len(self.dead_letters),
            "worker_tasks": len(self.worker_tasks),
            "max_running": self.max_running,
            "max_worker_processes": self.max_processes,
            "seconds": round(self.seconds, 1),
        }


def upload_in_bursts(cloud: LocalCloudProcess, inputs: list[Input], killer: WorkerKiller) -> None:
    """40 files at once; the next 40 once all but one burst's worth have a report and the
    kills so far are the earlier bursts' share."""
    bursts = math.ceil(len(inputs) / BURST)
    s3 = cloud.client("s3")
    bucket = cloud.outputs["InputBucketName"]

    def put(item: Input) -> None:
        s3.put_object(Bucket=bucket, Key=item.key, Body=item.body)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for start in range(0, len(inputs), BURST):
            if start:
                share = WORKER_KILLS * (start // BURST) // bursts
                wait_for(
                    lambda start=start, share=share: (
                        len(killer.kills) >= share and len(listed_reports(cloud)) >= start - BURST
                    ),
                    BATCH_DEADLINE,
                    f"{share} kills and the reports of the files before burst {start // BURST}",
                    interval=0.5,
                    context=cloud.log_tail,
                )
            list(pool.map(put, inputs[start : start + BURST]))


def listed_reports(cloud: LocalCloudProcess) -> set[str]:
    """Input keys that have a report, from one listing of the report folder."""
    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    prefix = report_key(cloud, "")[: -len(".json")]
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.update(item["Key"][len(prefix) : -len(".json")] for item in page.get("Contents", []))
    return keys


def read_reports(cloud: LocalCloudProcess) -> dict[str, dict[str, Any]]:
    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    return {
        key: json.loads(s3.get_object(Bucket=bucket, Key=report_key(cloud, key))["Body"].read())
        for key in listed_reports(cloud)
    }


def dead_letters(cloud: LocalCloudProcess) -> list[dict[str, Any]]:
    """Every message on the dead-letter queue (received, not deleted, so still there)."""
    visible, in_flight = queue_counts(cloud, DLQ)
    if visible + in_flight == 0:
        return []
    sqs = cloud.client("sqs")
    return sqs.receive_message(
        QueueUrl=cloud.outputs["DeadLetterQueueUrl"], MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [{"Body": f"{visible + in_flight} message(s) not received"}])


@pytest.fixture(scope="module")
def chaos(
    tmp_path_factory: pytest.TempPathFactory, train_example: ModuleType, good_rows: pd.DataFrame
) -> Iterator[ChaosRun]:
    inputs = make_inputs(train_example, good_rows)
    keys = [item.key for item in inputs]
    work = tmp_path_factory.mktemp("chaos")
    with fault_cloud(work, PARAMETERS, drop_events=DROP_EVENTS) as cloud:
        yield run_chaos(cloud, inputs, keys, load_served_bundle(cloud))


def run_chaos(cloud: FaultCloud, inputs: list[Input], keys: list[str], bundle: Bundle) -> ChaosRun:
    s3 = cloud.client("s3")
    out = cloud.outputs["OutputBucketName"]
    s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
    started = time.monotonic()
    killer = WorkerKiller(cloud, WORKER_KILLS, KILL_INTERVAL, BUSY_PATIENCE, MIN_WORKER_AGE)
    with WorkerWatch(cloud) as watch, killer, ThreadPoolExecutor(max_workers=1) as pool:
        lambda_kill = pool.submit(kill_invocation, cloud, LAMBDA_KILL_DEADLINE, LAMBDA_KILL_PREFER)
        upload_in_bursts(cloud, inputs, killer)
        wait_for(killer.done, BATCH_DEADLINE, f"{WORKER_KILLS} worker kills", interval=0.5)
        wait_for(
            lambda: set(keys) <= listed_reports(cloud) or sum(queue_counts(cloud, DLQ)) > 0,
            BATCH_DEADLINE,
            "a report for every input (or a dead letter)",
            interval=1.0,
            context=cloud.log_tail,
        )
        wait_for(
            lambda: queue_counts(cloud) == (0, 0) and queue_counts(cloud, FAILURES) == (0, 0),
            BATCH_DEADLINE,
            "an empty job queue and an empty failure queue",
            interval=1.0,
            context=cloud.log_tail,
        )
        seconds = time.monotonic() - started
        idle = float(cloud.parameters["IdleSeconds"]) + IDLE_SLACK
        tasks = wait_workers_stopped(cloud, idle)
        # Schedule ticks go on during the wait, and a dropped one is still in its retries for
        # a while: read the log at a moment when every dropped event has been given up.
        log, failures = wait_for(
            lambda: settled(cloud), BATCH_DEADLINE, "every dropped event given up and redriven"
        )
    prefix = output_key(cloud, bundle, "")
    return ChaosRun(
        cloud=cloud,
        bundle=bundle,
        inputs=inputs,
        reports=read_reports(cloud),
        outputs=object_versions(s3, out, prefix),
        report_versions=object_versions(s3, out, report_key(cloud, "")[: -len(".json")]),
        killer=killer,
        lambda_kill=lambda_kill.result(),
        max_running=watch.max_running,
        max_processes=watch.max_processes,
        worker_tasks=tasks,
        job_queue=queue_counts(cloud),
        failure_queue=failures,
        dead_letters=dead_letters(cloud),
        seconds=seconds,
        log=log,
    )


def dropped_ids(lines: list[str]) -> set[str]:
    marker = "fault: event "
    return {
        line.split(marker, 1)[1].split()[0]
        for line in lines
        if marker in line and "attempt 1 failed" in line
    }


def given_up_ids(lines: list[str]) -> set[str]:
    return {
        line.split(" | event ", 1)[1].split()[0]
        for line in lines
        if " | event " in line and "trigger-failures (RetriesExhausted)" in line
    }


def settled(cloud: FaultCloud) -> tuple[list[str], tuple[int, int]] | None:
    """The cloud's log lines and the failure queue's counts, at a moment when each event the
    fault hook dropped was sent to the failure queue, that queue was redriven empty, and every
    invocation had ended (a redrive deletes its record before it logs "redriven")."""
    failures = queue_counts(cloud, FAILURES)
    lines = cloud.log_text().splitlines()
    invocations = InvocationLog()
    invocations.read(lines)
    done = (
        dropped_ids(lines) <= given_up_ids(lines) and failures == (0, 0) and not invocations.running
    )
    return (lines, failures) if done else None


def test_faults_were_injected(chaos: ChaosRun) -> None:
    figures = chaos.figures()
    print(f"chaos figures: {figures}")
    assert chaos.killer.errors == []
    assert len(chaos.killer.kills) == WORKER_KILLS
    killed = [task for task in chaos.worker_tasks if task["containers"][0].get("exitCode") == 137]
    assert len(killed) == WORKER_KILLS, [t.get("stoppedReason") for t in chaos.worker_tasks]
    retried = [line for line in chaos.log if "retry 1 of 2" in line]
    assert retried, "the killed invocation was not retried"
    # The kill is decided from the log, so it may land just after the attempt's summary (the
    # retry then runs the event again) or just after the attempt ended (its result was in: no
    # retry). What must hold is that the request's last attempt ran to its end.
    request_id = chaos.lambda_kill.request_id
    starts = [i for i, line in enumerate(chaos.log) if f"START RequestId: {request_id}" in line]
    assert starts, "the killed invocation never started"
    print(f"the killed invocation ran {len(starts)} time(s)")
    last_attempt = chaos.log[starts[-1] :]
    summaries = [
        entry
        for entry in json_lines(last_attempt, "lambda:")
        if entry.get("request_id") == request_id and entry.get("message") == "summary"
    ]
    assert len(summaries) == 1, "the killed invocation's retry did not finish"
    assert any(f"END RequestId: {request_id}" in line for line in last_attempt)


def test_dropped_events_reached_the_failure_queue_and_were_redriven(chaos: ChaosRun) -> None:
    dropped = chaos.dropped_events()
    assert dropped, "the fault hook dropped no event"
    assert dropped <= chaos.events_sent_to_failure_queue(), "a dropped event was lost"
    assert chaos.failure_queue == (0, 0)
    redriven = [e for e in json_lines(chaos.log, "lambda:") if e.get("event") == "redriven"]
    assert len(redriven) >= len(dropped), "every record on the failure queue was redriven"


def test_every_input_has_exactly_one_outcome(chaos: ChaosRun) -> None:
    expected_outputs = {
        output_key(chaos.cloud, chaos.bundle, item.relative_output): item
        for item in chaos.inputs
        if item.frame is not None
    }
    assert set(chaos.outputs) == set(expected_outputs)
    rewritten = {key: len(v) for key, v in chaos.outputs.items() if len(v) > 1}
    assert rewritten == {}, "outputs written more than once"
    assert sorted(chaos.reports) == sorted(item.key for item in chaos.inputs)
    for item in chaos.inputs:
        report = chaos.reports[item.key]
        wanted = "failed" if item.frame is None else "succeeded"
        assert report["status"] == wanted, report
        if item.frame is not None:
            assert report["rows"] == len(item.frame), report


def test_outputs_equal_the_in_process_reference(chaos: ChaosRun) -> None:
    s3 = chaos.cloud.client("s3")
    bucket = chaos.cloud.outputs["OutputBucketName"]
    for item in chaos.inputs:
        if item.frame is None:
            continue
        key = output_key(chaos.cloud, chaos.bundle, item.relative_output)
        assert_same_predictions(read_parquet(s3, bucket, key), predict(chaos.bundle, item.frame))


def test_queues_are_drained_and_nothing_went_to_the_dead_letter_queue(chaos: ChaosRun) -> None:
    assert chaos.job_queue == (0, 0)
    assert chaos.dead_letters == [], [m.get("Body") for m in chaos.dead_letters]


def test_workers_stayed_within_max_workers_and_none_is_left_running(chaos: ChaosRun) -> None:
    max_workers = int(chaos.cloud.parameters["MaxWorkers"])
    assert 1 <= chaos.max_running <= max_workers
    assert chaos.max_processes <= max_workers
    assert running(chaos.worker_tasks) == []
    enough = math.ceil(WORKER_KILLS / max_workers)
    assert len(chaos.worker_tasks) > enough, "killed workers were not replaced"
