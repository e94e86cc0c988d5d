"""scripts/jobs.py: how a file's state is derived, and the table read from a stack in moto."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from tests.worker_fixtures import load_script

jobs = load_script("jobs")
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
NO_QUEUE = jobs.QueueCounts(visible=0, in_flight=0, dead_letters=0)


def obj(key: str, etag: str = "e1", minutes: int = 0):
    return jobs.InputObject(key, etag, T0 + timedelta(minutes=minutes))


def report(status: str = "succeeded", etag: str = "e1", **fields):
    return {
        "status": status,
        "input_etag": etag,
        "rows": 10,
        "seconds": 1.5,
        "model_version": "3",
        "finished_at": "2026-11-25T12:05:00.000Z",
        "message": None,
        **fields,
    }


def states(rows) -> dict[str, str]:
    return {row.key: row.state for row in rows}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("1h", timedelta(hours=1)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("1.5h", timedelta(minutes=90)),
    ],
)
def test_parse_since(text, expected):
    assert jobs.parse_since(text) == expected


@pytest.mark.parametrize("text", ["", "h", "10", "1y", "-1h"])
def test_parse_since_rejects_other_text(text):
    with pytest.raises(argparse.ArgumentTypeError):
        jobs.parse_since(text)


def test_report_for_the_current_etag_gives_the_state():
    inputs = [obj("ok.csv"), obj("bad.csv")]
    times = {"ok.csv": T0 + timedelta(minutes=1), "bad.csv": T0 + timedelta(minutes=1)}
    reports = {
        "ok.csv": report(),
        "bad.csv": report("failed", message="missing columns: x", rows=None),
    }
    rows = jobs.derive_rows(inputs, times, reports, NO_QUEUE)
    assert states(rows) == {"ok.csv": "succeeded", "bad.csv": "failed"}
    failed = next(row for row in rows if row.key == "bad.csv")
    assert failed.message == "missing columns: x"
    done = next(row for row in rows if row.key == "ok.csv")
    assert (done.rows, done.seconds, done.model_version, done.message) == (10, 1.5, "3", None)


def test_pending_files_split_into_in_work_queued_and_no_message_oldest_first():
    inputs = [obj(f"f{i}.csv", minutes=i) for i in range(5)]
    counts = jobs.QueueCounts(visible=2, in_flight=1, dead_letters=0)
    rows = jobs.derive_rows(inputs, {}, {}, counts)
    assert states(rows) == {
        "f0.csv": "in work",
        "f1.csv": "queued",
        "f2.csv": "queued",
        "f3.csv": "no message",
        "f4.csv": "no message",
    }
    assert [row.state for row in rows] == [
        "in work",
        "queued",
        "queued",
        "no message",
        "no message",
    ]


def test_a_report_older_than_the_upload_or_for_another_etag_means_pending():
    inputs = [obj("replaced.csv", "e2", minutes=10), obj("stale.csv", "e2")]
    times = {"replaced.csv": T0, "stale.csv": T0 + timedelta(minutes=1)}
    reports = {"replaced.csv": report(), "stale.csv": report(etag="e1")}
    counts = jobs.QueueCounts(visible=2, in_flight=0, dead_letters=0)
    rows = jobs.derive_rows(inputs, times, reports, counts)
    assert states(rows) == {"replaced.csv": "queued", "stale.csv": "queued"}


def test_finished_files_outside_the_window_are_not_shown_but_pending_ones_are():
    inputs = [obj("old-done.csv"), obj("old-waiting.csv", minutes=-9999)]
    times = {"old-done.csv": T0 + timedelta(minutes=1)}
    rows = jobs.derive_rows(inputs, times, {}, jobs.QueueCounts(1, 0, 0))
    assert states(rows) == {"old-waiting.csv": "queued"}


def test_report_without_input_object_is_shown_with_a_note():
    rows = jobs.derive_rows(
        [], {"gone.csv": T0}, {"gone.csv": report("failed", message="x")}, NO_QUEUE
    )
    [row] = rows
    assert row.state == "failed" and row.message == "input object no longer listed; x"


def test_table_lists_rows_and_the_queue_summary():
    rows = [
        jobs.JobRow(
            "a.csv", "succeeded", 10, 1.25, "3", "2026-11-25T12:05:00Z", model_name="churn"
        ),
        jobs.JobRow("b.csv", "failed", message="missing columns: " + "x" * 200),
    ]
    text = jobs.render_table(rows, jobs.QueueCounts(4, 2, 1))
    lines = text.splitlines()
    assert lines[0].split() == ["key", "state", "rows", "seconds", "model", "finished", "message"]
    assert lines[1].split()[:5] == ["a.csv", "succeeded", "10", "1.2", "churn:3"]
    message = lines[2][lines[2].index("missing") :]
    assert message.endswith("...") and len(message) == 80
    assert "1 failed, 1 succeeded" in text
    assert "queue: 4 waiting, 2 in flight; dead-letter queue: 1" in text


def test_wide_characters_keep_the_columns_aligned():
    rows = [
        jobs.JobRow("日本語/データ.csv", "succeeded", 10, 1.0, "1", "t", model_name="m"),
        jobs.JobRow("plain.csv", "failed", message="売上 " * 60),
    ]
    lines = jobs.render_table(rows, NO_QUEUE).splitlines()[:3]
    state_column = {
        jobs.display_width(line[: line.index(state)])
        for line, state in zip(lines, ["state", "succeeded", "failed"], strict=True)
    }
    assert len(state_column) == 1, lines
    cut = lines[2][lines[2].index("売") :]
    assert cut.endswith("...") and jobs.display_width(cut) <= jobs.MESSAGE_WIDTH


def test_the_message_column_gives_the_reason_without_the_uri():
    failed = report(
        "failed",
        input_bucket="in",
        input_key="d/a.csv",
        message="s3://in/d/a.csv: missing columns: age",
    )
    [row] = jobs.derive_rows([obj("d/a.csv")], {"d/a.csv": T0}, {"d/a.csv": failed}, NO_QUEUE)
    assert row.message == "missing columns: age"
    unreadable = dict(failed, message="s3://in/d/a.csv could not be read as csv (x)")
    [row] = jobs.derive_rows([obj("d/a.csv")], {"d/a.csv": T0}, {"d/a.csv": unreadable}, NO_QUEUE)
    assert row.message == "could not be read as csv (x)"


def test_a_file_with_no_message_says_what_to_do():
    [row] = jobs.derive_rows([obj("lost.csv")], {}, {}, NO_QUEUE)
    assert row.state == "no message" and "--requeue-missing" in row.message


TEMPLATE = {
    "Parameters": {
        "OutputPrefix": {"Type": "String", "Default": "preds"},
        "TriggerSuffixes": {"Type": "String", "Default": ".parquet,.csv,.jsonl"},
    },
    "Resources": {
        "Input": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "jobs-input"}},
        "Output": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "jobs-output"}},
        "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "jobs"}},
        "Dead": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": "jobs-dlq"}},
    },
    "Outputs": {
        "InputBucketName": {"Value": {"Ref": "Input"}},
        "OutputBucketName": {"Value": {"Ref": "Output"}},
        "JobQueueUrl": {"Value": {"Ref": "Queue"}},
        "DeadLetterQueueUrl": {"Value": {"Ref": "Dead"}},
    },
}


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("cloudformation").create_stack(
            StackName="model-endpoint-local", TemplateBody=json.dumps(TEMPLATE)
        )
        yield boto3.client("s3"), boto3.client("sqs")


def test_main_reads_the_stack_and_never_receives(aws, capsys, monkeypatch):
    s3, sqs = aws
    etag = s3.put_object(Bucket="jobs-input", Key="a/done.csv", Body=b"x")["ETag"].strip('"')
    s3.put_object(Bucket="jobs-input", Key="a/waiting.parquet", Body=b"y")
    s3.put_object(Bucket="jobs-input", Key="a/notes.txt", Body=b"z")
    document = {
        "status": "succeeded",
        "input_key": "a/done.csv",
        "input_etag": etag,
        "rows": 7,
        "seconds": 0.5,
        "model_version": "1",
        "finished_at": "now",
        "message": None,
    }
    s3.put_object(
        Bucket="jobs-output", Key="preds/_reports/a/done.csv.json", Body=json.dumps(document)
    )
    queue = sqs.get_queue_url(QueueName="jobs")["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody="{}")
    monkeypatch.setattr(
        type(sqs), "receive_message", lambda *a, **k: pytest.fail("jobs.py must not receive")
    )

    assert jobs.main(["--json", "--since", "1h"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["queue"] == {"visible": 1, "in_flight": 0, "dead_letters": 0}
    files = {row["key"]: row for row in output["files"]}
    assert set(files) == {"a/done.csv", "a/waiting.parquet", "a/notes.txt"}
    assert files["a/done.csv"]["state"] == "succeeded" and files["a/done.csv"]["rows"] == 7
    assert {files[k]["state"] for k in ("a/waiting.parquet", "a/notes.txt")} == {
        "queued",
        "no message",
    }

    assert jobs.main(["--stack", "model-endpoint-local"]) == 0
    table = capsys.readouterr().out
    assert "a/done.csv" in table and "succeeded" in table and "1 queued" in table


def test_requeue_missing_is_a_dry_run_until_applied(aws, capsys):
    s3, sqs = aws
    for key in ("r/one.csv", "r/two.jsonl", "r/three.parquet"):
        s3.put_object(Bucket="jobs-input", Key=key, Body=key.encode())
    etag = s3.head_object(Bucket="jobs-input", Key="r/one.csv")["ETag"].strip('"')
    document = json.dumps({"status": "succeeded", "input_etag": etag})
    s3.put_object(Bucket="jobs-output", Key="preds/_reports/r/one.csv.json", Body=document)
    queue = sqs.get_queue_url(QueueName="jobs")["QueueUrl"]

    def waiting() -> int:
        attributes = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    assert jobs.main(["--requeue-missing"]) == 0
    printed = capsys.readouterr().out
    assert "would queue s3://jobs-input/r/two.jsonl" in printed
    assert "would queue s3://jobs-input/r/three.parquet" in printed
    assert "r/one.csv" not in printed and waiting() == 0

    assert jobs.main(["--requeue-missing", "--apply", "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    assert "stopped at --limit 1" in printed and "queued 1 file(s)" in printed
    assert waiting() == 1
    body = json.loads(sqs.receive_message(QueueUrl=queue)["Messages"][0]["Body"])
    assert body["bucket"] == "jobs-input" and body["key"] in {"r/two.jsonl", "r/three.parquet"}
