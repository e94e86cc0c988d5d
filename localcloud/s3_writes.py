"""One write at a time per S3 key, so that a conditional write is decided as S3 decides it.

moto checks a PutObject's If-None-Match / If-Match, and a CompleteMultipartUpload's
If-None-Match, and then stores the object, without a lock between the two: two workers that
commit the same output at once both pass the check and both write (a reliability run saw an
output written twice). S3 decides the condition and the write as one step. While the local
cloud runs, each PutObject and each POST on a key (creating or completing a multipart
upload) holds that key's lock; writes to other keys go on in parallel.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from moto.s3.responses import S3Response

_original_put = S3Response.put_object
_original_post = S3Response._key_response_post
_guard = threading.Lock()
_locks: dict[tuple[str, str], threading.Lock] = {}


def key_lock(bucket: str, key: str) -> threading.Lock:
    """The lock of one key (made on first use, kept: one per key written)."""
    with _guard:
        return _locks.setdefault((bucket, key), threading.Lock())


def _put(response: Any) -> Any:
    with key_lock(response.bucket_name, response.parse_key_name()):
        return _original_put(response)


def _post(response: Any, request: Any, body: bytes, bucket: str, query: Any, key: str) -> Any:
    with key_lock(bucket, key):
        return _original_post(response, request, body, bucket, query, key)


def patch() -> None:
    """Serialize the writes to each key."""
    S3Response.put_object = functools.wraps(_original_put)(_put)
    S3Response._key_response_post = functools.wraps(_original_post)(_post)


def unpatch() -> None:
    S3Response.put_object = _original_put
    S3Response._key_response_post = _original_post
