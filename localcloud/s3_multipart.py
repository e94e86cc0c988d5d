"""A multipart upload completed with one copy of its parts.

moto completes a multipart upload by reading every part, appending it to one buffer and,
for the full-object checksum it computes by default, to a second, then copying both once
more: about five times the object's size in memory, and 1.0-1.3 s for a 160 MB output on
this project's 2-core machine. While the local cloud runs, the parts are read once and
joined once. The checks (each part's ETag, the 5 MiB minimum, an empty list), the ETag and
the checksum are moto's.
"""

from __future__ import annotations

from collections.abc import Iterator
from hashlib import md5
from typing import Any

from moto.s3.exceptions import EntityTooSmall, InvalidPart, MalformedXML
from moto.s3.models import FakeMultipart, MultipartChecksumBuilder
from moto.settings import S3_UPLOAD_PART_MIN_SIZE

_original_complete = FakeMultipart.complete


def _complete(
    multipart: FakeMultipart, body: Iterator[tuple[int, str]]
) -> tuple[bytes, str, tuple[str, str, int] | None]:
    checksum = MultipartChecksumBuilder(
        multipart.metadata.get("x-amz-checksum-algorithm"),
        multipart.metadata.get("x-amz-checksum-type"),
    )
    values: list[bytes] = []
    md5s = bytearray()
    last: Any = None
    for number, etag in body:
        part = multipart.parts.get(number)
        if part is None or part.etag.replace('"', "") != etag.replace('"', ""):
            raise InvalidPart()
        if last is not None and last.contentsize < S3_UPLOAD_PART_MIN_SIZE:
            raise EntityTooSmall()
        md5s.extend(bytes.fromhex(part.etag.replace('"', "")))
        values.append(part.value)
        if checksum.checksum_type == "COMPOSITE":
            checksum.addPart(values[-1])
        else:
            checksum.part_count += 1
        last = part
    if not values:
        raise MalformedXML
    value = b"".join(values)
    if checksum.checksum_type != "COMPOSITE":
        checksum.complete_object = value  # what addPart would have appended, part by part
    etag = f"{md5(bytes(md5s), usedforsecurity=False).hexdigest()}-{len(values)}"
    return value, etag, checksum.build()


def patch() -> None:
    """Complete every multipart upload with one copy of its parts."""
    FakeMultipart.complete = _complete


def unpatch() -> None:
    FakeMultipart.complete = _original_complete
