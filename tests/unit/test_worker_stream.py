"""The worker's streamed S3 input and output, against moto's in-memory S3."""

from __future__ import annotations

import gzip
import io
import os
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pandas as pd
import pytest
from moto import mock_aws

from service import batch, s3_stream, s3_upload
from service.errors import MalformedBody
from service.files import FileFormat, iter_batches
from service.s3_stream import S3Input
from service.s3_upload import PART_BYTES
from service.worker_s3 import WorkerS3
from tests.unit.test_worker_loop import BrokenBody

BUCKET = "stream-bucket"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


def put(s3: Any, key: str, data: bytes) -> str:
    return s3.put_object(Bucket=BUCKET, Key=key, Body=data)["ETag"].strip('"')


def frame(rows: int) -> pd.DataFrame:
    generator = np.random.default_rng(7)
    return pd.DataFrame({"id": np.arange(rows), "x": generator.random(rows)})


def recorded_gets(s3: Any, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    real_get = s3.get_object

    def get(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs)
        return real_get(**kwargs)

    monkeypatch.setattr(s3, "get_object", get)
    return calls


def parquet_bytes(rows: pd.DataFrame, row_group_size: int) -> bytes:
    buffer = io.BytesIO()
    rows.to_parquet(buffer, index=False, row_group_size=row_group_size)
    return buffer.getvalue()


def read_parquet(s3: Any, key: str, etag: str, announced: int | None) -> pd.DataFrame:
    stopping = threading.Event()
    with S3Input(
        s3, BUCKET, key, etag, stopping, sequential=False, announced_size=announced
    ) as source:
        frames = list(iter_batches(source, FileFormat("parquet"), 4_000, ("x",)))
    return pd.concat(frames).reset_index(drop=True)


def break_get(s3: Any, monkeypatch: pytest.MonkeyPatch, calls: list, number: int) -> None:
    """The `number`th GET's body breaks after 100,000 bytes."""
    recorded = s3.get_object

    def breaking(**kwargs: Any) -> dict[str, Any]:
        response = recorded(**kwargs)
        if len(calls) == number:
            response["Body"] = BrokenBody(response["Body"], after=100_000)
        return response

    monkeypatch.setattr(s3, "get_object", breaking)


def test_parquet_is_read_by_row_group_with_conditional_ranged_gets(s3, monkeypatch):
    rows = frame(50_000)
    etag = put(s3, "in.parquet", parquet_bytes(rows, 10_000))
    calls = recorded_gets(s3, monkeypatch)
    pd.testing.assert_frame_equal(read_parquet(s3, "in.parquet", etag, None), rows)
    assert all(call["IfMatch"] == f'"{etag}"' for call in calls)
    # the footer (with the size), then one stream from the first row group (after the
    # 4-byte magic) that each next row group continues
    assert [call["Range"] for call in calls] == ["bytes=-65536", "bytes=4-"]


def test_a_broken_row_group_stream_resumes_where_it_broke(s3, monkeypatch):
    rows = frame(50_000)
    etag = put(s3, "in.parquet", parquet_bytes(rows, 10_000))
    calls = recorded_gets(s3, monkeypatch)
    break_get(s3, monkeypatch, calls, 2)
    pd.testing.assert_frame_equal(read_parquet(s3, "in.parquet", etag, None), rows)
    assert [call["Range"] for call in calls] == ["bytes=-65536", "bytes=4-", "bytes=100004-"]
    assert {call["IfMatch"] for call in calls} == {f'"{etag}"'}


def test_a_parquet_input_announced_small_comes_in_one_conditional_get(s3, monkeypatch):
    rows = frame(50_000)
    data = parquet_bytes(rows, 10_000)
    etag = put(s3, "in.parquet", data)
    calls = recorded_gets(s3, monkeypatch)
    pd.testing.assert_frame_equal(read_parquet(s3, "in.parquet", etag, len(data)), rows)
    assert calls == [{"Bucket": BUCKET, "Key": "in.parquet", "IfMatch": f'"{etag}"'}]


def test_a_broken_whole_get_resumes_where_it_broke(s3, monkeypatch):
    rows = frame(50_000)
    data = parquet_bytes(rows, 50_000)
    etag = put(s3, "in.parquet", data)
    calls = recorded_gets(s3, monkeypatch)
    break_get(s3, monkeypatch, calls, 1)
    pd.testing.assert_frame_equal(read_parquet(s3, "in.parquet", etag, len(data)), rows)
    assert [call.get("Range") for call in calls] == [None, f"bytes=100000-{len(data) - 1}"]
    assert {call["IfMatch"] for call in calls} == {f'"{etag}"'}


@pytest.mark.parametrize(
    ("announced", "ranges"),
    [
        (1_000, [None, "bytes=-65536", "bytes=4-"]),  # bigger than announced: dropped
        ("size", ["bytes=-65536", "bytes=4-"]),  # announced above WHOLE_BYTES
    ],
)
def test_an_input_above_the_limit_is_read_by_row_group(s3, monkeypatch, announced, ranges):
    rows = frame(50_000)
    data = parquet_bytes(rows, 10_000)
    etag = put(s3, "in.parquet", data)
    monkeypatch.setattr(s3_stream, "WHOLE_BYTES", len(data) - 1)
    calls = recorded_gets(s3, monkeypatch)
    size = len(data) if announced == "size" else announced
    pd.testing.assert_frame_equal(read_parquet(s3, "in.parquet", etag, size), rows)
    assert [call.get("Range") for call in calls] == ranges


@pytest.mark.parametrize("announced", [None, 0])
def test_an_empty_parquet_input_is_named_unreadable_either_way(s3, announced):
    etag = put(s3, "empty.parquet", b"")
    with pytest.raises(MalformedBody, match="not a readable parquet file"):
        read_parquet(s3, "empty.parquet", etag, announced)


@pytest.mark.parametrize("announced", [None, 10])
def test_a_replaced_parquet_input_fails_its_condition_either_way(s3, announced):
    etag = put(s3, "in.parquet", parquet_bytes(frame(10), 10))
    put(s3, "in.parquet", parquet_bytes(frame(20), 10))
    with pytest.raises(batch.InputChanged):
        read_parquet(s3, "in.parquet", etag, announced)


@pytest.mark.parametrize("name", ["in.csv", "in.csv.gz", "in.jsonl", "in.jsonl.gz"])
def test_text_formats_decode_as_one_stream(s3, monkeypatch, name):
    rows = frame(30_000)
    text = (
        rows.to_csv(index=False) if ".csv" in name else rows.to_json(orient="records", lines=True)
    )
    data = gzip.compress(text.encode()) if name.endswith(".gz") else text.encode()
    etag = put(s3, name, data)
    calls = recorded_gets(s3, monkeypatch)
    fmt = FileFormat(name.split(".")[1], gzip=name.endswith(".gz"))
    with S3Input(s3, BUCKET, name, etag, threading.Event(), sequential=True) as source:
        read = pd.concat(list(iter_batches(source, fmt, 5_000, ("x",))))
    assert read["id"].tolist() == rows["id"].tolist()
    assert np.allclose(read["x"], rows["x"])
    assert [call.get("Range") for call in calls] == [None], "one GET, its head kept for peeks"


def test_a_small_truncated_parquet_file_is_named_unreadable(s3):
    buffer = io.BytesIO()
    frame(20).to_parquet(buffer, index=False)
    whole = buffer.getvalue()
    etag = put(s3, "cut.parquet", whole[: len(whole) // 2])
    with (
        S3Input(s3, BUCKET, "cut.parquet", etag, threading.Event(), sequential=False) as source,
        pytest.raises(MalformedBody, match="not a readable parquet file"),
    ):
        list(iter_batches(source, FileFormat("parquet"), 5))


def test_an_input_replaced_while_read_fails_its_condition(s3):
    etag = put(s3, "in.csv", frame(10).to_csv(index=False).encode())
    put(s3, "in.csv", b"id,x\n1,2\n")
    source = S3Input(s3, BUCKET, "in.csv", etag, threading.Event(), sequential=True)
    with pytest.raises(batch.InputChanged):
        source.read(4)


def test_a_stop_ends_the_read(s3):
    etag = put(s3, "in.csv", frame(10).to_csv(index=False).encode())
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(batch.Aborted):
        S3Input(s3, BUCKET, "in.csv", etag, stopping, sequential=True).read(4)


def uploads(s3: Any) -> list[dict[str, Any]]:
    return s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])


def exists(s3: Any, key: str) -> bool:
    return s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("KeyCount", 0) > 0


def side(s3: Any) -> WorkerS3:
    return WorkerS3(s3, BUCKET, "predictions", threading.Event())


def write_parts(output: Any, total: int) -> bytes:
    data = os.urandom(total)
    for start in range(0, total, 3 * 1024 * 1024):
        output.write(data[start : start + 3 * 1024 * 1024])
    return data


def test_a_large_output_goes_up_in_parts_and_appears_only_when_complete(s3):
    files = side(s3)
    output = files.open_output("out.bin", {"Metadata": {"input-etag": "e"}}, None)
    data = write_parts(output, 2 * PART_BYTES + 1000)
    assert len(uploads(s3)) == 1 and not exists(s3, "out.bin"), "parts, nothing visible"
    assert files.commit(output, {batch.META_ROWS: "9"})
    output.abort()
    assert s3.get_object(Bucket=BUCKET, Key="out.bin")["Body"].read() == data
    assert s3.head_object(Bucket=BUCKET, Key="out.bin")["Metadata"] == {"input-etag": "e"}
    assert uploads(s3) == []


def test_parts_grow_so_that_s3s_10000_parts_never_run_out(s3, monkeypatch):
    mib = 1024 * 1024
    monkeypatch.setattr(s3_upload, "PART_BYTES", 5 * mib)  # S3's smallest part
    monkeypatch.setattr(s3_upload, "PART_GROWTH", 2)  # double every 2 parts, not 1,000
    sizes: list[int] = []
    real_upload_part = s3.upload_part

    def recorded(**kwargs: Any) -> dict[str, Any]:
        sizes.append(len(kwargs["Body"]))
        return real_upload_part(**kwargs)

    monkeypatch.setattr(s3, "upload_part", recorded)
    files = side(s3)
    output = files.open_output("grown.bin", {}, None)
    data = write_parts(output, 25 * mib + 1000)
    assert files.commit(output, {})
    assert s3.get_object(Bucket=BUCKET, Key="grown.bin")["Body"].read() == data
    # 3 MiB writes: a part ships once the buffer holds 5 MiB, from the third part 10 MiB;
    # the rest is the last part
    assert [round(size / mib) for size in sizes] == [6, 6, 12, 1]


def test_metadata_declared_before_the_first_part_is_on_a_large_output(s3):
    files = side(s3)
    output = files.open_output("declared.bin", {"Metadata": {"input-etag": "e"}}, None)
    output.declare({batch.META_ROWS: "7"})
    write_parts(output, PART_BYTES + 10)
    assert files.commit(output, {batch.META_ROWS: "7"})
    head = s3.head_object(Bucket=BUCKET, Key="declared.bin")
    assert head["Metadata"] == {"input-etag": "e", "rows": "7"}


def test_a_small_output_is_one_put_with_its_row_count(s3):
    files = side(s3)
    output = files.open_output("small.bin", {"Metadata": {"input-etag": "e"}}, None)
    output.write(b"abc")
    assert files.commit(output, {batch.META_ROWS: "3"})
    head = s3.head_object(Bucket=BUCKET, Key="small.bin")
    assert head["Metadata"] == {"input-etag": "e", "rows": "3"}


def test_a_second_writer_loses_and_leaves_no_parts(s3):
    files = side(s3)
    first = files.open_output("raced.bin", {}, None)
    second = files.open_output("raced.bin", {}, None)
    write_parts(first, PART_BYTES + 10)
    write_parts(second, PART_BYTES + 20)
    assert files.commit(first, {})
    assert not files.commit(second, {})
    assert s3.head_object(Bucket=BUCKET, Key="raced.bin")["ContentLength"] == PART_BYTES + 10
    assert uploads(s3) == []


def test_an_aborted_output_leaves_nothing(s3):
    files = side(s3)
    output = files.open_output("aborted.bin", {}, None)
    write_parts(output, PART_BYTES + 10)
    output.abort()
    assert uploads(s3) == [] and not exists(s3, "aborted.bin")


def test_a_replacing_output_is_written_only_over_the_object_it_saw(s3):
    put(s3, "old.bin", b"old")
    files = side(s3)
    seen = files.output_head("old.bin")
    output = files.open_output("old.bin", {}, seen)
    data = write_parts(output, PART_BYTES + 10)
    assert uploads(s3) == [], "spooled, not uploaded in parts"
    put(s3, "old.bin", b"changed by another writer")
    assert not files.commit(output, {})
    assert (
        s3.get_object(Bucket=BUCKET, Key="old.bin")["Body"].read() == b"changed by another writer"
    )

    output = files.open_output("old.bin", {}, files.output_head("old.bin"))
    data = write_parts(output, PART_BYTES + 10)
    assert files.commit(output, {})
    assert s3.get_object(Bucket=BUCKET, Key="old.bin")["Body"].read() == data
