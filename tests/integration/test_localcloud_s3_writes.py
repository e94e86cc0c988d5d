"""Conditional writes in the local cloud are decided as S3 decides them: of writers that
race to create one key (PutObject or CompleteMultipartUpload with If-None-Match: *), one
wins and every other gets 412, and the key has one version."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from localcloud.server import MotoServer

BUCKET = "conditional-writes"
WRITERS = 6
ROUNDS = 4
BODY = 6 * 1024 * 1024  # over moto's 5 MiB in-memory buffer, as a batch output is


def race(writers: list[Callable[[], Any]]) -> list[str]:
    """Run the writers at once; each one's outcome: "written" or its error code."""
    start = threading.Barrier(len(writers))

    def run(write: Callable[[], Any]) -> str:
        start.wait()
        try:
            write()
        except ClientError as error:
            return error.response["Error"]["Code"]
        return "written"

    with ThreadPoolExecutor(len(writers)) as pool:
        return list(pool.map(run, writers))


def versions(s3: Any, key: str) -> int:
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix=key).get("Versions", [])
    return sum(1 for version in listed if version["Key"] == key)


def versioned_bucket(aws: Callable[[str], Any]) -> Any:
    s3 = aws("s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def test_of_puts_racing_to_create_a_key_one_wins(moto: MotoServer, aws) -> None:
    s3 = versioned_bucket(aws)
    for number in range(ROUNDS):
        key = f"put/{number}"

        def writer(index: int, key: str = key) -> Callable[[], Any]:
            client, body = aws("s3"), bytes([index]) * BODY
            return lambda: client.put_object(Bucket=BUCKET, Key=key, Body=body, IfNoneMatch="*")

        outcomes = race([writer(index) for index in range(WRITERS)])
        assert sorted(outcomes) == ["PreconditionFailed"] * (WRITERS - 1) + ["written"], key
        assert versions(s3, key) == 1, key


def test_of_completions_racing_to_create_a_key_one_wins(moto: MotoServer, aws) -> None:
    s3 = versioned_bucket(aws)
    for number in range(ROUNDS):
        key = f"multipart/{number}"

        def writer(index: int, key: str = key) -> Callable[[], Any]:
            client = aws("s3")
            upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
            part = client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=bytes([index]) * BODY
            )
            parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
            return lambda: client.complete_multipart_upload(
                Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload=parts, IfNoneMatch="*"
            )

        outcomes = race([writer(index) for index in range(WRITERS)])
        assert sorted(outcomes) == ["PreconditionFailed"] * (WRITERS - 1) + ["written"], key
        assert versions(s3, key) == 1, key
