"""The whole local cloud: AWS API, the stack, a Lambda runtime, an ECS agent and a scheduler."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from infra.template import parse_template
from localcloud import stack_updates
from localcloud.clients import LocalSession
from localcloud.console import Console
from localcloud.deploy import (
    DeployedStack,
    ExampleBundle,
    apply_dropped,
    deploy,
    dropped_calls,
    ensure_example_model,
    stack_context,
)
from localcloud.ecs_agent import CommandFor, EcsAgent, service_command
from localcloud.keeper import StateKeeper
from localcloud.lambda_runtime import LambdaRuntime
from localcloud.requeue import requeue_unreported
from localcloud.scheduler import Scheduler
from localcloud.server import MotoServer, ServerStartError
from localcloud.settings import LOOPBACK, LocalCloudSettings
from localcloud.state import StateStore
from localcloud.waiting import wait_until

ENDPOINT_OUTPUT = "EndpointUrl"
NAME = "localcloud"
Component = Any


class LocalCloud:
    """Start/stop composite; ``start`` deploys the stack, ``stop`` leaves no process behind."""

    def __init__(
        self,
        settings: LocalCloudSettings,
        console: Console | None = None,
        command_for: CommandFor = service_command,
        fresh: bool = False,
    ) -> None:
        self.settings = settings
        self.console = console or Console()
        self.server = MotoServer(settings, self.console)
        self.lambdas = LambdaRuntime(settings, self.console)
        self.agent = EcsAgent(settings, self.console, command_for)
        self.scheduler = Scheduler(settings, self.lambdas, self.console)
        self.session = LocalSession(settings)
        self.example = ExampleBundle(settings, self.console)
        self.store = StateStore(settings.kept_state_dir, settings.account_id)
        self.keeper = StateKeeper(self.store, settings.state_save_seconds, self.console)
        self.stack: DeployedStack | None = None
        self._fresh = fresh
        self._started: list[Component] = []

    def start(self) -> DeployedStack:
        """Serve the API, deploy, then start compute; on failure stop what already started."""
        if self._fresh:
            self.store.clear()
            self.console.line(NAME, f"--fresh: emptied {self.store.folder}")
        try:
            self._start(self.server)
            stack_updates.set_hook(self._on_stack_change)
            self._start(self.lambdas)
            self.stack = deploy(self.settings, self.session, self.console, self.example, self.store)
            self._check_endpoint_port()
            requeued = requeue_unreported(self.session, self.stack, self.console)
            self._start(self.keeper)
            self._start(self.agent)
            self._start(self.scheduler)
            if requeued:
                self.scheduler.fire_all()
            if self.settings.watch:
                from localcloud.watch import Watcher

                self._start(Watcher(self))
        except BaseException:
            self.example.stop()
            self.stop()
            raise
        return self.stack

    def stop(self) -> None:
        """Stop in reverse order: no new events, then functions, tasks, and the API last;
        then save what is kept (the models stay readable in this process)."""
        saving = self.keeper in self._started
        stack_updates.set_hook(None)
        while self._started:
            component = self._started.pop()
            name = type(component).__name__
            try:
                component.stop()
            except Exception as exc:
                self.console.line(NAME, f"stopping {name} failed: {exc}")
        if saving:
            self.keeper.save(announce=True)

    def _on_stack_change(self, model: Any, status: str) -> None:
        """After an update (CLI, ``localcloud deploy``, --watch): apply what moto drops, keep
        the parameters, retire Lambda environments, and say what happened."""
        previous = self.stack
        outputs = {o["OutputKey"]: str(o["OutputValue"]) for o in model.outputs or []}
        auto = previous.auto if previous is not None else frozenset()
        stack = DeployedStack(model.name, model.stack_id, dict(model.parameters), outputs, auto)
        try:
            template = parse_template(model.template, model.name)
            context = stack_context(
                self.settings, self.session.client("cloudformation"), template, stack
            )
            apply_dropped(self.session.client("s3"), dropped_calls(template, context), self.console)
        except Exception as exc:
            self.console.line(NAME, f"re-applying the stack's S3 settings failed: {exc}")
        if outputs.get("FunctionName"):
            self.lambdas.retire(outputs["FunctionName"])
        try:
            ensure_example_model(self.session.client("s3"), stack, self.example, self.console)
        except Exception as exc:
            self.console.line(NAME, f"uploading the example model failed: {exc}")
        if status == "UPDATE_COMPLETE":
            self.store.save_stack(stack.name, stack.kept_parameters())
            if previous is None or previous.name == stack.name:
                self.stack = stack
            self.console.line(NAME, f"stack {stack.name} updated: {_changes(previous, stack)}")
        else:
            reason = next(
                (
                    e.resource_status_reason
                    for e in reversed(model.events)
                    if e.resource_status == "UPDATE_ROLLBACK_IN_PROGRESS"
                ),
                "",
            )
            self.console.line(NAME, f"stack {stack.name} update failed, {status}: {reason}")

    def endpoint_healthy(self) -> bool:
        """Whether the stack's endpoint answers ``/ping`` with 200 now."""
        url = (self.stack.outputs.get(ENDPOINT_OUTPUT) if self.stack else None) or ""
        if not url.startswith("http://127.0.0.1"):
            return False
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:  # noqa: S310  # nosec B310
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_endpoint(self, timeout: float) -> bool:
        """True once the stack's endpoint answers ``/ping`` with 200."""
        try:
            return wait_until(self.endpoint_healthy, timeout, "the endpoint's /ping", 0.5)
        except TimeoutError:
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

    def _start(self, component: Component) -> None:
        component.start()
        self._started.append(component)


def _changes(before: DeployedStack | None, after: DeployedStack) -> str:
    if before is None:
        return "template applied"
    names = sorted(set(before.parameters) | set(after.parameters))
    changed = [
        f"{n} {before.parameters.get(n, '(default)')} -> {after.parameters.get(n, '(default)')}"
        for n in names
        if before.parameters.get(n) != after.parameters.get(n)
    ]
    return ", ".join(changed) or "template applied, no parameter changed"
