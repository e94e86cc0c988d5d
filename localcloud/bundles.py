"""``up --model DIR_OR_S3_URI``: copy a model bundle into the stack's model bucket.

The bundle (a folder, or an S3 prefix in the local cloud) goes to
``models/<name>/<version>/`` of the model bucket, the name and version read from its
``manifest.json``, which is written last so no reader ever sees half a bundle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class BundleError(ValueError):
    """The bundle cannot be read; the message says what to fix."""


def _split(uri: str) -> tuple[str, str]:
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    return bucket, prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _manifest(s3: Any, source: str) -> dict[str, Any]:
    try:
        if source.startswith("s3://"):
            bucket, prefix = _split(source)
            text = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
        else:
            text = (Path(source) / MANIFEST).read_bytes()
        document = json.loads(text)
    except Exception as exc:
        raise BundleError(f"--model {source}: cannot read its {MANIFEST} ({exc})") from exc
    if not isinstance(document, dict) or not document.get("name") or not document.get("version"):
        raise BundleError(f"--model {source}: {MANIFEST} needs a name and a version")
    return document


def bundle_prefix(s3: Any, source: str) -> str:
    """``models/<name>/<version>/`` for the bundle at ``source``."""
    manifest = _manifest(s3, source)
    return f"models/{manifest['name']}/{manifest['version']}/"


def _files(s3: Any, source: str) -> list[tuple[str, Any]]:
    """(relative name, reader) of every file of the bundle, manifest last."""
    found: list[tuple[str, Any]] = []
    if source.startswith("s3://"):
        bucket, prefix = _split(source)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                found.append(
                    (
                        key[len(prefix) :],
                        lambda k=key: s3.get_object(Bucket=bucket, Key=k)["Body"].read(),
                    )
                )
    else:
        root = Path(source)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            found.append((path.relative_to(root).as_posix(), path.read_bytes))
    return sorted(found, key=lambda item: item[0] == MANIFEST)


def upload_bundle(s3: Any, source: str, target_uri: str) -> int:
    """Copy the bundle to ``target_uri``; the number of files."""
    bucket, prefix = _split(target_uri)
    files = _files(s3, source)
    for name, read in files:
        s3.put_object(Bucket=bucket, Key=prefix + name, Body=read())
    return len(files)
