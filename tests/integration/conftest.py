"""Fixtures for the local cloud's integration tests: a real moto server on a free loopback
port and the local cloud's components, each started per test and stopped in its finalizer."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from localcloud.clients import LocalSession
from localcloud.console import Console
from localcloud.ecs_agent import CommandFor, ContainerLaunch, EcsAgent
from localcloud.lambda_runtime import LambdaRuntime
from localcloud.scheduler import Scheduler
from localcloud.server import MotoServer
from localcloud.settings import LocalCloudSettings
from tests.support import free_port

ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


def python_code_command(launch: ContainerLaunch) -> list[str]:
    """Toy containers: the task definition's command is Python source run with ``-c``."""
    return [sys.executable, "-c", *launch.command]


@pytest.fixture
def unused_port() -> int:
    """A free loopback port for a server a test starts itself."""
    return free_port()


def _processes_using(endpoint_url: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AWS_ENDPOINT_URL") == endpoint_url:
                found.append(process)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def processes_using() -> Callable[[str], list[psutil.Process]]:
    """Processes a local cloud started: their environment points at its endpoint URL."""
    return _processes_using


@pytest.fixture(scope="module")
def localcloud_settings(tmp_path_factory: pytest.TempPathFactory) -> LocalCloudSettings:
    """Settings for fast tests: short retry delays, fast polling, a private state folder."""
    return LocalCloudSettings(
        port=free_port(),
        state_dir=tmp_path_factory.mktemp("localcloud-state"),
        retry_delays=(0.3, 0.3),
        agent_poll_seconds=0.05,
        default_stop_timeout=5.0,
        restart_backoff_max=2.0,
    )


@pytest.fixture(scope="module")
def moto_server(localcloud_settings: LocalCloudSettings) -> Iterator[MotoServer]:
    """moto in this process, on 127.0.0.1 only; module scope keeps startup cheap."""
    server = MotoServer(localcloud_settings, Console())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The server with every resource of earlier tests forgotten."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def aws(moto: MotoServer) -> Callable[[str], Any]:
    """``aws("s3")`` returns a boto3 client bound to the local server."""
    return LocalSession(moto.settings).client


@pytest.fixture
def lambda_runtime(moto: MotoServer) -> Iterator[LambdaRuntime]:
    runtime = LambdaRuntime(moto.settings, Console())
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def ecs_agent_factory(moto: MotoServer) -> Iterator[Callable[..., EcsAgent]]:
    """Start an agent with a given command mapping (default: toy Python containers)."""
    agents: list[EcsAgent] = []

    def start(command_for: CommandFor = python_code_command, **overrides: Any) -> EcsAgent:
        settings = replace(moto.settings, **overrides)
        agent = EcsAgent(settings, Console(), command_for)
        agent.start()
        agents.append(agent)
        return agent

    try:
        yield start
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture
def ecs_agent(ecs_agent_factory: Callable[..., EcsAgent]) -> EcsAgent:
    return ecs_agent_factory()


@pytest.fixture
def scheduler_factory(
    moto: MotoServer, lambda_runtime: LambdaRuntime
) -> Iterator[Callable[[float], Scheduler]]:
    """Start a scheduler with a given schedule scale."""
    schedulers: list[Scheduler] = []

    def start(scale: float) -> Scheduler:
        settings = replace(moto.settings, schedule_scale=scale)
        scheduler = Scheduler(settings, lambda_runtime, Console(), tick_seconds=0.05)
        scheduler.start()
        schedulers.append(scheduler)
        return scheduler

    try:
        yield start
    finally:
        for scheduler in schedulers:
            scheduler.stop()


def zip_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.fixture
def make_function(aws: Callable[[str], Any]) -> Callable[..., str]:
    """Create a Lambda function from handler source; returns its name."""
    role = aws("iam").create_role(RoleName="toy-lambda", AssumeRolePolicyDocument=ROLE_POLICY)

    def create(name: str, source: str, **config: Any) -> str:
        aws("lambda").create_function(
            FunctionName=name,
            Runtime="python3.11",
            Role=role["Role"]["Arn"],
            Handler="handler.handler",
            Code={"ZipFile": zip_of({"handler.py": source})},
            **config,
        )
        return name

    return create


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """A folder toy functions and containers write their observations to."""
    path = tmp_path / "out"
    path.mkdir()
    return path
