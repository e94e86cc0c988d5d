"""The batch trigger (lambda/handler.py) against in-process moto: events in, messages and
worker tasks out."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import handler
import pytest

from service.batch_contract import is_triggered

EVENTS = Path(__file__).resolve().parents[1] / "events"
STARTED_BY = "batch-worker"
SEVERAL = "s3_put_several.json"
ENCODED = "s3_put_encoded_keys.json"


def load_event(name: str) -> dict[str, Any]:
    """A sample event from tests/events, as the Lambda runtime would pass it."""
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def s3_event(*keys: str, template: str = SEVERAL) -> dict[str, Any]:
    """An S3 notification with one record per (already URL-encoded) key."""
    record = load_event(template)["Records"][0]
    records = []
    for key in keys:
        copied = copy.deepcopy(record)
        copied["s3"]["object"]["key"] = key
        records.append(copied)
    return {"Records": records}


# --- events in, messages out ----------------------------------------------------------------


def test_every_record_of_an_event_becomes_one_message(lambda_cloud, lambda_logs) -> None:
    summary = handler.handler(load_event(SEVERAL), None)

    assert summary["queued"] == 3 and summary["skipped"] == 0 and summary["records"] == 3
    by_key = {message["key"]: message for message in lambda_cloud.messages()}
    assert sorted(by_key) == [
        "incoming/2026-11-25/customers.parquet",
        "incoming/2026-11-25/events.jsonl",
        "incoming/2026-11-25/orders.csv",
    ]
    assert by_key["incoming/2026-11-25/events.jsonl"] == {
        "bucket": "model-endpoint-local-input",
        "key": "incoming/2026-11-25/events.jsonl",
        "etag": "0123456789abcdef0123456789abcdef",
        "size": 73,
        "version_id": "3HL4kqtJlcpXroDTDmjVBH40Nrjfkd",
        "event_time": "2026-11-25T12:00:02.000Z",
    }
    assert by_key["incoming/2026-11-25/orders.csv"]["version_id"] is None
    assert all(list(message) == list(handler.MESSAGE_FIELDS) for message in by_key.values())
    queued_lines = [line for line in lambda_logs() if line["message"] == "queued"]
    assert sorted(line["key"] for line in queued_lines) == sorted(by_key)
    assert {"bucket", "key", "etag", "size"} <= set(queued_lines[0])


def test_keys_are_decoded_exactly_once(lambda_cloud) -> None:
    handler.handler(load_event(ENCODED), None)

    assert sorted(message["key"] for message in lambda_cloud.messages()) == sorted(
        [
            "incoming/quarterly report 2026.csv",
            "incoming/data set/part 1.parquet",
            "incoming/résumé/日本語.jsonl",
            "incoming/a+b+c.csv",
            "incoming/year=2026/month=11/part.v1.2.final.parquet",
            "incoming/deep/nested/prefix/with+plus and space/x.y.z.CSV.gz",
        ]
    )


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("a+b.csv", "a b.csv"),
        ("a%20b.csv", "a b.csv"),
        ("a%2Bb.csv", "a+b.csv"),
        ("100%25+sure.csv", "100% sure.csv"),
        ("k%3Dv/x%3D1.parquet", "k=v/x=1.parquet"),
        ("dir%2Fsub/f.jsonl", "dir/sub/f.jsonl"),
        ("%C3%BCber/%F0%9F%93%88.csv", "über/📈.csv"),
        ("many.dots.in.name.v2.parquet", "many.dots.in.name.v2.parquet"),
    ],
)
def test_record_view_decodes_the_key(encoded: str, decoded: str) -> None:
    record = s3_event(encoded)["Records"][0]
    record["s3"]["object"]["eTag"] = '"quoted"'

    found = handler.S3Object.from_notification(record)

    assert found.key == decoded
    assert found.etag == "quoted"
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.key = "changed"  # type: ignore[misc]


def test_s3_test_event_is_ignored(lambda_cloud, lambda_logs) -> None:
    summary = handler.handler(load_event("s3_test_event.json"), None)

    assert (summary["event"], summary["records"], summary["queued"]) == ("s3-test", 0, 0)
    assert lambda_cloud.messages() == []
    assert lambda_cloud.running() == []
    assert any(line["message"] == "ignored S3 test event" for line in lambda_logs())


def test_eventbridge_object_created_is_queued(lambda_cloud) -> None:
    summary = handler.handler(load_event("eventbridge_s3_object_created.json"), None)

    assert summary["queued"] == 1
    assert lambda_cloud.messages() == [
        {
            "bucket": "model-endpoint-local-input",
            "key": "incoming/event bridge/batch 1.parquet",
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "size": 5,
            "version_id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            "event_time": "2026-11-25T12:02:00Z",
        }
    ]


@pytest.mark.parametrize(
    ("key", "accepted"),
    [
        ("in/a.parquet", True),
        ("in/A.PARQUET", True),
        ("in/a.csv", True),
        ("in/ROWS.CSV", True),
        ("in/a.csv.gz", True),
        ("in/a.jsonl.GZ", True),
        ("in/a.parquet.gz", False),
        ("in/a.json", False),
        ("in/a.txt", False),
        ("in/a.csv.tmp", False),
        ("in/a.gz", False),
        ("in/a.csvx", False),
        ("in/a.csv/", False),
        ("in/parquet", False),
    ],
)
def test_names_the_worker_reads_with_a_trigger_suffix_start_a_job(key: str, accepted: bool):
    assert is_triggered(key, (".parquet", ".csv", ".jsonl")) is accepted


def test_other_names_get_a_skipped_report_saying_what_is_supported(lambda_cloud) -> None:
    event = s3_event("in/keep.parquet", "in/notes.txt", "in/keep.CSV", "in/rows.parquet.gz")
    event["Records"].append(copy.deepcopy(event["Records"][0]))
    event["Records"][-1]["eventName"] = "ObjectRemoved:Delete"

    summary = handler.handler(event, None)

    assert (summary["records"], summary["queued"], summary["skipped"]) == (5, 2, 2)
    assert summary["malformed"] == 1
    assert sorted(message["key"] for message in lambda_cloud.messages()) == [
        "in/keep.CSV",
        "in/keep.parquet",
    ]
    report = lambda_cloud.report("in/notes.txt")
    assert report["status"] == "skipped" and report["error"] == "unsupported_name"
    assert report["input_bucket"] == "model-endpoint-local-input"
    assert report["input_etag"] == event["Records"][1]["s3"]["object"]["eTag"]
    assert ".parquet, .csv, .jsonl" in report["message"] and ".csv.gz" in report["message"]
    assert lambda_cloud.report("in/rows.parquet.gz")["status"] == "skipped"
    assert lambda_cloud.report("in/keep.CSV") is None


def test_objects_of_other_buckets_are_refused_with_a_log_line(lambda_cloud, lambda_logs) -> None:
    event = s3_event("in/a.csv", "in/b.csv")
    event["Records"][1]["s3"]["bucket"]["name"] = "someone-elses-bucket"

    summary = handler.handler(event, None)

    assert (summary["queued"], summary["refused"]) == (1, 1)
    assert [m["key"] for m in lambda_cloud.messages()] == ["in/a.csv"]
    refused = [
        line for line in lambda_logs() if line["event"] == "refused object of another bucket"
    ]
    assert refused[0]["bucket"] == "someone-elses-bucket" and refused[0]["key"] == "in/b.csv"
    assert lambda_cloud.report("in/b.csv") is None


@pytest.mark.parametrize(
    "break_record",
    [
        lambda record: record["s3"]["object"].pop("key"),
        lambda record: record["s3"]["object"].pop("size"),
        lambda record: record["s3"]["object"].update(size="12 bytes"),
        lambda record: record["s3"]["bucket"].pop("name"),
        lambda record: record.pop("s3"),
        lambda record: record.pop("eventTime"),
    ],
    ids=["no-key", "no-size", "text-size", "no-bucket", "no-s3", "no-event-time"],
)
def test_a_malformed_record_costs_only_itself(lambda_cloud, lambda_logs, break_record) -> None:
    event = s3_event("in/one.parquet", "in/broken.parquet", "in/three.csv")
    break_record(event["Records"][1])

    summary = handler.handler(event, None)

    assert (summary["queued"], summary["malformed"]) == (2, 1)
    assert sorted(m["key"] for m in lambda_cloud.messages()) == ["in/one.parquet", "in/three.csv"]
    assert any(line["message"] == "skipped record: malformed" for line in lambda_logs())


def test_a_record_that_is_not_an_object_is_skipped(lambda_cloud) -> None:
    event = s3_event("in/one.parquet")
    event["Records"].insert(0, "not a record")

    summary = handler.handler(event, None)

    assert (summary["queued"], summary["malformed"]) == (1, 1)


def test_more_than_ten_objects_go_in_several_batches(lambda_cloud) -> None:
    keys = [f"in/part-{index:02}.parquet" for index in range(23)]

    summary = handler.handler(s3_event(*keys), None)

    assert summary["queued"] == 23
    assert sorted(message["key"] for message in lambda_cloud.messages()) == keys


# --- partial batch failures -----------------------------------------------------------------


class FlakyQueue:
    """Wraps the moto SQS client; entries for chosen keys fail a number of times first."""

    def __init__(self, real: Any, failures: dict[str, int], sender_fault: bool = False) -> None:
        self.real = real
        self.failures = dict(failures)
        self.sender_fault = sender_fault
        self.batch_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message_batch(self, **request: Any) -> dict:
        self.batch_calls += 1
        failing, passing = [], []
        for entry in request["Entries"]:
            key = json.loads(entry["MessageBody"])["key"]
            if self.failures.get(key, 0) > 0:
                self.failures[key] -= 1
                failing.append(entry)
            else:
                passing.append(entry)
        response = {"Successful": [], "Failed": []}
        if passing:
            response = self.real.send_message_batch(QueueUrl=request["QueueUrl"], Entries=passing)
        response.setdefault("Failed", [])
        response["Failed"] += [
            {
                "Id": entry["Id"],
                "SenderFault": self.sender_fault,
                "Code": "InternalError",
                "Message": "simulated",
            }
            for entry in failing
        ]
        return response


def use_queue(monkeypatch: pytest.MonkeyPatch, queue: FlakyQueue) -> None:
    real_client = handler.client
    monkeypatch.setattr(
        handler, "client", lambda service: queue if service == "sqs" else real_client(service)
    )


def test_failed_entries_are_retried_until_sent(lambda_cloud, monkeypatch, no_send_backoff) -> None:
    queue = FlakyQueue(handler.client("sqs"), {"in/b.csv": 2, "in/c.csv": 1})
    use_queue(monkeypatch, queue)

    summary = handler.handler(s3_event("in/a.csv", "in/b.csv", "in/c.csv"), None)

    assert summary["queued"] == 3 and summary["parked"] == 0
    assert queue.batch_calls == 3
    assert sorted(m["key"] for m in lambda_cloud.messages()) == ["in/a.csv", "in/b.csv", "in/c.csv"]


def test_objects_that_cannot_be_queued_are_parked_and_redriven_by_the_next_run(
    lambda_cloud, monkeypatch, no_send_backoff, lambda_logs
) -> None:
    queue = FlakyQueue(handler.client("sqs"), {"in/b.csv": 99})
    use_queue(monkeypatch, queue)

    summary = handler.handler(s3_event("in/a.csv", "in/b.csv", "in/c.csv"), None)

    assert (summary["queued"], summary["parked"]) == (2, 1)
    assert queue.batch_calls == handler.SEND_ATTEMPTS
    assert sorted(m["key"] for m in lambda_cloud.messages()) == ["in/a.csv", "in/c.csv"]
    assert len(lambda_cloud.running()) == 2
    monkeypatch.undo()
    handler.client.cache_clear()

    again = handler.handler(load_event("eventbridge_scheduled.json"), None)

    assert again["redriven"] == 1
    assert [m["key"] for m in lambda_cloud.messages()] == ["in/b.csv"]
    assert lambda_cloud.failure_records() == []


def test_sender_fault_is_not_retried_and_the_object_is_parked(
    lambda_cloud, monkeypatch, no_send_backoff
) -> None:
    queue = FlakyQueue(handler.client("sqs"), {"in/b.csv": 99}, sender_fault=True)
    use_queue(monkeypatch, queue)

    summary = handler.handler(s3_event("in/a.csv", "in/b.csv"), None)

    assert queue.batch_calls == 1 and summary["parked"] == 1
    [record] = lambda_cloud.failure_records()
    assert record["requestContext"]["condition"] == handler.PARKED_CONDITION
    assert [job["key"] for job in record["requestPayload"]["jobs"]] == ["in/b.csv"]


def test_raises_only_when_an_object_can_be_neither_queued_nor_parked(
    lambda_cloud, monkeypatch, no_send_backoff
) -> None:
    lambda_cloud.configure(monkeypatch, FAILURE_QUEUE_URL=lambda_cloud.failure_queue_url + "-gone")
    use_queue(monkeypatch, FlakyQueue(handler.client("sqs"), {"in/b.csv": 99}))

    with pytest.raises(handler.QueueError, match=r"s3://model-endpoint-local-input/in/b\.csv"):
        handler.handler(s3_event("in/a.csv", "in/b.csv"), None)


def test_a_failed_invocation_record_is_redriven_from_the_failure_queue(lambda_cloud) -> None:
    """The record Lambda sends to an on-failure destination, in the documented shape
    (https://docs.aws.amazon.com/lambda/latest/dg/invocation-async-retain-records.html):
    its requestPayload is the original S3 event."""
    for name in (
        "lambda_destination_on_failure.json",
        "lambda_destination_event_age_exceeded.json",
    ):
        body = (EVENTS / name).read_text(encoding="utf-8")
        lambda_cloud.sqs.send_message(QueueUrl=lambda_cloud.failure_queue_url, MessageBody=body)

    summary = handler.handler(load_event("eventbridge_scheduled.json"), None)

    assert summary["redriven"] == 6
    keys = sorted(message["key"] for message in lambda_cloud.messages())
    original = [r["s3"]["object"]["key"] for r in load_event(SEVERAL)["Records"]]
    assert keys == sorted(original * 2)
    assert lambda_cloud.failure_records() == []


def test_a_parked_record_with_a_broken_job_settles_the_others(lambda_cloud) -> None:
    record = {
        "requestContext": {"condition": handler.PARKED_CONDITION},
        "requestPayload": {
            "jobs": [
                "not a job",
                {"bucket": "model-endpoint-local-input", "key": "in/x.csv", "size": "big"},
                {
                    "bucket": "model-endpoint-local-input",
                    "key": "in/ok.csv",
                    "etag": "e",
                    "size": 3,
                    "version_id": None,
                    "event_time": "2026-11-25T12:00:00Z",
                },
            ]
        },
    }
    body = json.dumps(record)
    lambda_cloud.sqs.send_message(QueueUrl=lambda_cloud.failure_queue_url, MessageBody=body)

    summary = handler.handler({}, None)

    assert summary["redriven"] == 1
    assert [m["key"] for m in lambda_cloud.messages()] == ["in/ok.csv"]
    assert lambda_cloud.failure_records() == []


def test_an_unreadable_failure_record_is_dropped_with_a_log_line(lambda_cloud, lambda_logs) -> None:
    lambda_cloud.sqs.send_message(QueueUrl=lambda_cloud.failure_queue_url, MessageBody="{broken")

    handler.handler({}, None)

    assert lambda_cloud.failure_records() == []
    assert any(line["event"] == "unreadable failure record dropped" for line in lambda_logs())


def test_run_task_failing_never_raises_and_queues_each_object_once(
    lambda_cloud, monkeypatch, lambda_logs
) -> None:
    lambda_cloud.configure(monkeypatch, TASK_DEFINITION="no-such-task-definition")

    summary = handler.handler(s3_event("in/a.csv", "in/b.csv"), None)

    assert (summary["queued"], summary["started"], summary["scale_failed"]) == (2, 0, 1)
    assert sorted(m["key"] for m in lambda_cloud.messages()) == ["in/a.csv", "in/b.csv"]
    assert any(line["event"].startswith("rescale failed") for line in lambda_logs())


# --- scaling --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backlog", "running", "max_workers", "files_per_worker", "start"),
    [
        (0, 0, 5, 1, 0),
        (1, 0, 5, 1, 1),
        (3, 0, 5, 1, 3),
        (7, 0, 5, 1, 5),
        (7, 2, 5, 1, 3),
        (7, 5, 5, 1, 0),
        (7, 8, 5, 1, 0),
        (0, 2, 5, 1, 0),
        (4, 0, 5, 4, 1),
        (5, 0, 5, 4, 2),
        (9, 1, 5, 4, 2),
        (100, 0, 10, 10, 10),
        (101, 0, 20, 10, 11),
        (50, 0, 1, 1, 1),
    ],
)
def test_workers_to_start(
    backlog: int, running: int, max_workers: int, files_per_worker: int, start: int
) -> None:
    assert handler.workers_to_start(backlog, running, max_workers, files_per_worker) == start


@pytest.mark.parametrize(
    ("backlog", "running", "max_workers", "files_per_worker", "start"),
    [(5, 0, 3, 2, 3), (5, 1, 3, 2, 2), (3, 0, 3, 2, 2), (12, 0, 12, 1, 12), (2, 3, 3, 1, 0)],
)
def test_scheduled_event_rescales_from_the_backlog(
    lambda_cloud, monkeypatch, backlog, running, max_workers, files_per_worker, start
) -> None:
    lambda_cloud.configure(
        monkeypatch, MAX_WORKERS=str(max_workers), FILES_PER_WORKER=str(files_per_worker)
    )
    lambda_cloud.seed_backlog(backlog)
    lambda_cloud.start_workers(running)

    summary = handler.handler(load_event("eventbridge_scheduled.json"), None)

    assert (summary["event"], summary["queued"]) == ("schedule", 0)
    assert (summary["backlog"], summary["running"], summary["started"]) == (
        backlog,
        running,
        start,
    )
    assert len(lambda_cloud.running()) == running + start


def test_scheduled_event_with_nobody_running_starts_workers(lambda_cloud, lambda_logs) -> None:
    lambda_cloud.seed_backlog(2)

    summary = handler.handler(load_event("eventbridge_scheduled.json"), None)

    assert summary["started"] == 2
    arns = lambda_cloud.running()
    tasks = lambda_cloud.ecs.describe_tasks(cluster=lambda_cloud.cluster, tasks=arns)["tasks"]
    assert {task["startedBy"] for task in tasks} == {STARTED_BY}
    assert {task["launchType"] for task in tasks} == {"FARGATE"}
    started_lines = [
        line["task_arn"] for line in lambda_logs() if line["message"] == "worker started"
    ]
    assert sorted(started_lines) == sorted(arns)


@pytest.mark.parametrize("event", [{}, None, {"comment": "run by hand"}])
def test_empty_or_manual_event_only_rescales(lambda_cloud, event) -> None:
    lambda_cloud.seed_backlog(1)

    summary = handler.handler(event, None)

    assert (summary["event"], summary["queued"], summary["started"]) == ("manual", 0, 1)


def test_run_task_request_carries_the_network_configuration(lambda_cloud, monkeypatch) -> None:
    requests: list[dict[str, Any]] = []
    real_client = handler.client

    class RecordingEcs:
        def __getattr__(self, name: str) -> Any:
            return getattr(real_client("ecs"), name)

        def run_task(self, **request: Any) -> dict:
            requests.append(request)
            return real_client("ecs").run_task(**request)

    monkeypatch.setattr(
        handler, "client", lambda s: RecordingEcs() if s == "ecs" else real_client(s)
    )
    lambda_cloud.configure(monkeypatch, MAX_WORKERS="25")
    lambda_cloud.seed_backlog(23)

    handler.handler({}, None)

    assert [request["count"] for request in requests] == [10, 10, 3]
    assert requests[0]["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": lambda_cloud.env["SUBNETS"].split(","),
            "securityGroups": [lambda_cloud.env["SECURITY_GROUPS"]],
            "assignPublicIp": "ENABLED",
        }
    }
    assert (requests[0]["launchType"], requests[0]["startedBy"]) == ("FARGATE", STARTED_BY)
    assert requests[0]["taskDefinition"] == "worker"


def test_stopped_workers_are_not_counted(lambda_cloud) -> None:
    lambda_cloud.seed_backlog(3)
    for arn in lambda_cloud.start_workers(3):
        lambda_cloud.ecs.stop_task(cluster=lambda_cloud.cluster, task=arn, reason="finished")

    summary = handler.handler({}, None)

    assert (summary["running"], summary["started"]) == (0, 3)


def test_workers_beyond_the_cap_are_stopped_newest_first(monkeypatch) -> None:
    stops: list[tuple[str, str]] = []

    class Ecs:
        def stop_task(self, cluster: str, task: str, reason: str) -> dict:
            stops.append((task, reason))
            return {}

    monkeypatch.setattr(handler, "client", lambda service: Ecs())
    config = dataclasses.replace(_config(), max_workers=2)
    running = [
        handler.WorkerTask(f"arn:task/{name}", created)
        for name, created in [("a", 100.0), ("b", 300.0), ("c", 200.0), ("d", 400.0)]
    ]

    assert handler.trim_surplus(config, running) == 2
    assert [task for task, _ in stops] == ["arn:task/d", "arn:task/b"]
    assert "MAX_WORKERS=2" in stops[0][1]


def test_a_lowered_cap_trims_running_workers(lambda_cloud, monkeypatch, lambda_logs) -> None:
    lambda_cloud.start_workers(5)
    lambda_cloud.seed_backlog(10)

    summary = handler.handler(load_event("eventbridge_scheduled.json"), None)

    assert (summary["running"], summary["started"], summary["stopped"]) == (5, 0, 2)
    assert len(lambda_cloud.running()) == 3
    stopped = lambda_cloud.ecs.list_tasks(cluster=lambda_cloud.cluster, desiredStatus="STOPPED")[
        "taskArns"
    ]
    reasons = {
        task["stoppedReason"]
        for task in lambda_cloud.ecs.describe_tasks(cluster=lambda_cloud.cluster, tasks=stopped)[
            "tasks"
        ]
    }
    assert reasons == {"more than MAX_WORKERS=3 batch workers were running"}


# --- the cap under concurrent invocations ---------------------------------------------------


def run_concurrently(invocations: int, call) -> list[BaseException]:
    """Start every call at once from its own thread; returns what they raised."""
    barrier = threading.Barrier(invocations)
    errors: list[BaseException] = []

    def invoke(index: int) -> None:
        barrier.wait()
        try:
            call(index)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=invoke, args=(i,)) for i in range(invocations)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


def test_serialised_invocations_never_exceed_the_cap(lambda_cloud) -> None:
    """Fifty uploads at once: Lambda runs them one at a time (ReservedConcurrentExecutions 1),
    modelled by a lock; an observer samples the RUNNING workers throughout."""
    lambda_concurrency = threading.Lock()
    observations: list[int] = []
    done = threading.Event()

    def observe() -> None:
        while not done.wait(0.002):
            observations.append(len(lambda_cloud.running()))

    def upload(index: int) -> None:
        with lambda_concurrency:
            handler.handler(s3_event(f"in/burst-{index}.parquet"), None)

    observer = threading.Thread(target=observe)
    observer.start()
    errors = run_concurrently(50, upload)
    done.set()
    observer.join()

    assert errors == []
    assert observations and max(observations) <= 3, observations
    assert len(lambda_cloud.running()) == 3


def test_racing_invocations_converge_on_the_cap(lambda_cloud, monkeypatch) -> None:
    """Without Lambda's serialisation: every invocation decides from the same empty snapshot
    before any starts a task (the worst race), so each starts the full cap. The trim after
    RunTask must bring the total back to the cap, and a scheduled run must restore it."""
    racers = 6
    decided = threading.Barrier(racers)
    real_start = handler.start_workers

    def start_after_everyone_decided(config: Any, count: int) -> int:
        decided.wait(timeout=10)
        return real_start(config, count)

    monkeypatch.setattr(handler, "start_workers", start_after_everyone_decided)
    errors = run_concurrently(
        racers,
        lambda i: handler.handler(
            s3_event(f"in/race-{i}-a.csv", f"in/race-{i}-b.csv", f"in/race-{i}-c.csv"), None
        ),
    )
    monkeypatch.setattr(handler, "start_workers", real_start)

    assert errors == []
    ever_started = lambda_cloud.ecs.list_tasks(cluster=lambda_cloud.cluster, startedBy=STARTED_BY)
    assert len(ever_started["taskArns"]) == racers * 3, "the race did not happen"
    assert len(lambda_cloud.running()) <= 3
    handler.handler(load_event("eventbridge_scheduled.json"), None)
    assert len(lambda_cloud.running()) == 3


# --- configuration --------------------------------------------------------------------------


def _config() -> handler.Config:
    return handler.Config.from_env(
        {
            "JOB_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
            "INPUT_BUCKET": "input",
            "OUTPUT_BUCKET": "output",
            "CLUSTER_NAME": "batch",
            "TASK_DEFINITION": "worker",
            "SUBNETS": "subnet-1, subnet-2",
            "MAX_WORKERS": "4",
            "FILES_PER_WORKER": "2",
        }
    )


def test_config_defaults_and_parsing() -> None:
    config = _config()

    assert config.subnets == ("subnet-1", "subnet-2")
    assert config.security_groups == ()
    assert config.trigger_suffixes == (".parquet", ".csv", ".jsonl")
    assert (config.started_by, config.launch_type, config.worker_container) == (
        "batch-worker",
        "FARGATE",
        "worker",
    )
    assert config.assign_public_ip == "DISABLED"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_workers = 100  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_WORKERS", None, "MAX_WORKERS is required; accepts a whole number >= 1"),
        ("MAX_WORKERS", "0", "MAX_WORKERS='0' is invalid; accepts a whole number >= 1"),
        ("FILES_PER_WORKER", "two", "FILES_PER_WORKER='two' is invalid; accepts a whole number"),
        ("JOB_QUEUE_URL", None, "JOB_QUEUE_URL is required; accepts the URL of the job queue"),
        ("CLUSTER_NAME", " ", "CLUSTER_NAME is required"),
        ("TASK_DEFINITION", None, "TASK_DEFINITION is required"),
        ("SUBNETS", None, "SUBNETS is required when LAUNCH_TYPE is FARGATE"),
        ("SUBNETS", "subnet-1,,subnet-2", "SUBNETS='subnet-1,,subnet-2' has an empty entry"),
        ("ASSIGN_PUBLIC_IP", "yes", "ASSIGN_PUBLIC_IP='yes' is invalid; accepts one of ENABLED"),
        ("LAUNCH_TYPE", "LAMBDA", "LAUNCH_TYPE='LAMBDA' is invalid; accepts one of FARGATE"),
        ("TRIGGER_SUFFIXES", "parquet,csv", "TRIGGER_SUFFIXES='parquet,csv' is invalid"),
        ("TRIGGER_SUFFIXES", ".csv,.parquet.gz", "TRIGGER_SUFFIXES='.csv,.parquet.gz' names"),
        ("INPUT_BUCKET", None, "INPUT_BUCKET is required"),
        ("OUTPUT_BUCKET", "", "OUTPUT_BUCKET is required"),
        ("STARTED_BY", "batch worker!", "STARTED_BY='batch worker!' is invalid; accepts 1-128"),
    ],
)
def test_bad_environment_names_the_variable(
    lambda_cloud, monkeypatch, name: str, value: str | None, message: str
) -> None:
    if value is None:
        monkeypatch.delenv(name)
    else:
        monkeypatch.setenv(name, value)
    handler.load_config.cache_clear()

    with pytest.raises(handler.ConfigError) as raised:
        handler.handler({}, None)

    assert str(raised.value).startswith(message)


def test_every_bad_variable_is_reported_at_once(monkeypatch) -> None:
    with pytest.raises(handler.ConfigError) as raised:
        handler.Config.from_env({"MAX_WORKERS": "-1", "LAUNCH_TYPE": "FARGATE"})

    assert [line.split(" ")[0] for line in str(raised.value).splitlines()] == [
        "JOB_QUEUE_URL",
        "INPUT_BUCKET",
        "OUTPUT_BUCKET",
        "CLUSTER_NAME",
        "TASK_DEFINITION",
        "MAX_WORKERS='-1'",
        "FILES_PER_WORKER",
        "SUBNETS",
    ]


def test_environment_is_read_once_per_container(lambda_cloud, monkeypatch) -> None:
    lambda_cloud.seed_backlog(5)
    handler.handler({}, None)
    monkeypatch.setenv("MAX_WORKERS", "not a number")

    summary = handler.handler({}, None)

    assert summary["running"] == 3
    assert handler.load_config() is handler.load_config()


def test_clients_are_created_once_per_container(lambda_cloud) -> None:
    assert handler.client("sqs") is handler.client("sqs")
    assert handler.client("ecs") is not handler.client("sqs")


# --- lambda_logs -----------------------------------------------------------------------------------


def test_every_log_line_is_json_with_a_summary(lambda_cloud, lambda_logs) -> None:
    class Context:
        aws_request_id = "8f5e2c1a-request"

    handler.handler(load_event(SEVERAL), Context())

    lines = lambda_logs()
    assert all(line["request_id"] == "8f5e2c1a-request" for line in lines)
    summary = [line for line in lines if line["message"] == "summary"]
    assert len(summary) == 1
    assert {"records", "queued", "skipped", "backlog", "running", "started"} <= set(summary[0])
    assert (summary[0]["records"], summary[0]["queued"], summary[0]["started"]) == (3, 3, 3)
    assert len([line for line in lines if line["message"] == "worker started"]) == 3
