"""A window on an object holds exactly the bytes of the same slice of the object, reads no
more of the object's buffer than that, and keeps the buffer open until it has been read."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from moto.s3.models import FakeKey

from localcloud import s3_ranges

BLOCK = s3_ranges.BLOCK_BYTES
BODY = bytes(range(251)) * (2 * BLOCK // 251 + 3)  # past two blocks, spilled to disk
SLICES = [
    (0, 0),
    (0, 1),
    (5, None),
    (-100, None),
    (None, -100),
    (BLOCK - 1, BLOCK + 1),
    (BLOCK, 2 * BLOCK),
    (2 * BLOCK, None),
    (0, len(BODY) + 10),
    (10, 5),
]


class CountingBuffer:
    """The object's buffer, counting the bytes read from it."""

    def __init__(self, buffer) -> None:
        self.buffer, self.read_bytes = buffer, 0
        self.seek = buffer.seek

    @property
    def closed(self) -> bool:
        return self.buffer.closed

    def read(self, size: int = -1) -> bytes:
        data = self.buffer.read(size)
        self.read_bytes += len(data)
        return data


@pytest.fixture
def key() -> Iterator[FakeKey]:
    s3_ranges.patch()
    key = FakeKey("big.parquet", BODY, account_id="123456789012", region_name="us-east-1")
    try:
        yield key
    finally:
        s3_ranges.unpatch()
        key.dispose()


@pytest.mark.parametrize("start,stop", SLICES)
def test_a_window_holds_the_bytes_of_the_same_slice_and_reads_no_more(key, start, stop) -> None:
    counting = key._value_buffer = CountingBuffer(key._value_buffer)
    window = s3_ranges.ObjectWindow(key, 0, key.size)[start:stop]
    want = BODY[start:stop]
    got = b"".join(window)
    same = got == want  # not in the assert: pytest's diff of 16 MiB takes minutes
    assert (len(window), len(got), same) == (len(want), len(want), True)
    assert counting.read_bytes == len(want)


def test_an_object_disposed_while_its_window_is_read_is_read_whole_then_closed(key) -> None:
    blocks = iter(s3_ranges.ObjectWindow(key, 0, key.size))
    first = next(blocks)
    key.dispose()  # what moto does to an object overwritten or deleted
    assert not key._value_buffer.closed
    whole = first + b"".join(blocks) == BODY
    assert whole
    assert key._value_buffer.closed and key.disposed
