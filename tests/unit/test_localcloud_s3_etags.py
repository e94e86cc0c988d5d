"""An object's ETag stays the MD5 of its bytes while another thread reads them (the state
keeper saving the object as the upload's event is built)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import pytest
from moto.s3.models import FakeKey

from localcloud import s3_etags

BODY = bytes(range(256)) * (48 * 1024 * 1024 // 256)  # three of moto's 16 MiB ETag blocks
TRIES = 12


@pytest.fixture
def patched() -> Iterator[None]:
    s3_etags.patch()
    try:
        yield
    finally:
        s3_etags.unpatch()


def etag_while_read(body: bytes) -> str:
    """The ETag moto computes for a new object while another thread reads its bytes."""
    key = FakeKey("big.csv", body, account_id="123456789012", region_name="us-east-1")
    reading = threading.Event()
    done = threading.Event()

    def read_until_done() -> None:
        reading.set()
        while not done.is_set():
            key.value  # noqa: B018 (the read is the point)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        reading.wait(5)
        return key.etag.strip('"')
    finally:
        done.set()
        reader.join(30)
        key.dispose()


def test_an_etag_computed_while_the_object_is_read_is_the_md5_of_its_bytes(patched) -> None:
    want = hashlib.md5(BODY).hexdigest()
    assert [etag_while_read(BODY) for _ in range(TRIES)] == [want] * TRIES
