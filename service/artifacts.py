"""The model bundle: a manifest plus the files it lists, each checked by sha256.

A file's bytes are hashed before anything deserialises them, so a tampered or
half-uploaded file never reaches pickle. `ModelStore` keeps the bundle in use and
swaps in a new one, fully loaded, when the manifest at the same URI changes.
"""

import hashlib
import importlib.metadata
import io
import json
import logging
import pickle  # only ever applied to bytes whose sha256 the manifest vouches for
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import joblib

from service.errors import HashMismatch, ManifestError, ModelError
from service.schema import Field, parse_schema
from service.tasks import task_of

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REQUIRED_FILES = ("model", "mean", "columns")
PIPELINE_REQUIRED_FILES = ("model",)
DEFAULT_ID_COLUMN = "id"
DEFAULT_OUTPUT_COLUMN = "activation"


@dataclass(frozen=True, eq=False)
class Bundle:
    """A loaded model bundle: everything prepare + predict needs, read-only.

    Two kinds: the original four artifacts (`columns` in model order, `mean`,
    optional `scaler`), or one estimator/Pipeline with an input `schema` (then
    `columns` are the schema's numeric columns, the ones files are read as float64).
    `files` keeps every file the manifest lists, deserialised, by role, so a
    `ModelWrap` can use extra files without reading them again.
    """

    name: str
    version: str
    model: Any
    scaler: Any | None
    mean: Mapping[str, float]
    columns: tuple[str, ...]
    id_column: str
    output_column: str
    etag: str
    schema: tuple[Field, ...] = ()
    files: Mapping[str, Any] = field(default_factory=dict)
    manifest: Mapping[str, Any] = field(default_factory=dict)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The feature columns in the bundle's input order (how positional input is read)."""
        if self.schema:
            return tuple(f.name for f in self.schema)
        return self.columns

    @property
    def numeric_columns(self) -> tuple[str, ...]:
        """The input columns that hold numbers (files read them as float64, so a type
        guessed from a file's first block cannot clash with a later one)."""
        return self.columns


class BundleSource(Protocol):
    """Where a bundle's files live: a local folder or an S3 prefix."""

    uri: str

    def manifest_tag(self) -> str: ...

    def read(self, name: str) -> tuple[bytes, str]: ...


class FolderSource:
    def __init__(self, folder: str) -> None:
        self.uri = folder
        self._root = Path(folder)

    def manifest_tag(self) -> str:
        return self.read(MANIFEST)[1]

    def read(self, name: str) -> tuple[bytes, str]:
        path = self._root / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelError(
                f"{path} does not exist: the bundle at {self.uri} is incomplete"
            ) from None
        except OSError as exc:
            raise ModelError(f"cannot read {path}: {exc.strerror}") from None
        return data, hashlib.sha256(data).hexdigest()


class S3Source:
    def __init__(self, uri: str, client: Any = None) -> None:
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ModelError(f"MODEL_URI {uri!r} has no bucket: use s3://bucket/prefix/")
        self.uri = uri
        self.bucket = parsed.netloc
        self.prefix = parsed.path.lstrip("/")
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def manifest_tag(self) -> str:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.prefix + MANIFEST)["ETag"]
        except Exception as exc:
            raise ModelError(f"cannot find {self._url(MANIFEST)}: {_s3_reason(exc)}") from None

    def read(self, name: str) -> tuple[bytes, str]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            return response["Body"].read(), response["ETag"]
        except Exception as exc:
            raise ModelError(f"cannot read {self._url(name)}: {_s3_reason(exc)}") from None

    def _url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{name}"


