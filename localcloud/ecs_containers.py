"""A task's containers as local processes: started with the container's environment and
log stream, watched until an essential one exits or a stop is asked, then stopped within
each container's stop timeout."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from moto.ecs.models import EC2ContainerServiceBackend, Task

from localcloud.console import Console
from localcloud.cwlogs import LogStreamWriter
from localcloud.ecs_tasks import ContainerLaunch, docker_exit_code
from localcloud.procs import Child, aws_environment, base_environment
from localcloud.settings import ENDPOINT_CONTAINER_PORT, LocalCloudSettings

CommandFor = Callable[[ContainerLaunch], list[str]]


def service_command(launch: ContainerLaunch) -> list[str]:
    """The image's entrypoint (``python -m service``) plus the container's command."""
    return [sys.executable, "-m", "service", *launch.command]


@dataclass
class TaskRun:
    """One running task: its processes by container name and why it should stop."""

    task: Task
    backend: EC2ContainerServiceBackend
    launches: list[ContainerLaunch]
    children: dict[str, Child] = field(default_factory=dict)
    wake: threading.Event = field(default_factory=threading.Event)
    stop_requested: bool = False
    grace_cap: float | None = None
    started: float = field(default_factory=time.monotonic)

    def request_stop(self, reason: str, grace_cap: float | None = None) -> None:
        self.grace_cap = grace_cap
        self.stop_requested = True
        if not self.task.stopped_reason:
            self.task.stopped_reason = reason
        self.wake.set()

    def wait_for_end(self) -> None:
        """Until an essential container exits or a stop is asked."""
        essential = {launch.name for launch in self.launches if launch.essential}
        while True:
            self.wake.wait()
            self.wake.clear()
            exited = [
                n for n, c in self.children.items() if n in essential and c.returncode is not None
            ]
            if exited or self.stop_requested:
                return

    def stop_containers(self) -> dict[str, int]:
        """Stop every container at once, each within its stop timeout (capped at shutdown);
        their exit codes as Docker reports them."""
        cap = self.grace_cap if self.grace_cap is not None else float("inf")
        grace = {launch.name: min(launch.stop_timeout, cap) for launch in self.launches}
        stoppers = [
            threading.Thread(target=child.stop, args=(grace[name],), daemon=True)
            for name, child in self.children.items()
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        return {name: docker_exit_code(child.wait() or 0) for name, child in self.children.items()}

    def kill(self) -> None:
        for child in self.children.values():
            child.kill()

    def pids(self) -> list[int]:
        return [child.pid for child in self.children.values()]


class ContainerLauncher:
    """Starts a task's containers; ``command_for`` maps a container to the argv to run."""

    def __init__(self, settings: LocalCloudSettings, console: Console, command_for: CommandFor):
        self.settings = settings
        self._console = console
        self._command_for = command_for

    def start_all(self, run: TaskRun) -> None:
        """Every container of the task; on OSError the ones started are killed again."""
        try:
            for launch in run.launches:
                run.children[launch.name] = self._spawn(run, launch)
        except OSError:
            run.kill()
            raise

    def _spawn(self, run: TaskRun, launch: ContainerLaunch) -> Child:
        env = base_environment()
        env.update(self.settings.extra_env)
        env.update(launch.environment)
        env.update(aws_environment(self.settings.endpoint_url, run.task.region_name))
        env["HOST"] = self.settings.bind
        if launch.port is not None:
            env["PORT"] = str(self._host_port(launch.port))
        writer = _log_writer(run.task, launch)
        return Child(
            self._command_for(launch),
            name=f"ecs:{run.task.id[:8]} {launch.name}",
            console=self._console,
            env=env,
            cwd=self.settings.repo_root,
            on_line=writer.write if writer else None,
            on_exit=lambda _code: run.wake.set(),
        )

    def _host_port(self, container_port: int) -> int:
        """The endpoint's port on this machine (tasks share the host's network here)."""
        mapped = self.settings.endpoint_port
        return mapped if mapped and container_port == ENDPOINT_CONTAINER_PORT else container_port


def _log_writer(task: Task, launch: ContainerLaunch) -> LogStreamWriter | None:
    if not launch.log_group:
        return None
    prefix = f"{launch.log_stream_prefix}/" if launch.log_stream_prefix else ""
    stream = f"{prefix}{launch.name}/{task.id}"
    return LogStreamWriter(task._account_id, task.region_name, launch.log_group, stream)
