"""A Lambda function's code and environment: its zip extracted once per content hash, the
variables its process sees, and the key that tells which warm environments may serve it."""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import threading
import uuid
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from moto.awslambda.models import LambdaFunction

from localcloud.procs import aws_environment, base_environment
from localcloud.settings import LocalCloudSettings

BOOTSTRAP = Path(__file__).with_name("bootstrap.py")

FunctionKey = tuple[str, str, str]


def function_key(fn: LambdaFunction) -> FunctionKey:
    return (fn.account_id, fn.region, fn.function_name)


def stream_name(fn: LambdaFunction) -> str:
    """A new log stream's name, as Lambda names one per execution environment."""
    return f"{datetime.now(UTC):%Y/%m/%d}/[{fn.version}]{uuid.uuid4().hex}"


def config_key(fn: LambdaFunction, env: dict[str, str]) -> str:
    """Environments are shared only by invocations of the same code and configuration."""
    settings = {k: v for k, v in env.items() if k != "AWS_LAMBDA_LOG_STREAM_NAME"}
    identity = [*function_key(fn), sorted(settings.items())]
    return hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()


def function_environment(
    settings: LocalCloudSettings, fn: LambdaFunction, code_dir: Path, stream: str
) -> dict[str, str]:
    """AWS's reserved variables, then the function's, then the local endpoint (always ours)."""
    env = base_environment()
    env.update(settings.extra_env)
    env.update(
        {
            "LAMBDA_TASK_ROOT": str(code_dir),
            "LAMBDA_RUNTIME_DIR": str(BOOTSTRAP.parent),
            "_HANDLER": str(fn.handler),
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{fn.run_time}",
            "AWS_LAMBDA_FUNCTION_NAME": fn.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": str(fn.version),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.memory_size),
            "AWS_LAMBDA_LOG_GROUP_NAME": fn.logs_group_name,
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "TZ": ":UTC",
        }
    )
    env.update({key: str(value) for key, value in (fn.environment_vars or {}).items()})
    env.update(aws_environment(settings.endpoint_url, fn.region))
    return env


class CodeCache:
    """Code zips extracted once per content hash under ``root``, like a warm code cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    def code_dir(self, fn: LambdaFunction) -> Path:
        """The folder holding the function's extracted code; ValueError or BadZipFile when
        the function has no usable package."""
        code = getattr(fn, "code_bytes", b"") or b""
        if not code:
            raise ValueError(f"function {fn.function_name} has no code package")
        digest = hashlib.sha256(code).hexdigest()[:16]
        target = self.root / digest
        with self._lock:
            if not target.is_dir():
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest}-"))
                with zipfile.ZipFile(io.BytesIO(code)) as archive:
                    archive.extractall(staging)
                staging.replace(target)
        return target
