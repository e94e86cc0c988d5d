"""Which AWS the integration tests talk to, chosen by the environment, so the tests read the same.

- ``TEST_AWS_BACKEND`` unset or ``moto``: a moto server on a free 127.0.0.1 port serves every
  service.
- ``TEST_AWS_BACKEND=localstack`` with ``LOCALSTACK_ENDPOINT=http://127.0.0.1:PORT`` (set by
  ``python -m tests.localstack_harness run``): S3, SQS, CloudFormation, IAM, STS and CloudWatch
  Logs go to LocalStack; ECS, EC2 and Lambda stay on a moto server started here, because
  LocalStack's free edition has no ECS and runs no Lambda function without Docker.

Tests take clients from ``Backend.client`` and give subprocesses ``Backend.env()``: boto3
reads ``AWS_ENDPOINT_URL`` and the per-service ``AWS_ENDPOINT_URL_<SERVICE>`` variables.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from moto.server import ThreadedMotoServer

BACKEND_VARIABLE = "TEST_AWS_BACKEND"
ENDPOINT_VARIABLE = "LOCALSTACK_ENDPOINT"
MOTO = "moto"
LOCALSTACK = "localstack"
REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")

# Client name -> the suffix of boto3's endpoint variable (the service id, upper case, "_"s).
LOCALSTACK_SERVICES: dict[str, str] = {
    "s3": "S3",
    "sqs": "SQS",
    "cloudformation": "CLOUDFORMATION",
    "iam": "IAM",
    "sts": "STS",
    "logs": "CLOUDWATCH_LOGS",
}


class BackendError(RuntimeError):
    """The backend variables are wrong, or LocalStack does not answer where they point."""


@dataclass(frozen=True)
class Backend:
    """The endpoints of one test run: moto for everything, unless `routes` names another."""

    name: str
    moto_endpoint: str
    routes: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_localstack(self) -> bool:
        return self.name == LOCALSTACK

    @property
    def cloudformation_applies_s3_notifications(self) -> bool:
        """moto's CloudFormation drops a bucket's NotificationConfiguration; LocalStack's keeps it."""
        return self.is_localstack

    def endpoint(self, service: str) -> str:
        return self.routes.get(service, self.moto_endpoint)

    def endpoints(self) -> dict[str, str]:
        """Every service this run routes away from moto, and "default" for the rest."""
        return {"default": self.moto_endpoint, **self.routes}

    def client(self, service: str, **kwargs: Any) -> Any:
        session = boto3.session.Session(region_name=REGION, **CREDENTIALS)
        return session.client(service, endpoint_url=self.endpoint(service), **kwargs)

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's environment) without any AWS_ variable, plus the
        endpoints, fake credentials and region, so a subprocess reaches nothing else."""
        source = os.environ if base is None else base
        env = {name: value for name, value in source.items() if not name.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.moto_endpoint,
            AWS_ACCESS_KEY_ID=CREDENTIALS["aws_access_key_id"],
            AWS_SECRET_ACCESS_KEY=CREDENTIALS["aws_secret_access_key"],
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        )
        for service, url in self.routes.items():
            env[f"AWS_ENDPOINT_URL_{LOCALSTACK_SERVICES[service]}"] = url
        return env


def chosen(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(backend name, LocalStack endpoint or None) from the environment, LocalStack's health
    checked; BackendError says what to fix."""
    environ = os.environ if environ is None else environ
    name = environ.get(BACKEND_VARIABLE, "").strip().lower() or MOTO
    if name == MOTO:
        return name, None
    if name != LOCALSTACK:
        raise BackendError(
            f"{BACKEND_VARIABLE}={name!r} is invalid; accepts {MOTO} or {LOCALSTACK}"
        )
    endpoint = environ.get(ENDPOINT_VARIABLE, "").strip().rstrip("/")
    parts = urlsplit(endpoint)
    if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or not parts.port:
        raise BackendError(
            f"{BACKEND_VARIABLE}=localstack needs {ENDPOINT_VARIABLE}=http://127.0.0.1:PORT, "
            f"got {endpoint!r}; `python -m tests.localstack_harness run -- pytest ...` sets both"
        )
    check_localstack(endpoint)
    return name, endpoint


def check_localstack(endpoint: str) -> None:
    """Fail early and plainly when LocalStack is not there, rather than in the first test."""
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=10) as response:
            health = json.load(response)
    except (OSError, ValueError) as error:
        raise BackendError(f"LocalStack does not answer at {endpoint}: {error}") from error
    if not isinstance(health, dict) or "services" not in health:
        raise BackendError(f"{endpoint} answered its health check without services: {health}")


@contextlib.contextmanager
def open_backend(name: str = MOTO, localstack: str | None = None) -> Iterator[Backend]:
    """Start moto on a free loopback port; route LocalStack's services to it when given."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        routes = dict.fromkeys(LOCALSTACK_SERVICES, localstack) if localstack else {}
        yield Backend(name=name, moto_endpoint=f"http://{host}:{port}", routes=routes)
    finally:
        server.stop()


@contextlib.contextmanager
def backend_for_tests() -> Iterator[Backend]:
    """The chosen backend for a fixture; a bad choice fails the test with the reason."""
    try:
        name, localstack = chosen()
    except BackendError as error:
        pytest.fail(str(error), pytrace=False)
    with open_backend(name, localstack) as backend:
        yield backend


@pytest.fixture(scope="module")
def aws_backend() -> Iterator[Backend]:
    """The backend for one test module: a fresh moto server, and LocalStack when chosen."""
    with backend_for_tests() as backend:
        yield backend
