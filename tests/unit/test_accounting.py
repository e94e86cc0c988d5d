"""service.accounting against in-process moto: which uploads lack a report for their current
version, and queueing them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from service.accounting import queue_jobs, unreported_inputs
from service.batch_contract import MESSAGE_FIELDS, report_key

IN, OUT, PREFIX = "in-bucket", "out-bucket", "predictions"


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = boto3.client("s3")
        for bucket in (IN, OUT):
            s3.create_bucket(Bucket=bucket)
        yield s3, boto3.client("sqs")


def put_report(s3, key: str, etag: str | None) -> None:
    body = json.dumps({"status": "succeeded", "input_etag": etag}).encode()
    s3.put_object(Bucket=OUT, Key=report_key(PREFIX, key), Body=body)


def etag_of(s3, key: str) -> str:
    return s3.head_object(Bucket=IN, Key=key)["ETag"].strip('"')


def test_only_inputs_without_a_report_for_their_current_etag_are_listed(aws) -> None:
    s3, _ = aws
    for key in ("a/done.csv", "a/stale.csv", "a/never.csv", "a/notes.txt", "b/other.csv"):
        s3.put_object(Bucket=IN, Key=key, Body=key.encode())
    put_report(s3, "a/done.csv", etag_of(s3, "a/done.csv"))
    put_report(s3, "a/stale.csv", "an-older-version")
    put_report(s3, "a/notes.txt", etag_of(s3, "a/notes.txt"))

    found = list(unreported_inputs(s3, IN, OUT, PREFIX, input_prefix="a/"))

    assert [job["key"] for job in found] == ["a/never.csv", "a/stale.csv"]
    assert all(tuple(job) == MESSAGE_FIELDS for job in found)
    assert found[0]["etag"] == etag_of(s3, "a/never.csv") and found[0]["size"] == 11
    assert found[0]["bucket"] == IN


def test_since_and_limit_bound_the_search(aws) -> None:
    s3, _ = aws
    for index in range(5):
        s3.put_object(Bucket=IN, Key=f"k{index}.csv", Body=b"x")
    future = datetime.now(UTC) + timedelta(hours=1)
    assert list(unreported_inputs(s3, IN, OUT, PREFIX, since=future)) == []
    assert len(list(unreported_inputs(s3, IN, OUT, PREFIX, limit=3))) == 3


def test_queue_jobs_sends_every_job_in_batches_of_ten(aws) -> None:
    s3, sqs = aws
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    for index in range(23):
        s3.put_object(Bucket=IN, Key=f"k{index:02}.csv", Body=b"x")

    assert queue_jobs(sqs, url, unreported_inputs(s3, IN, OUT, PREFIX)) == 23
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "23"
