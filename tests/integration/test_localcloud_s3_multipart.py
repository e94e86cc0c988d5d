"""A multipart upload completed in the local cloud ends as moto's own completion ends it:
the same object, ETag and checksum for each checksum setting and size, the same error for
each bad part list; its parts are copied a block at a time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from moto.s3.models import s3_backends

from localcloud import s3_multipart
from localcloud.server import MotoServer

BUCKET = "multipart"
PART = 5 * 1024 * 1024  # S3's smallest part but the last
CHECKSUMS: dict[str, dict[str, str]] = {
    "default": {},
    "crc32": {"ChecksumAlgorithm": "CRC32"},
    "crc32-full-object": {"ChecksumAlgorithm": "CRC32", "ChecksumType": "FULL_OBJECT"},
    "sha256": {"ChecksumAlgorithm": "SHA256"},
}
BODIES = (bytes(range(256)) * (PART // 256), b"middle" * (PART // 6 + 1), b"the last part is short")


def complete(
    s3: Any,
    key: str,
    create: dict[str, str],
    parts: Callable[[list], list],
    bodies: tuple[bytes, ...] = BODIES,
) -> Any:
    """Upload ``bodies`` as parts and complete with ``parts(uploaded)``; the object or the error."""
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key, **create)["UploadId"]
    uploaded = []
    for number, body in enumerate(bodies, start=1):
        extra = {"ChecksumAlgorithm": create["ChecksumAlgorithm"]} if create else {}
        answer = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=body, **extra
        )
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        part |= {name: value for name, value in answer.items() if name.startswith("Checksum")}
        uploaded.append(part)
    try:
        s3.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts(uploaded)}
        )
    except ClientError as error:
        return error.response["Error"]["Code"]
    got = s3.get_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    fields = {name: got.get(name) for name in ("ETag", "ContentLength")}
    fields |= {name: value for name, value in got.items() if name.startswith("Checksum")}
    return fields, got["Body"].read() == b"".join(bodies)


def every_case(s3: Any, side: str) -> dict[str, Any]:
    outcomes = {
        name: complete(s3, f"{side}/{name}", create, lambda parts: parts)
        for name, create in CHECKSUMS.items()
    }
    outcomes["wrong etag"] = complete(
        s3, f"{side}/wrong", {}, lambda parts: [parts[0] | {"ETag": '"0"'}, *parts[1:]]
    )
    outcomes["small part first"] = complete(
        s3, f"{side}/small", {}, lambda parts: parts, bodies=BODIES[::-1]
    )
    outcomes["no parts"] = complete(s3, f"{side}/none", {}, lambda parts: [])
    for name, create in CHECKSUMS.items():  # objects small enough to stay in memory
        outcomes[f"one short part, {name}"] = complete(
            s3, f"{side}/short-{name}", create, lambda parts: parts, bodies=(BODIES[-1],)
        )
    outcomes["one empty part"] = complete(
        s3, f"{side}/empty", {}, lambda parts: parts, bodies=(b"",)
    )
    return outcomes


def test_every_completion_ends_as_motos_own(moto: MotoServer, aws) -> None:
    s3 = aws("s3")
    s3.create_bucket(Bucket=BUCKET)
    ours = every_case(s3, "ours")
    s3_multipart.unpatch()
    try:
        motos = every_case(s3, "moto")
    finally:
        s3_multipart.patch()
    assert ours == motos
    assert all(ours[name][1] for name in CHECKSUMS), "each object is the parts joined"
    assert ours["wrong etag"] == "InvalidPart"
    assert ours["small part first"] == "EntityTooSmall"
    assert ours["no parts"] == "MalformedXML"


def test_parts_are_copied_a_block_at_a_time(moto: MotoServer, aws) -> None:
    s3 = aws("s3")
    s3.create_bucket(Bucket=BUCKET)
    reads: list[int] = []

    def count_reads(uploaded: list) -> list:
        bucket = s3_backends[moto.settings.account_id]["aws"].buckets[BUCKET]
        for multipart in bucket.multiparts.values():
            for part in multipart.parts.values():
                buffer = part._value_buffer

                def read(size: int = -1, buffer: Any = buffer) -> bytes:
                    data = type(buffer).read(buffer, size)
                    reads.append(len(data))
                    return data

                buffer.read = read
        return uploaded

    _, joined = complete(s3, "blocks", {}, count_reads)
    assert joined, "the object is the parts joined"
    assert sum(reads) == sum(map(len, BODIES))
    assert max(reads) <= s3_multipart.BLOCK_BYTES
