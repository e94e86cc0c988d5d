"""An object's ETag computed under the object's lock.

moto computes an object's ETag on first use by reading the object's one shared buffer from
the start, in 16 MiB blocks, without the lock its ``value`` takes for the same buffer. When
another thread reads the object meanwhile (the state keeper saving it, a GET or HEAD), the
two interleave their seeks and reads, and the ETag is the MD5 of other bytes: the event for
an 84 MB upload carried one ETag and the object another, so its worker skipped it as
changed and no output was ever written.
"""

from __future__ import annotations

from typing import Any

from moto.s3.models import FakeKey

_original_etag = FakeKey.etag


def _etag_under_lock(key: Any) -> str:
    with key.lock:
        return _original_etag.fget(key)


def patch() -> None:
    """Compute every object's ETag under the lock moto's reads of its bytes take."""
    FakeKey.etag = property(_etag_under_lock)


def unpatch() -> None:
    FakeKey.etag = _original_etag
