"""Every option of the local cloud, in one typed object shared by the CLI and tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moto.core import DEFAULT_ACCOUNT_ID

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"

# The container port of the endpoint: SageMaker's contract.
ENDPOINT_CONTAINER_PORT = 8080

# AWS retries a failed asynchronous invocation twice: after about one and two minutes.
AWS_ASYNC_RETRY_DELAYS = (60.0, 120.0)


@dataclass(frozen=True)
class LocalCloudSettings:
    """Options of the local cloud; defaults are what ``python -m localcloud up`` uses."""

    port: int = 4566
    # Host port for the endpoint's container port (like docker's -p HOST:8080); None keeps 8080.
    endpoint_port: int | None = None
    host: str = LOOPBACK
    # Address the servers listen on. Only a container publishing its ports needs 0.0.0.0
    # (LOCALCLOUD_BIND); clients still use `host`.
    bind: str = LOOPBACK
    region: str = "us-east-1"
    account_id: str = DEFAULT_ACCOUNT_ID
    stack_name: str = "model-endpoint-local"
    repo_root: Path = REPO_ROOT
    template: Path = REPO_ROOT / "infra" / "stack.yaml"
    params: Path = REPO_ROOT / "infra" / "params" / "local.json"
    lambda_source: Path = REPO_ROOT / "lambda"
    state_dir: Path = REPO_ROOT / ".localcloud"
    schedule_scale: float = 1.0
    retry_delays: tuple[float, ...] = AWS_ASYNC_RETRY_DELAYS
    # Fault injection: this fraction of asynchronous Lambda events fails every attempt.
    fault_drop_events: float = 0.0
    lambda_max_concurrency: int = 10
    # A warm Lambda environment (process) idle this long ends, as AWS recycles idle ones.
    lambda_idle_seconds: float = 300.0
    agent_poll_seconds: float = 0.2
    default_stop_timeout: float = 30.0
    shutdown_grace: float = 30.0
    restart_backoff_max: float = 30.0
    deploy_timeout: float = 120.0
    verbose: bool = False
    # A bundle folder or s3:// prefix served from the start (``up --model``).
    model: str | None = None
    # --params given: its values win over the parameters kept from the last run.
    params_explicit: bool = False
    # Seconds between saves of the kept state (objects, stack parameters); also saved at stop.
    state_save_seconds: float = 30.0
    watch: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def kept_state_dir(self) -> Path:
        """Where the objects and stack parameters kept across restarts live."""
        return self.state_dir / "cloud"

    @property
    def endpoint_url(self) -> str:
        """The URL every AWS client (ours and the user's) points at."""
        return f"http://{self.host}:{self.port}"