def _s3_reason(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return error.get("Message") or error.get("Code") or str(exc)


def open_source(uri: str) -> BundleSource:
    """The source for a MODEL_URI: `s3://...` or a local folder (optionally `file://`)."""
    if uri.startswith("s3://"):
        return S3Source(uri)
    return FolderSource(uri.removeprefix("file://"))


def load_bundle(uri: str | BundleSource) -> Bundle:
    """Read, verify and deserialise the bundle at `uri`; raise ModelError saying why not."""
    source = open_source(uri) if isinstance(uri, str) else uri
    raw, tag = source.read(MANIFEST)
    manifest = parse_manifest(raw, source.uri)
    require_packages(manifest.get("requirements") or {}, source.uri)
    files = manifest["files"]
    loaded = {role: _load_file(source, role, files[role]) for role in files}
    task_of(loaded["model"], manifest, source.uri)  # refuses answer columns that collide
    if "input_schema" in manifest:
        return _pipeline_bundle(manifest, loaded, tag, source.uri)
    columns = _columns(loaded["columns"], source.uri)
    return Bundle(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        model=loaded["model"],
        scaler=loaded.get("scaler"),
        mean=_means(loaded["mean"], columns, source.uri),
        columns=columns,
        id_column=manifest.get("id_column", DEFAULT_ID_COLUMN),
        output_column=manifest.get("output_column", DEFAULT_OUTPUT_COLUMN),
        etag=tag,
        files=loaded,
        manifest=manifest,
    )


def _pipeline_bundle(
    manifest: Mapping[str, Any], loaded: dict[str, Any], tag: str, uri: str
) -> Bundle:
    schema = parse_schema(manifest["input_schema"], uri)
    model = loaded["model"]
    expected = getattr(model, "feature_names_in_", None)
    if expected is not None and list(expected) != [f.name for f in schema]:
        raise ManifestError(
            f"manifest at {uri}: input_schema lists {[f.name for f in schema]} but the model "
            f"was fitted on {list(expected)}: package the model again"
        )
    return Bundle(
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        model=model,
        scaler=None,
        mean={},
        columns=tuple(f.name for f in schema if f.type in ("number", "integer")),
        id_column=manifest.get("id_column", DEFAULT_ID_COLUMN),
        output_column=manifest.get("output_column", DEFAULT_OUTPUT_COLUMN),
        etag=tag,
        schema=schema,
        files=loaded,
        manifest=manifest,
    )


def require_packages(requirements: Any, uri: str) -> None:
    """Refuse, naming them, a bundle whose model needs packages this image lacks (before
    anything is deserialised: unpickling would fail with a less helpful message)."""
    if not isinstance(requirements, dict):
        raise ManifestError(f"manifest at {uri}: requirements must map package names to versions")
    absent = []
    for package, wanted in requirements.items():
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            absent.append(f"{package}=={wanted}" if wanted else str(package))
            continue
        if wanted and installed != wanted:
            log.warning(
                "bundle at %s was packaged with %s %s; %s is installed",
                uri,
                package,
                wanted,
                installed,
            )
    if absent:
        raise ModelError(
            f"the model at {uri} needs {', '.join(absent)}, not installed here: add it to "
            "requirements-model.txt and rebuild the image (or the local cloud's environment)"
        )


def parse_manifest(raw: bytes, uri: str) -> dict[str, Any]:
    """Check the manifest's shape so later errors can name the exact missing piece."""
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ManifestError(f"{MANIFEST} at {uri} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{MANIFEST} at {uri} must be a JSON object")
    missing = [key for key in ("name", "version", "files") if key not in manifest]
    if missing:
        raise ManifestError(f"{MANIFEST} at {uri} lacks {', '.join(missing)}")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ManifestError(f"{MANIFEST} at {uri}: 'files' must be an object")
    required = PIPELINE_REQUIRED_FILES if "input_schema" in manifest else REQUIRED_FILES
    absent = [role for role in required if role not in files]
    if absent:
        raise ManifestError(f"{MANIFEST} at {uri} lists no {', '.join(absent)} file")
    for role, entry in files.items():
        if not isinstance(entry, dict) or not {"path", "sha256"} <= entry.keys():
            raise ManifestError(f"{MANIFEST} at {uri}: files.{role} needs 'path' and 'sha256'")
    return manifest


def _load_file(source: BundleSource, role: str, entry: Mapping[str, str]) -> Any:
    data, _ = source.read(entry["path"])
    digest = hashlib.sha256(data).hexdigest()
    if digest != str(entry["sha256"]).lower():
        raise HashMismatch(
            f"{entry['path']} in {source.uri} has sha256 {digest}, but the manifest says "
            f"{entry['sha256']}: upload the file again or fix the manifest (it was not loaded)"
        )
    fmt = entry.get("format") or _format_from_path(entry["path"])
    deserialise = DESERIALISERS.get(fmt)
    if deserialise is None:
        raise ManifestError(
            f"files.{role} has format {fmt!r}; use one of {', '.join(DESERIALISERS)}"
        )
    try:
        if fmt == "skops":
            return _load_skops(data, entry.get("trusted", []), entry["path"])
        return deserialise(data)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot deserialise {entry['path']} ({fmt}): {exc}") from None


def _format_from_path(path: str) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    return {"pkl": "pickle", "pickle": "pickle", "skops": "skops"}.get(suffix, suffix)


def _load_skops(data: bytes, trusted: Any = None, path: str = "the skops file") -> Any:
    """skops' safe loader, trusting only the types the packager listed in the manifest
    (`files.<role>.trusted`); any other type it would need is refused by name."""
    import skops.io

    trusted = [] if trusted is None else trusted
    if not isinstance(trusted, list) or not all(isinstance(t, str) for t in trusted):
        raise ManifestError(f"the manifest's 'trusted' for {path} must be a list of type names")
    needed = skops.io.get_untrusted_types(data=data)
    refused = sorted(set(needed) - {str(t) for t in trusted})
    if refused:
        raise ModelError(
            f"{path} holds types the manifest does not trust: {', '.join(refused)}; package "
            "the model again with scripts/package_model.py (which lists them) after review"
        )
    return skops.io.loads(data, trusted=needed)


DESERIALISERS = {
    "joblib": lambda data: joblib.load(io.BytesIO(data)),
    "pickle": pickle.loads,
    "skops": _load_skops,
    "json": json.loads,
}


def _columns(value: Any, uri: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
        raise ManifestError(f"columns file in {uri} must be a non-empty JSON list of names")
    return tuple(value)


def _means(value: Any, columns: tuple[str, ...], uri: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ManifestError(f"mean file in {uri} must map each feature column to a number")
    missing = [c for c in columns if c not in value]
    if missing:
        raise ManifestError(f"mean file in {uri} has no value for {', '.join(missing)}")
    return {c: float(value[c]) for c in columns}


def write_bundle(
    dest: str,
    files: Mapping[str, tuple[str, bytes, str | None]],
    name: str,
    version: str,
    id_column: str = DEFAULT_ID_COLUMN,
    output_column: str = DEFAULT_OUTPUT_COLUMN,
    fields: Mapping[str, Any] | None = None,
    file_fields: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write `files` ({role: (path, bytes, format)}) then the manifest, last, to `dest`.

    `fields` adds manifest keys (a pipeline bundle's `input_schema`, ...) and
    `file_fields` keys of one file's entry (skops' `trusted` types). The manifest
    goes last so a reader polling it never sees a bundle whose files are not all
    there yet.
    """
    entries: dict[str, dict[str, Any]] = {}
    for role, (path, data, fmt) in files.items():
        entries[role] = {"path": path, "sha256": hashlib.sha256(data).hexdigest()}
        if fmt:
            entries[role]["format"] = fmt
        entries[role].update((file_fields or {}).get(role, {}))
    manifest = {
        "name": name,
        "version": version,
        "files": entries,
        "id_column": id_column,
        "output_column": output_column,
        **(fields or {}),
    }
    writer = _writer_for(dest)
    for path, data, _ in files.values():
        writer(path, data)
    writer(MANIFEST, json.dumps(manifest, indent=2).encode())
    return manifest


def write_file(dest: str, name: str, data: bytes) -> None:
    """One more file beside a bundle (a folder or an S3 prefix), written atomically."""
    _writer_for(dest)(name, data)


def _writer_for(dest: str) -> Any:
    if dest.startswith("s3://"):
        source = S3Source(dest)
        return lambda name, data: source.client.put_object(
            Bucket=source.bucket, Key=source.prefix + name, Body=data
        )
    root = Path(dest.removeprefix("file://"))
    root.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> None:
        tmp = root / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(root / name)

    return write


class ModelStore:
    """Holds the bundle in use and swaps in a new one when the manifest changes.

    Readers take `current` once per request: the swap replaces one reference, so a
    request finishes on the bundle it started with. A new bundle that fails to load
    leaves the old one serving and is recorded in `last_error`.
    """

    def __init__(
        self,
        uri: str,
        poll_seconds: float = 10.0,
        on_swap: Callable[[Bundle], None] | None = None,
    ) -> None:
        self.uri = uri
        self.poll_seconds = poll_seconds
        self.on_swap = on_swap
        self.current: Bundle | None = None
        self.last_error: str | None = None
        self.reloads = 0
        self.reload_failures = 0
        self._source = open_source(uri)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Load once now (recording any failure) and poll in the background."""
        self.check_now()
        self._thread = threading.Thread(target=self._poll, name="model-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check_now(self) -> bool:
        """Look at the manifest once; load and swap if it changed. True when swapped."""
        with self._lock:
            try:
                tag = self._source.manifest_tag()
                if self.current is not None and tag == self.current.etag:
                    return False
                bundle = load_bundle(self._source)
            except ModelError as exc:
                self._record_failure(exc.message)
                return False
            except Exception as exc:  # a reload must never take the serving model down
                self._record_failure(f"unexpected error loading {self.uri}: {exc!r}")
                return False
            self._swap(bundle)
            return True

    def _swap(self, bundle: Bundle) -> None:
        previous = self.current
        self.current = bundle
        self.last_error = None
        if previous is not None:
            self.reloads += 1
        log.info(
            "model %s version %s loaded from %s%s",
            bundle.name,
            bundle.version,
            self.uri,
            f" (was version {previous.version})" if previous else "",
        )
        if self.on_swap is not None:
            try:
                self.on_swap(bundle)
            except Exception:  # the new bundle serves whatever the hook does
                log.exception("after loading model %s version %s", bundle.name, bundle.version)

    def _record_failure(self, reason: str) -> None:
        if reason != self.last_error:
            log.error("model bundle at %s not loaded: %s", self.uri, reason)
        self.last_error = reason
        if self.current is not None:
            self.reload_failures += 1

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check_now()

    def wait_ready(self, timeout: float) -> Bundle | None:
        """Block until a bundle is loaded or `timeout` passes (start-up of a worker)."""
        deadline = time.monotonic() + timeout
        while self.current is None and time.monotonic() < deadline:
            if self._stop.wait(min(self.poll_seconds, 1.0)):
                break
            self.check_now()
        return self.current
