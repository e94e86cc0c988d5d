"""GETs that read only the bytes they send, as they are sent.

moto answers a GET by reading the whole object from its buffer into memory, and one with a
Range by slicing the range out of that copy: the 64 KiB footer of a 955 MB parquet object
cost a read of 955 MB, the stream of its row groups another, plus a copy of the range, and
a whole 95 MB object was read into the server's memory before its first byte went out. While
the local cloud runs, the body of a GET is a window on the object's buffer instead, read in
blocks under the object's lock while it is sent. An object overwritten or deleted meanwhile
is still sent whole, as S3 does: moto closes the old object's buffer then, so that waits
until its last window has been read.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from typing import Any

from moto.s3.models import FakeKey
from moto.s3.responses import S3Response

BLOCK_BYTES = 8 * 1024 * 1024

_original_value = FakeKey.value
_original_get_object = S3Response.get_object
_original_dispose = FakeKey.dispose
_windowed = contextvars.ContextVar("windowed_get", default=False)


class ObjectWindow:
    """Bytes ``start`` to ``stop`` of an object, read when iterated; sliced like bytes."""

    def __init__(self, key: Any, start: int, stop: int) -> None:
        self.key, self.start, self.stop = key, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index: slice) -> ObjectWindow:
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("an object window is sliced with a step of 1")
        return ObjectWindow(self.key, self.start + start, self.start + max(start, stop))

    def __iter__(self) -> Iterator[bytes]:
        key = self.key
        with key.lock:
            key._open_windows = getattr(key, "_open_windows", 0) + 1
        try:
            yield from self._blocks()
        finally:
            with key.lock:
                key._open_windows -= 1
                dispose = not key._open_windows and getattr(key, "_dispose_when_read", False)
            if dispose:
                _original_dispose(key)

    def _blocks(self) -> Iterator[bytes]:
        position = self.start
        while position < self.stop:
            with self.key.lock:
                buffer = self.key._value_buffer
                if buffer.closed:
                    return  # the cloud was reset: the client sees a short body
                buffer.seek(position)
                block = buffer.read(min(BLOCK_BYTES, self.stop - position))
            if not block:
                return
            position += len(block)
            yield block


def _value(key: Any) -> bytes | ObjectWindow:
    if _windowed.get():
        return ObjectWindow(key, 0, key.size)
    return _original_value.fget(key)


def _get_object(response: S3Response) -> Any:
    token = _windowed.set(True)
    try:
        return _original_get_object(response)
    finally:
        _windowed.reset(token)


def _dispose(key: Any, garbage: bool = False) -> None:
    lock = getattr(key, "lock", None)  # absent when moto's constructor failed
    if lock is not None:
        with lock:
            if getattr(key, "_open_windows", 0):
                key._dispose_when_read = True
                return
    _original_dispose(key, garbage)


def patch() -> None:
    """Answer every GET with a window on the object instead of a copy of it."""
    FakeKey.value = property(_value, FakeKey.value.fset)  # the setter may be mended too
    S3Response.get_object = _get_object
    FakeKey.dispose = _dispose


def unpatch() -> None:
    FakeKey.value = property(_original_value.fget, FakeKey.value.fset)
    S3Response.get_object = _original_get_object
    FakeKey.dispose = _original_dispose
