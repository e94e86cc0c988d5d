"""GETs in the local cloud read only the bytes they send, and answer as moto's own copy
did: the same status, bytes and headers without a Range and for every form of it, and the
old bytes whole when the object is overwritten while they are sent."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest
from moto.s3.models import s3_backends

from localcloud import s3_ranges
from localcloud.server import MotoServer

BUCKET = "ranges"
BIG = bytes(range(251)) * (20 * 1024 * 1024 // 251)  # above moto's 5 MiB spill, 3 blocks
SMALL = b"0123456789" * 100
HEADERS = ("content-range", "content-length", "etag", "accept-ranges", "content-type")


def range_forms(size: int) -> list[str | None]:
    block = s3_ranges.BLOCK_BYTES
    return [
        None,
        "bytes=0-0",
        "bytes=0-99",
        "bytes=100-",
        "bytes=-100",
        f"bytes=-{size * 2}",
        "bytes=-0",
        "bytes=5-3",
        "bytes=0-10,20-30",
        "bytes=abc",
        "bytes=",
        f"bytes={size - 1}-",
        f"bytes={size}-",
        f"bytes=0-{size * 2}",
        f"bytes={block - 1}-{block + 1}",
        f"bytes={block}-{2 * block}",
    ]


class Objects:
    """Raw GETs of presigned URLs, so every answer (416 included) arrives as sent."""

    def __init__(self, moto: MotoServer, aws: Callable) -> None:
        self.s3 = aws("s3")
        self.connection = http.client.HTTPConnection(
            moto.settings.host, moto.settings.port, timeout=60
        )

    def request(self, key: str, byte_range: str | None) -> http.client.HTTPResponse:
        url = self.s3.generate_presigned_url("get_object", {"Bucket": BUCKET, "Key": key})
        parts = urlsplit(url)
        headers = {} if byte_range is None else {"Range": byte_range}
        self.connection.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        return self.connection.getresponse()


@pytest.fixture
def objects(moto: MotoServer, aws) -> Iterator[Objects]:
    s3 = aws("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="big.parquet", Body=BIG)
    s3.put_object(Bucket=BUCKET, Key="small.csv", Body=SMALL)
    s3.put_object(Bucket=BUCKET, Key="empty.csv", Body=b"")
    objects = Objects(moto, aws)
    try:
        yield objects
    finally:
        objects.connection.close()


def get(objects: Objects, key: str, byte_range: str | None) -> tuple:
    response = objects.request(key, byte_range)
    body = response.read()
    headers = {name: response.getheader(name) for name in HEADERS}
    return response.status, headers, body


@pytest.mark.parametrize(
    "key,size", [("big.parquet", len(BIG)), ("small.csv", len(SMALL)), ("empty.csv", 0)]
)
def test_every_range_is_answered_as_moto_answers_it(objects, key: str, size: int) -> None:
    windowed = [get(objects, key, form) for form in range_forms(size)]
    s3_ranges.unpatch()
    try:
        copied = [get(objects, key, form) for form in range_forms(size)]
    finally:
        s3_ranges.patch()
    for form, ours, moto_s in zip(range_forms(size), windowed, copied, strict=True):
        assert ours[:2] == moto_s[:2], form
        assert ours[2] == moto_s[2], f"{form}: {len(ours[2])} bytes, moto {len(moto_s[2])}"
    assert {status for status, _, _ in windowed} >= ({200, 206, 416} if size else {200, 416})


@pytest.mark.parametrize("byte_range,status,start", [("bytes=4-", 206, 4), (None, 200, 0)])
def test_an_object_overwritten_while_it_is_sent_is_sent_whole(
    objects, aws, byte_range: str | None, status: int, start: int
) -> None:
    response = objects.request("big.parquet", byte_range)
    head = response.read(1024 * 1024)
    aws("s3").put_object(Bucket=BUCKET, Key="big.parquet", Body=b"new")
    assert response.status == status
    assert head + response.read() == BIG[start:]
    assert get(objects, "big.parquet", None)[2] == b"new"


@pytest.mark.parametrize("byte_range", [None, "bytes=4-", "bytes=-100"])
def test_a_get_reads_the_object_a_block_at_a_time(objects, moto, byte_range) -> None:
    key = s3_backends[moto.settings.account_id]["aws"].buckets[BUCKET].keys["big.parquet"]
    buffer, reads = key._value_buffer, []

    def read(size: int = -1) -> bytes:
        data = type(buffer).read(buffer, size)
        reads.append(len(data))
        return data

    buffer.read = read
    status, _, body = get(objects, "big.parquet", byte_range)
    assert status in (200, 206)
    assert max(reads) <= s3_ranges.BLOCK_BYTES
    assert sum(reads) == len(body)
