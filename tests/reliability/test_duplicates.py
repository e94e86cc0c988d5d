"""Duplicate S3 events: every event delivered three times, and each input version written once.

S3 delivers event notifications at least once; a repeated delivery is the trigger invoked
again with the same event (``InvocationType=Event``, the event in AWS's documented shape:
bucket, URL-encoded key, ETag, size, versionId; tests/events/s3_put_several.json).

The local cloud runs MaxWorkers 3, FilesPerWorker 1 and ReserveTriggerConcurrency false, and
three workers are warmed up and polling before the copies arrive, so the three copies of an
event are queued together and taken together, as happens on AWS whenever a file takes
longer to transform than the gap between two deliveries. With the reserved concurrency of
1 the local trigger queues the copies about half a second apart and a small file is done
before the next copy arrives, which hides the race.

1. Six files in four formats, and version 1 of ``dup/late.csv``: each event three times.
2. Version 2 of ``dup/late.csv``: its event three times.
3. Version 1's event of ``dup/late.csv`` once more, late.
4. ``dup/report-lost.parquet`` once; its report is deleted (what a worker killed between
   writing the output and writing the report leaves behind) and its event delivered again.

The output bucket is versioned for the test, so every write leaves a version to count: one
output version and one report version per input version, whatever the number of copies.
Before the worker wrote its output conditionally, every copy taken together was written
(C2 in docs/RELIABILITY.md), the late event of version 1 overwrote version 2's output (C1),
and the input whose report was lost stayed without one (C3).
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from localcloud.waiting import wait_until
from service.artifacts import Bundle
from service.model import predict
from tests.e2e.batch_helpers import (
    assert_same_predictions,
    get_json,
    load_served_bundle,
    output_key,
    queue_counts,
    read_parquet,
    report_key,
    to_csv,
    to_jsonl,
    to_parquet,
    wait_reports,
)
from tests.e2e.cloud_process import LocalCloudProcess, wait_for
from tests.reliability.faults import (
    deliver_again,
    fault_cloud,
    json_lines,
    object_versions,
    s3_put_event,
    workers,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]

PARAMETERS = {
    "MaxWorkers": "3",
    "FilesPerWorker": "1",
    "IdleSeconds": "30",
    "ReserveTriggerConcurrency": "false",
}
DELIVERIES = 3
DEADLINE = 120.0
DLQ = "DeadLetterQueueUrl"
WARM_UP = 6
# Rows per file (half for JSON Lines): 0.2-0.9 s of work, longer than the 0.1-0.5 s over
# which the copies of one event arrive, so they overlap.
ROWS = 40_000


def gzip_csv(frame: pd.DataFrame) -> bytes:
    return gzip.compress(to_csv(frame))


# input key -> (encoder, output key relative to model=<name>/version=<version>/): the whole
# input key plus .parquet
FILES: dict[str, tuple[Callable[[pd.DataFrame], bytes], str]] = {
    "dup/a.parquet": (to_parquet, "dup/a.parquet.parquet"),
    "dup/b.csv": (to_csv, "dup/b.csv.parquet"),
    "dup/c.csv.gz": (gzip_csv, "dup/c.csv.gz.parquet"),
    "dup/d.jsonl": (to_jsonl, "dup/d.jsonl.parquet"),
    "dup/e f+g.parquet": (to_parquet, "dup/e f+g.parquet.parquet"),
    "dup/h.csv": (to_csv, "dup/h.csv.parquet"),
}
LATE = "dup/late.csv"
LATE_OUTPUT = "dup/late.csv.parquet"
LOST = "dup/report-lost.parquet"


@dataclass
class Upload:
    """One input version and the event S3 sent for it."""

    key: str
    frame: pd.DataFrame
    etag: str
    version_id: str
    event: dict[str, Any]


@dataclass
class DuplicateRun:
    cloud: LocalCloudProcess
    bundle: Bundle
    uploads: dict[str, Upload]
    late_first: Upload
    late_second: Upload
    outputs: dict[str, list[dict[str, Any]]]
    reports: dict[str, list[dict[str, Any]]]
    late_before: dict[str, Any]
    late_outputs_before: int
    late_reports_before: int
    lost_report: dict[str, Any] | None
    deliveries: int
    log: list[str] = field(default_factory=list)

    def entries(self, source: str) -> list[dict[str, Any]]:
        found = json_lines(self.log, source)
        return [e for e in found if not str(e.get("key", "")).startswith("warm/")]

    def worker_outcomes(self) -> Counter[str]:
        return Counter(e["status"] for e in self.entries("ecs:") if e.get("event") == "file")

    def queued(self) -> int:
        return sum(1 for e in self.entries("lambda:") if e.get("message") == "queued")


def upload_and_deliver(
    cloud: LocalCloudProcess,
    key: str,
    body: bytes,
    frame: pd.DataFrame,
    copies: int,
) -> Upload:
    """Upload one file (S3 delivers its event), then deliver the same event ``copies`` more
    times."""
    s3 = cloud.client("s3")
    bucket = cloud.outputs["InputBucketName"]
    put = s3.put_object(Bucket=bucket, Key=key, Body=body)
    etag = put["ETag"].strip('"')
    event = s3_put_event(bucket, key, etag, len(body), put["VersionId"], "us-east-1")
    for _ in range(copies):
        deliver_again(cloud, event)
    return Upload(key, frame, etag, put["VersionId"], event)


def queued_so_far(cloud: LocalCloudProcess) -> int:
    lines = cloud.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    return sum(1 for e in json_lines(lines, "lambda:") if e.get("message") == "queued")


def wait_settled(cloud: LocalCloudProcess, queued: int) -> None:
    """The trigger has queued ``queued`` messages in all, and every one has been settled."""
    wait_for(
        lambda: queued_so_far(cloud) >= queued and queue_counts(cloud) == (0, 0),
        DEADLINE,
        f"{queued} queued messages, all settled",
        context=cloud.log_tail,
    )


def warm_up(cloud: LocalCloudProcess, train_example: ModuleType) -> int:
    """MaxWorkers workers up and polling, so copies that arrive together are taken together.

    How many workers a round of small uploads starts depends on how fast the first ones
    drain the queue, and an idle worker leaves after IdleSeconds; so rounds are uploaded
    until all MaxWorkers are seen at once. Returns the number of files uploaded.
    """
    wanted = int(cloud.parameters["MaxWorkers"])
    uploaded: list[str] = []

    def one_round_brings_every_worker() -> bool:
        keys = [f"warm/{len(uploaded) + n}.parquet" for n in range(WARM_UP)]
        for n, key in enumerate(keys):
            frame = train_example.sample_rows(20, seed=len(uploaded) + n)
            upload_and_deliver(cloud, key, to_parquet(frame), frame, 0)
        uploaded.extend(keys)
        wait_reports(cloud, keys, DEADLINE)
        return seen_within(lambda: len(workers(cloud)) == wanted, 10.0)

    wait_for(
        one_round_brings_every_worker,
        DEADLINE,
        f"{wanted} workers at once",
        context=lambda: (
            f"{len(workers(cloud))} workers after {len(uploaded)} warm-up files\n{cloud.log_tail()}"
        ),
    )
    wait_settled(cloud, len(uploaded))
    return len(uploaded)


def seen_within(condition: Callable[[], bool], seconds: float) -> bool:
    """Whether ``condition()`` holds at some poll within ``seconds``."""
    try:
        wait_until(condition, seconds, interval=0.2)
    except TimeoutError:
        return False
    return True


def versions_of(s3: Any, bucket: str, key: str) -> int:
    return len(object_versions(s3, bucket, key).get(key, []))


@pytest.fixture(scope="module")
def duplicates(
    tmp_path_factory: pytest.TempPathFactory, train_example: ModuleType
) -> Iterator[DuplicateRun]:
    work = tmp_path_factory.mktemp("duplicates")
    with fault_cloud(work, PARAMETERS) as cloud:
        bundle = load_served_bundle(cloud)
        s3 = cloud.client("s3")
        out = cloud.outputs["OutputBucketName"]
        s3.put_bucket_versioning(Bucket=out, VersioningConfiguration={"Status": "Enabled"})
        warmed = warm_up(cloud, train_example)
        copies = DELIVERIES - 1

        uploads = {}
        for number, (key, (encode, _)) in enumerate(FILES.items()):
            rows = ROWS // 2 if key.endswith(".jsonl") else ROWS
            frame = train_example.sample_rows(rows + number, seed=200 + number)
            uploads[key] = upload_and_deliver(cloud, key, encode(frame), frame, copies)
        first_frame = train_example.sample_rows(350, seed=998)
        late_first = upload_and_deliver(cloud, LATE, to_csv(first_frame), first_frame, copies)
        sent = warmed + DELIVERIES * (len(FILES) + 1)
        wait_settled(cloud, sent)

        second_frame = train_example.sample_rows(120, seed=999)
        late_second = upload_and_deliver(cloud, LATE, to_csv(second_frame), second_frame, copies)
        sent += DELIVERIES
        wait_settled(cloud, sent)
        late_key = output_key(cloud, bundle, LATE_OUTPUT)
        late_before = s3.head_object(Bucket=out, Key=late_key)
        late_outputs_before = versions_of(s3, out, late_key)
        late_reports_before = versions_of(s3, out, report_key(cloud, LATE))

        deliver_again(cloud, late_first.event)
        sent += 1
        wait_settled(cloud, sent)

        lost_frame = train_example.sample_rows(80, seed=997)
        lost = upload_and_deliver(cloud, LOST, to_parquet(lost_frame), lost_frame, 0)
        sent += 1
        wait_settled(cloud, sent)
        s3.delete_object(Bucket=out, Key=report_key(cloud, LOST))
        deliver_again(cloud, lost.event)
        sent += 1
        wait_settled(cloud, sent)

        yield DuplicateRun(
            cloud=cloud,
            bundle=bundle,
            uploads=uploads,
            late_first=late_first,
            late_second=late_second,
            outputs=object_versions(s3, out, output_key(cloud, bundle, "dup/")),
            reports=object_versions(s3, out, report_key(cloud, "dup/")[: -len(".json")]),
            late_before=late_before,
            late_outputs_before=late_outputs_before,
            late_reports_before=late_reports_before,
            lost_report=get_json(s3, out, report_key(cloud, LOST)),
            deliveries=sent - warmed,
            log=cloud.log_text().splitlines(),
        )


def test_every_delivery_reached_the_queue_and_nothing_is_left(duplicates: DuplicateRun) -> None:
    outcomes = duplicates.worker_outcomes()
    print(
        f"duplicates: {duplicates.deliveries} deliveries of {len(FILES) + 2} input versions, "
        f"{duplicates.queued()} messages queued, worker outcomes {dict(outcomes)}, "
        f"output versions {sorted(len(v) for v in duplicates.outputs.values())}, "
        f"report versions {sorted(len(v) for v in duplicates.reports.values())}"
    )
    assert duplicates.queued() == duplicates.deliveries
    assert queue_counts(duplicates.cloud) == (0, 0)
    assert queue_counts(duplicates.cloud, DLQ) == (0, 0)
    assert sum(outcomes.values()) == duplicates.deliveries


def test_each_input_version_is_written_once(duplicates: DuplicateRun) -> None:
    cloud, bundle = duplicates.cloud, duplicates.bundle
    written = {key: len(v) for key, v in duplicates.outputs.items()}
    late = written.pop(output_key(cloud, bundle, LATE_OUTPUT))
    assert written.pop(output_key(cloud, bundle, LOST + ".parquet")) == 1
    assert written == {output_key(cloud, bundle, out): 1 for _, out in FILES.values()}
    assert duplicates.late_outputs_before == 2, "one output version per input version"
    assert late >= duplicates.late_outputs_before


def test_each_report_says_succeeded_once(duplicates: DuplicateRun) -> None:
    cloud = duplicates.cloud
    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    versions = {key: len(v) for key, v in duplicates.reports.items()}
    versions.pop(report_key(cloud, LATE))
    versions.pop(report_key(cloud, LOST))
    assert versions == {report_key(cloud, key): 1 for key in FILES}
    assert duplicates.late_reports_before == 2
    for key, upload in duplicates.uploads.items():
        report = get_json(s3, bucket, report_key(cloud, key))
        assert report is not None and report["status"] == "succeeded", report
        assert (report["input_etag"], report["input_version_id"]) == (
            upload.etag,
            upload.version_id,
        )
        assert report["rows"] == len(upload.frame)


def test_outputs_equal_the_in_process_reference(duplicates: DuplicateRun) -> None:
    cloud, bundle = duplicates.cloud, duplicates.bundle
    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    for key, upload in duplicates.uploads.items():
        out = output_key(cloud, bundle, FILES[key][1])
        assert_same_predictions(read_parquet(s3, bucket, out), predict(bundle, upload.frame))
        assert s3.head_object(Bucket=bucket, Key=out)["Metadata"]["input-etag"] == upload.etag


def test_a_late_event_of_an_older_version_rewrites_nothing(duplicates: DuplicateRun) -> None:
    cloud, bundle = duplicates.cloud, duplicates.bundle
    s3 = cloud.client("s3")
    bucket = cloud.outputs["OutputBucketName"]
    out = output_key(cloud, bundle, LATE_OUTPUT)
    now = s3.head_object(Bucket=bucket, Key=out)
    before = duplicates.late_before
    assert (now["ETag"], now["LastModified"], now.get("VersionId")) == (
        before["ETag"],
        before["LastModified"],
        before.get("VersionId"),
    )
    latest = duplicates.late_second
    assert_same_predictions(read_parquet(s3, bucket, out), predict(bundle, latest.frame))
    report = get_json(s3, bucket, report_key(cloud, LATE))
    assert report is not None and report["input_etag"] == latest.etag


def test_a_redelivery_restores_a_report_its_first_worker_never_wrote(
    duplicates: DuplicateRun,
) -> None:
    report = duplicates.lost_report
    assert report is not None, "the input has an output and no report"
    assert report["status"] == "succeeded"
