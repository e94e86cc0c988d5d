"""The whole local cloud: AWS API, the stack, a Lambda runtime, an ECS agent and a scheduler."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from localcloud.clients import LocalSession
from localcloud.console import Console
from localcloud.deploy import DeployedStack, ExampleBundle, deploy
from localcloud.ecs_agent import CommandFor, EcsAgent, service_command
from localcloud.lambda_runtime import LambdaRuntime
from localcloud.scheduler import Scheduler
from localcloud.server import MotoServer, ServerStartError
from localcloud.settings import LOOPBACK, LocalCloudSettings

ENDPOINT_OUTPUT = "EndpointUrl"


class LocalCloud:
    """Start/stop composite; ``start`` deploys the stack, ``stop`` leaves no process behind."""

    def __init__(
        self,
        settings: LocalCloudSettings,
        console: Console | None = None,
        command_for: CommandFor = service_command,
    ) -> None:
        self.settings = settings
        self.console = console or Console()
        self.server = MotoServer(settings, self.console)
        self.lambdas = LambdaRuntime(settings, self.console)
        self.agent = EcsAgent(settings, self.console, command_for)
        self.scheduler = Scheduler(settings, self.lambdas, self.console)
        self.session = LocalSession(settings)
        self.example = ExampleBundle(settings, self.console)
        self.stack: DeployedStack | None = None
        self._started: list[MotoServer | LambdaRuntime | EcsAgent | Scheduler] = []

    def start(self) -> DeployedStack:
        """Serve the API, deploy, then start compute; on failure stop what already started."""
        try:
            self._start(self.server)
            self._start(self.lambdas)
            self.stack = deploy(self.settings, self.session, self.console, self.example)
            self._check_endpoint_port()
            self._start(self.agent)
            self._start(self.scheduler)
        except BaseException:
            self.example.stop()
            self.stop()
            raise
        return self.stack

    def stop(self) -> None:
        """Stop in reverse order: no new events, then functions, tasks, and the API last."""
        while self._started:
            component = self._started.pop()
            name = type(component).__name__
            try:
                component.stop()
            except Exception as exc:
                self.console.line("localcloud", f"stopping {name} failed: {exc}")

    def wait_endpoint(self, timeout: float) -> bool:
        """True once the stack's endpoint answers ``/ping`` with 200."""
        url = (self.stack.outputs.get(ENDPOINT_OUTPUT) if self.stack else None) or ""
        if not url.startswith("http://127.0.0.1"):
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:  # noqa: S310  # nosec B310
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        return False

    def _check_endpoint_port(self) -> None:
        """Refuse to start when another server holds the endpoint's port: the service would
        crash-loop while that server's ``/ping`` made it look healthy."""
        url = urlsplit((self.stack.outputs.get(ENDPOINT_OUTPUT) if self.stack else None) or "")
        if url.hostname != LOOPBACK or url.port is None:
            return
        with socket.socket() as probe:
            if probe.connect_ex((LOOPBACK, url.port)) != 0:
                return
        raise ServerStartError(
            f"port {url.port} on {LOOPBACK} is in use, and the stack's endpoint needs it; "
            "stop the process listening there (another `python -m localcloud up`?)"
        )

    def _start(self, component: MotoServer | LambdaRuntime | EcsAgent | Scheduler) -> None:
        component.start()
        self._started.append(component)
