"""S3 event notifications with the object fields AWS sends and moto leaves out.

moto's records carry the key, size and ETag of the object, but neither ``versionId`` (AWS
sends it for a bucket with versioning on) nor ``sequencer`` (always sent, to order the events
of one key). Without ``versionId`` every local job message had ``version_id: null``, so
reports and output metadata recorded no input version where AWS records one.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

from moto.s3 import notifications

_original_event = notifications._get_s3_event
_sequence = itertools.count()
_lock = threading.Lock()


def _event_with_version(
    event_name: str, bucket: Any, key: Any, notification_id: str
) -> dict[str, list[dict[str, Any]]]:
    event = _original_event(event_name, bucket, key, notification_id)
    with _lock:
        sequencer = f"{time.time_ns():016X}{next(_sequence) % 256:02X}"
    for record in event["Records"]:
        obj = record["s3"]["object"]
        version = getattr(key, "version_id", None)
        if bucket.is_versioned and version and version != "null":
            obj["versionId"] = version
        obj["sequencer"] = sequencer
    return event


def patch() -> None:
    """Make moto's S3 notifications carry ``versionId`` and ``sequencer``."""
    notifications._get_s3_event = _event_with_version


def unpatch() -> None:
    notifications._get_s3_event = _original_event
