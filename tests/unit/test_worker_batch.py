"""The batch worker's pure core: message parsing, output layout, idempotency, failure fate."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from service import batch
from service.batch import Action, JobMessage
from service.errors import InvalidData, MalformedBody, ModelError, UnsupportedMediaType

MESSAGE = JobMessage("in", "a/b.csv", "abc123", 10, None, "2026-11-25T12:00:00Z")
REPORT_FIELDS = [
    "status",
    "input_bucket",
    "input_key",
    "input_etag",
    "input_version_id",
    "rows",
    "seconds",
    "model_name",
    "model_version",
    "output_bucket",
    "output_key",
    "message",
    "error",
    "finished_at",
]


@pytest.mark.parametrize(
    "key",
    [
        "x.parquet",
        "a/b/c/d.parquet",
        "a/b.c.csv.gz",
        "UPPER/FILE.CSV.GZ",
        "ünïcödé/dätä €.parquet",
        "with space/and more.csv",
        "k=v/a+b=c.csv",
    ],
)
def test_output_key_keeps_the_whole_input_key_and_appends_the_format(key):
    out = batch.output_key("predictions", "example", "3", key, "parquet")
    assert out == f"predictions/model=example/version=3/{key}.parquet"


def test_inputs_with_the_same_stem_never_share_an_output():
    keys = ["d/rows.csv", "d/rows.CSV", "d/rows.csv.gz", "d/rows.jsonl", "d/rows.parquet", "d/rows"]
    outputs = {batch.output_key("p", "m", "1", key, "parquet") for key in keys}
    assert len(outputs) == len(keys)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_output_key_suffix_follows_output_format(fmt):
    assert batch.output_key("p", "m", "1", "a.csv.gz", fmt) == f"p/model=m/version=1/a.csv.gz.{fmt}"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", "model=m/version=1/a.parquet.csv"),
        ("/deep/er/", "deep/er/model=m/version=1/a.parquet.csv"),
    ],
)
def test_output_key_with_empty_or_slashed_prefix(prefix, expected):
    assert batch.output_key(prefix, "m", "1", "a.parquet", "csv") == expected


def test_report_key_keeps_the_whole_input_key_and_round_trips():
    for key in ("a/b.c.csv.gz", "ü/x y+z=1.parquet", "top.jsonl"):
        report = batch.report_key("predictions", key)
        assert report == f"predictions/_reports/{key}.json"
        assert batch.input_key_from_report_key("predictions", report) == key
    assert batch.input_key_from_report_key("predictions", "predictions/model=m/x.json") is None
    assert batch.report_key("", "k.csv") == "_reports/k.csv.json"


def test_parse_message_reads_every_field():
    body = {
        "bucket": "in",
        "key": "dir/ü file+1.csv",
        "etag": '"abc"',
        "size": 12,
        "version_id": "v1",
        "event_time": "2026-11-25T12:00:00Z",
        "extra": "ignored",
    }
    message = batch.parse_message(json.dumps(body).encode())
    assert message == JobMessage("in", "dir/ü file+1.csv", "abc", 12, "v1", "2026-11-25T12:00:00Z")


def test_parse_message_optional_fields_may_be_missing_or_empty():
    message = batch.parse_message('{"bucket": "in", "key": "k.csv", "etag": "", "version_id": ""}')
    assert message == JobMessage("in", "k.csv")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"key": "k.csv"}', "'bucket'"),
        ('{"bucket": "b", "key": ""}', "'key'"),
        ('{"bucket": "b", "key": 5}', "'key'"),
        ('{"bucket": "b", "key": "k", "size": -1}', "'size'"),
        ('{"bucket": "b", "key": "k", "size": true}', "'size'"),
        ('{"bucket": "b", "key": "k", "size": "12"}', "'size'"),
        ('{"bucket": "b", "key": "k", "etag": 5}', "'etag'"),
        ('{"Service": "Amazon S3", "Event": "s3:TestEvent"}', "test event"),
        ("", "not JSON"),
    ],
)
def test_parse_message_rejects_what_is_not_a_job(body, problem):
    with pytest.raises(batch.InvalidMessage, match=problem):
        batch.parse_message(body)


def test_with_etag_keeps_everything_else():
    message = JobMessage("b", "k", None, 3, "v", "t")
    assert message.with_etag("e") == JobMessage("b", "k", "e", 3, "v", "t")


def test_report_has_exactly_the_contract_fields():
    now = datetime(2026, 11, 25, 12, 0, 1, 234000, tzinfo=UTC)
    report = batch.make_report(
        MESSAGE,
        status=batch.SUCCEEDED,
        seconds=1.23456,
        model_name="example",
        model_version="1",
        output_bucket="out",
        output_key="p/model=example/version=1/a/b.parquet",
        rows=10,
        now=now,
    )
    document = json.loads(report.to_json())
    assert list(document) == REPORT_FIELDS
    assert document["status"] == "succeeded"
    assert document["input_etag"] == "abc123"
    assert document["seconds"] == 1.235
    assert document["rows"] == 10
    assert document["finished_at"] == "2026-11-25T12:00:01.234Z"
    assert document["message"] is None and document["error"] is None


def test_failed_report_carries_message_and_error_code():
    report = batch.make_report(
        MESSAGE,
        status=batch.FAILED,
        seconds=0.1,
        model_name="m",
        model_version="2",
        text="missing columns: x",
        error="invalid_data",
    )
    document = json.loads(report.to_json())
    assert document["status"] == "failed"
    assert document["output_key"] is None and document["rows"] is None
    assert (document["message"], document["error"]) == ("missing columns: x", "invalid_data")


def test_output_metadata_is_ascii_and_complete():
    metadata = batch.output_metadata(MESSAGE, "modèle", "1", 10)
    assert metadata == {
        "input-etag": "abc123",
        "input-version-id": "",
        "model-name": "mod%C3%A8le",
        "model-version": "1",
        "rows": "10",
    }


@pytest.mark.parametrize(
    ("metadata", "model_version", "done"),
    [
        (None, "1", False),
        ({}, "1", False),
        ({"input-etag": "abc123", "model-version": "1"}, "1", True),
        ({"input-etag": '"abc123"', "model-version": "1"}, "1", True),
        ({"input-etag": "other", "model-version": "1"}, "1", False),
        ({"input-etag": "abc123", "model-version": "2"}, "1", False),
        ({"input-etag": "abc123"}, "1", False),
    ],
)
def test_already_done_needs_same_input_etag_and_model_version(metadata, model_version, done):
    assert batch.already_done(metadata, MESSAGE, model_version) is done


def test_already_done_is_false_without_an_etag_to_compare():
    message = JobMessage("in", "a.csv")
    assert not batch.already_done({"input-etag": "", "model-version": "1"}, message, "1")


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


@pytest.mark.parametrize(
    "exc",
    [
        InvalidData("missing columns: a"),
        MalformedBody("not parquet"),
        UnsupportedMediaType("unknown file type"),
        pa.ArrowInvalid("bad footer"),
        gzip.BadGzipFile("not gzip"),
        EOFError("truncated"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
        pd.errors.ParserError("bad csv"),
        batch.InputGone("NoSuchKey"),
    ],
)
def test_input_problems_are_final_and_reported(exc):
    failure = batch.classify(exc, MESSAGE, "csv")
    assert (failure.status, failure.action, failure.write_report) == ("failed", Action.DELETE, True)
    assert "s3://in/a/b.csv" in failure.message


def test_input_error_message_is_the_person_facing_text():
    failure = batch.classify(InvalidData("missing columns: a, b"), MESSAGE, "csv")
    assert failure.error == "invalid_data"
    assert failure.message == "s3://in/a/b.csv: missing columns: a, b"


def test_changed_input_is_skipped_without_a_report():
    failure = batch.classify(batch.InputChanged("etag"), MESSAGE, "csv")
    assert (failure.status, failure.action, failure.write_report) == (
        "skipped",
        Action.DELETE,
        False,
    )


@pytest.mark.parametrize(
    "exc",
    [
        client_error("SlowDown", 503),
        client_error("InternalError", 500),
        client_error("Throttling", 400),
        client_error("RequestTimeout", 400),
        EndpointConnectionError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
    ],
)
def test_transient_errors_retry_soon_without_report(exc):
    failure = batch.classify(exc, MESSAGE, "csv")
    assert (failure.action, failure.write_report) == (Action.RETRY_SOON, False)


@pytest.mark.parametrize(
    "exc",
    [
        client_error("InvalidObjectState", 403),
        client_error("AccessDenied", 403),
        RuntimeError("boom"),
        ModelError("bundle broken"),
        MemoryError(),
    ],
)
def test_unknown_errors_keep_the_message_for_the_dead_letter_queue(exc):
    failure = batch.classify(exc, MESSAGE, "csv")
    assert (failure.status, failure.action, failure.error) == (
        "error",
        Action.KEEP,
        "internal_error",
    )
    assert failure.write_report
    assert "dead-letter queue" in failure.message


def test_aborted_releases_the_message():
    failure = batch.classify(batch.Aborted("stop"), MESSAGE, "csv")
    assert (failure.action, failure.write_report) == (Action.RELEASE, False)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("NoSuchKey", 404, batch.InputGone),
        ("404", 404, batch.InputGone),
        ("NoSuchBucket", 404, batch.InputGone),
        ("NoSuchVersion", 404, batch.InputGone),
        ("PreconditionFailed", 412, batch.InputChanged),
        ("412", 412, batch.InputChanged),
    ],
)
def test_input_client_errors_are_translated(code, status, kind):
    assert isinstance(batch.input_error(client_error(code, status)), kind)


def test_other_input_client_errors_pass_through():
    error = client_error("InvalidObjectState", 403)
    assert batch.input_error(error) is error


def test_retry_delay_backs_off_and_is_capped():
    assert [batch.retry_delay(n, 120) for n in (1, 2, 3, 4, 10)] == [5, 10, 20, 40, 120]
    assert batch.retry_delay(1, 2) == 2


@pytest.mark.parametrize(
    ("etag", "bare"), [('"abc"', "abc"), ("abc", "abc"), ("", None), (None, None)]
)
def test_etags_compare_bare_and_are_sent_quoted(etag, bare):
    assert batch.normalize_etag(etag) == bare
    if bare:
        assert batch.quoted_etag(etag) == '"abc"'
