"""Every setting of the service, read from environment variables in one place.

`load_settings` validates them once at start-up; a missing or invalid value stops
the process with a message that names the variable and what it accepts.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import SettingsError
from service.media import JSON, MEDIA_TYPES, media_type

# SageMaker's inference toolkit variables (aws/sagemaker-inference-toolkit,
# src/sagemaker_inference/parameters.py) and the setting each one sets. SageMaker
# sets them on the container, so when present they win over ours; the first listed
# for a setting wins (the toolkit prefers ..._TIMEOUT_SECONDS too).
SAGEMAKER_VARIABLES = {
    "SAGEMAKER_BIND_TO_PORT": "port",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "workers",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB": "max_request_mb",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS": "timeout_seconds",
    "SAGEMAKER_MODEL_SERVER_TIMEOUT": "timeout_seconds",
    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "default_accept",
}
# Where SageMaker unpacks the model's ModelDataUrl (model.tar.gz): <base>/model, the
# base being SAGEMAKER_BASE_DIR or /opt/ml (sagemaker_inference/environment.py).
SAGEMAKER_BASE_DIR = "/opt/ml"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
OutputFormat = Literal["parquet", "csv", "jsonl"]


class CommonSettings(BaseSettings):
    """Settings shared by the endpoint and the batch worker."""

    model_config = SettingsConfigDict(
        case_sensitive=False, extra="ignore", frozen=True, protected_namespaces=()
    )

    model_uri: str = Field(
        min_length=1,
        description="Model bundle: s3://bucket/models/<name>/<version>/ or a local folder "
        "holding manifest.json (serve: /opt/ml/model when unset and it holds one).",
    )
    model_poll_seconds: float = Field(
        10.0, gt=0, description="How often to look for a new manifest at MODEL_URI (seconds > 0)."
    )
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")


class ServeSettings(CommonSettings):
    """Settings of the real-time endpoint (`python -m service serve`)."""

    host: str = Field(
        "127.0.0.1", min_length=1, description="Address to listen on (the image sets 0.0.0.0)."
    )
    port: int = Field(
        8080,
        ge=1,
        le=65535,
        description="TCP port (SageMaker: 8080, or SAGEMAKER_BIND_TO_PORT, which wins when set).",
    )
    workers: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=64,
        description="Server processes sharing the port (1-64; default: CPU count; "
        "SAGEMAKER_MODEL_SERVER_WORKERS wins when set).",
    )
    threads: int = Field(
        1,
        ge=1,
        le=256,
        description="Request threads per process (1-256). With 1, a process predicts one "
        "request after another: predictions that hold the GIL gain nothing from more "
        "threads, only interleave and wait longer. Raise it for a model that waits on I/O "
        "or releases the GIL. GETs, and small requests that prove fast, run on the "
        "process's event loop.",
    )
    max_request_mb: float = Field(
        6.0,
        ge=1,
        le=1024,
        description="Largest request body in MB, 1-1024 (413 above it; "
        "SAGEMAKER_MAX_PAYLOAD_IN_MB wins when set).",
    )
    timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="A connection that sends and receives nothing for this long is closed "
        "(seconds > 0; SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS or "
        "SAGEMAKER_MODEL_SERVER_TIMEOUT wins when set).",
    )
    default_accept: str = Field(
        JSON,
        description="The answer's media type when the request has no Accept header or "
        f"allows any (*/*): one of {', '.join(MEDIA_TYPES)} "
        "(SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT wins when set).",
    )
    api_key: str | None = Field(
        None,
        description="When set, /invocations and /metrics require it in X-Api-Key or "
        "'Authorization: Bearer <key>' (401 otherwise).",
    )
    access_log: bool = Field(False, description="true: log one line per request.")
    batch_max_rows: int = Field(
        64,
        ge=0,
        le=100_000,
        description="Adaptive batching (0-100,000; 0: off): requests of at most this many "
        "rows share model calls, up to this many rows in all: small requests that reach a "
        "process together (read in one pass of its event loop, or queued for its busy "
        "request thread), and, with THREADS above 1, those that arrive while a prediction "
        "runs. Answers are the one-by-one answers bit for bit (the manifest's row_block).",
    )
    batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="Longest a request on a thread waits for the prediction in flight "
        "before it runs on its own (ms, 0-1000); a request alone never waits.",
    )

    @field_validator("default_accept")
    @classmethod
    def _known_media_type(cls, value: str) -> str:
        kind = media_type(value)
        if kind not in MEDIA_TYPES:
            raise ValueError(f"{value!r} is not a type the server writes")
        return kind


class WorkerSettings(CommonSettings):
    """Settings of one batch worker (`python -m service worker`)."""

    job_queue_url: str = Field(min_length=1, description="URL of the SQS job queue.")
    output_bucket: str = Field(min_length=1, description="Bucket the predictions are written to.")
    output_prefix: str = Field(
        "predictions", description="Key prefix of outputs and reports in OUTPUT_BUCKET."
    )
    output_format: OutputFormat = Field("parquet", description="parquet, csv or jsonl.")
    join_input: bool = Field(
        False, description="true: carry the input columns next to the predictions."
    )
    idle_seconds: float = Field(
        60.0, ge=0, description="Exit after this many seconds without a message (>= 0)."
    )
    batch_rows: int = Field(
        65536, ge=1, le=10_000_000, description="Rows per prediction batch (1-10,000,000)."
    )
    visibility_seconds: int = Field(
        120,
        ge=1,
        le=43200,
        description="The heartbeat keeps a message invisible this long (1-43200 s).",
    )
    wait_seconds: int = Field(20, ge=0, le=20, description="SQS long-poll wait (0-20 s).")


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(cls: type[SettingsT], environ: Mapping[str, str] | None = None) -> SettingsT:
    """Build `cls` from the environment, or raise SettingsError saying what to fix."""
    env = os.environ if environ is None else environ
    values = {name: env[name.upper()] for name in cls.model_fields if name.upper() in env}
    if issubclass(cls, ServeSettings):
        values = _sagemaker_values(env, values)
    try:
        return cls(_env_file=None, **values)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(_explain(cls, exc)) from None


def _sagemaker_values(env: Mapping[str, str], values: dict[str, str]) -> dict[str, str]:
    """SageMaker's variables over ours, and the model SageMaker unpacked when MODEL_URI
    is unset and /opt/ml/model holds a bundle."""
    values = dict(values)
    for variable in reversed(SAGEMAKER_VARIABLES):
        if env.get(variable, "").strip():
            values[SAGEMAKER_VARIABLES[variable]] = env[variable]
    model_dir = Path(env.get("SAGEMAKER_BASE_DIR") or SAGEMAKER_BASE_DIR) / "model"
    if "model_uri" not in values and (model_dir / "manifest.json").is_file():
        values["model_uri"] = str(model_dir)
    return values


def _explain(cls: type[CommonSettings], exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        field = cls.model_fields.get(name)
        accepts = field.description if field else ""
        problem = "is required" if error["type"] == "missing" else f"is invalid ({error['msg']})"
        lines.append(f"{name.upper()} {problem}. Accepts: {accepts}")
    return "Invalid settings: " + " ".join(lines)


def settings_table() -> str:
    """The README's settings table, generated from the classes so the two never drift."""
    rows = ["| variable | used by | default | accepts |", "|---|---|---|---|"]
    seen: set[str] = set()
    for cls, user in (
        (CommonSettings, "both"),
        (ServeSettings, "serve"),
        (WorkerSettings, "worker"),
    ):
        for name, field in cls.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            default = "required" if field.is_required() else _default_text(name, field.default)
            rows.append(f"| `{name.upper()}` | {user} | {default} | {field.description} |")
    return "\n".join(rows)


def _default_text(name: str, default: object) -> str:
    if name == "workers":
        return "CPU count"
    return "unset" if default is None else f"`{default}`"


TABLE_START = "<!-- generated: python -m service settings --readme README.md -->"
TABLE_END = "<!-- end of the generated settings table -->"


def with_settings_table(document: str) -> str:
    """``document`` with settings_table() between TABLE_START and TABLE_END, so the README
    is rewritten, never edited by hand, when a setting changes."""
    head, start, rest = document.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} block to write the table into")
    return f"{head}{TABLE_START}\n{settings_table()}\n{TABLE_END}{tail}"
