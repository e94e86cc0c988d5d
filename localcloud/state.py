"""What the local cloud keeps across a restart: S3 objects and each stack's parameters.

moto keeps everything in memory and has no persistence, so the local cloud saves:

- every bucket (name, region, versioning) and the current version of every object in it
  (body, ETag, version id, last-modified time, content type and user metadata) under
  ``<state dir>/cloud/s3/``: ``index.json`` plus one file per object version in
  ``objects/``, written once (an object version never changes) and removed when the object
  is gone;
- the parameters each stack was last deployed or updated with, ``stacks/<name>.json``.

So the folder holds one copy of the current version of every object of every bucket (inputs,
predictions, reports, models, the Lambda package) plus an index of about 300 bytes per
object: it grows with what is uploaded and predicted, and ``up --fresh`` empties it. Older
versions of objects, queue messages, logs and ECS tasks are not kept: inputs without a
report are queued again at start instead.

Saving reads moto's models in this process (no API calls, so nothing is notified); it runs
every ``state_save_seconds`` and at stop. Restoring writes objects straight into moto's S3
model, without notifications, never over an object written since the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from moto.s3.models import FakeKey, s3_backends

INDEX = "index.json"


@dataclass(frozen=True)
class Summary:
    """What one save or restore touched."""

    buckets: int
    objects: int
    written: int
    bytes: int


def _blob_name(bucket: str, key: FakeKey) -> str:
    identity = "\0".join(
        [bucket, key.name, key.version_id, key.etag, key.last_modified.isoformat()]
    )
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(staging, path)


class StateStore:
    """The saved state of one local cloud (one state directory)."""

    def __init__(self, folder: Path, account_id: str, partition: str = "aws") -> None:
        self.folder = folder
        self._s3 = folder / "s3"
        self._stacks = folder / "stacks"
        self._account = account_id
        self._partition = partition

    def clear(self) -> None:
        """Forget everything (``up --fresh``)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    # ------------------------------------------------------------------ stacks

    def save_stack(self, name: str, parameters: dict[str, str]) -> None:
        document = json.dumps({"parameters": parameters}, indent=1, sort_keys=True)
        _write_atomic(self._stacks / f"{name}.json", document.encode("utf-8"))

    def stack_parameters(self, name: str) -> dict[str, str] | None:
        """The parameters the stack last had, None when it was never saved."""
        path = self._stacks / f"{name}.json"
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8"))["parameters"])

    # ------------------------------------------------------------------ S3

    def save_s3(self) -> Summary:
        """Write new object versions and the index; drop files of objects that are gone."""
        backend = s3_backends[self._account][self._partition]
        index: dict[str, Any] = {}
        keep: set[str] = set()
        written = size = 0
        for name, bucket in list(backend.buckets.items()):
            objects = []
            for key in list(bucket.keys.values()):
                if not isinstance(key, FakeKey):
                    continue
                blob = _blob_name(name, key)
                path = self._s3 / "objects" / blob[:2] / blob
                if not path.exists():
                    _write_atomic(path, key.value)
                    written += 1
                keep.add(blob)
                size += key.size
                objects.append(_describe(key, blob))
            index[name] = {
                "region": bucket.region_name,
                "versioning": bucket.versioning_status,
                "objects": objects,
            }
        _write_atomic(self._s3 / INDEX, json.dumps(index).encode("utf-8"))
        self._drop_unused(keep)
        count = sum(len(b["objects"]) for b in index.values())
        return Summary(len(index), count, written, size)

    def _drop_unused(self, keep: set[str]) -> None:
        for path in (self._s3 / "objects").glob("*/*"):
            if path.name not in keep and not path.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def restore_s3(self) -> Summary:
        """Recreate saved buckets and objects; objects written since the start win."""
        path = self._s3 / INDEX
        if not path.is_file():
            return Summary(0, 0, 0, 0)
        index = json.loads(path.read_text(encoding="utf-8"))
        backend = s3_backends[self._account][self._partition]
        restored = size = 0
        for name, saved in index.items():
            bucket = backend.buckets.get(name) or backend.create_bucket(name, saved["region"])
            if saved.get("versioning") and not bucket.versioning_status:
                bucket.versioning_status = saved["versioning"]
            for entry in saved["objects"]:
                if bucket.keys.get(entry["key"]) is not None:
                    continue
                blob = self._s3 / "objects" / entry["blob"][:2] / entry["blob"]
                if not blob.is_file():
                    continue
                _restore_object(backend, name, entry, blob.read_bytes())
                restored += 1
                size += int(entry["size"])
        return Summary(len(index), restored, restored, size)


def _describe(key: FakeKey, blob: str) -> dict[str, Any]:
    return {
        "key": key.name,
        "blob": blob,
        "etag": key.etag.strip('"'),
        "version_id": key.version_id,
        "last_modified": key.last_modified.isoformat(),
        "metadata": dict(key.metadata),
        "size": key.size,
    }


def _restore_object(backend: Any, bucket: str, entry: dict[str, Any], body: bytes) -> None:
    key = backend.put_object(
        bucket, entry["key"], body, etag=entry["etag"], disable_notification=True
    )
    if entry["version_id"] != "null":
        key._version_id = entry["version_id"]
    key.last_modified = datetime.fromisoformat(entry["last_modified"])
    key.set_metadata(dict(entry["metadata"]))
