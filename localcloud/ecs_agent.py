"""ECS agent: runs the tasks recorded in moto's ECS control plane as local processes.

Like the real agent, it watches the control plane (moto's ECS models, in this process),
starts a process for every new task, reports RUNNING and then STOPPED with the container's
exit code, stops the process on StopTask and keeps every service at its desired count.

One moto seam: ``EC2ContainerServiceBackend.stop_task`` marks a task STOPPED at once; while
the agent runs it is wrapped so a task the agent runs stays ``DEACTIVATING`` (desired
STOPPED) until its process has really exited, as on AWS.

The agent ties the parts together: task bookkeeping in moto (``ecs_tasks``), the
containers' processes (``ecs_containers``) and the services' desired counts
(``ecs_services``).
"""

from __future__ import annotations

import threading
import time

from moto.ecs.models import EC2ContainerServiceBackend, Task

from localcloud import ecs_tasks
from localcloud.console import Console
from localcloud.ecs_containers import CommandFor, ContainerLauncher, TaskRun, service_command
from localcloud.ecs_services import QUICK_EXIT_SECONDS, ServiceReconciler
from localcloud.ecs_tasks import (
    SHUTDOWN,
    USER_STOPPED,
    ContainerLaunch,
    docker_exit_code,
)
from localcloud.server import ECS_TASK_MANUAL
from localcloud.settings import LocalCloudSettings

__all__ = [
    "QUICK_EXIT_SECONDS",
    "CommandFor",
    "ContainerLaunch",
    "EcsAgent",
    "docker_exit_code",
    "service_command",
]

_original_stop_task = EC2ContainerServiceBackend.stop_task
_active: EcsAgent | None = None


def _stop_task_and_wait_for_agent(
    backend: EC2ContainerServiceBackend, cluster_str: str, task_str: str, reason: str
) -> Task:
    task = _original_stop_task(backend, cluster_str, task_str, reason)
    agent = _active
    if agent is not None:
        agent.mark_stopping(task)
    return task


class EcsAgent:
    """Start/stop component; ``command_for`` maps a container to the argv to run locally."""

    def __init__(
        self,
        settings: LocalCloudSettings,
        console: Console | None = None,
        command_for: CommandFor = service_command,
    ) -> None:
        self.settings = settings
        self._console = console or Console()
        self._launcher = ContainerLauncher(settings, self._console, command_for)
        self._services = ServiceReconciler(settings, self._console, self.is_running, self.wake)
        self._runs: dict[str, TaskRun] = {}
        self._seen: set[str] = set()
        self._lock = threading.RLock()
        self._stop_event = threading.Event()
        self._wake_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._supervisors: set[threading.Thread] = set()

    def start(self) -> None:
        """Hold task status ourselves and start watching the control plane."""
        global _active
        if _active is not None:
            raise RuntimeError("an EcsAgent is already started in this process")
        from moto.moto_api import state_manager

        state_manager.set_transition("ecs::task", ECS_TASK_MANUAL)
        _active = self
        EC2ContainerServiceBackend.stop_task = _stop_task_and_wait_for_agent  # type: ignore[method-assign]
        self._stop_event.clear()
        self._thread = threading.Thread(target=self._loop, name="ecs-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, stop every task's processes and report them STOPPED."""
        global _active
        self._stop_event.set()
        self._wake_event.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            runs = list(self._runs.values())
        cap = self.settings.shutdown_grace
        for run in runs:
            run.request_stop(SHUTDOWN, grace_cap=cap)
        for thread in list(self._supervisors):
            thread.join(cap + 10)
        if _active is self:
            EC2ContainerServiceBackend.stop_task = _original_stop_task  # type: ignore[method-assign]
            _active = None

    def kill_all(self) -> None:
        """SIGKILL every task's processes now (a second Ctrl-C)."""
        with self._lock:
            children = [c for run in self._runs.values() for c in run.children.values()]
        for child in children:
            child.kill()

    def mark_stopping(self, task: Task) -> None:
        """After StopTask: a task whose processes still run is DEACTIVATING, not STOPPED."""
        with self._lock:
            if task.id in self._runs:
                ecs_tasks.mark_deactivating(task)
        self.wake()

    def is_running(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._runs

    def wake(self) -> None:
        """Look at the control plane now rather than at the next poll."""
        self._wake_event.set()

    def running_pids(self) -> dict[str, list[int]]:
        """Task id -> PIDs of its container processes (tests and diagnostics)."""
        with self._lock:
            return {tid: run.pids() for tid, run in self._runs.items()}

    def restart_services(self) -> list[str]:
        """Replace every service's tasks one by one (new code); the services' names."""
        names = self._services.restart_all()
        self.wake()
        return names

    def sync_once(self) -> None:
        """One pass: start new tasks, stop stopped ones, reconcile services."""
        for backend in ecs_tasks.backends():
            for task in ecs_tasks.tasks(backend):
                self._sync_task(backend, task)
            for service in list(backend.services.values()):
                self._services.reconcile(backend, service)

    def _loop(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # the agent must outlive one bad resource
                self._console.line("ecs", f"agent error: {type(exc).__name__}: {exc}")
            self._wake_event.wait(self.settings.agent_poll_seconds)
            self._wake_event.clear()

    def _sync_task(self, backend: EC2ContainerServiceBackend, task: Task) -> None:
        with self._lock:
            run = self._runs.get(task.id)
            if run is None:
                if task.id in self._seen:
                    return
                self._seen.add(task.id)
        if run is None:
            if task.desired_status == "RUNNING" and task.last_status != "STOPPED":
                self._launch(backend, task)
        elif task.desired_status == "STOPPED" and not run.stop_requested:
            run.request_stop(task.stopped_reason or USER_STOPPED)

    def _launch(self, backend: EC2ContainerServiceBackend, task: Task) -> None:
        ecs_tasks.mark_pending(task)
        try:
            taskdef = backend.describe_task_definition(task.task_definition_arn)
            launches = [
                ecs_tasks.container_launch(task, d, self.settings.default_stop_timeout)
                for d in taskdef.container_definitions
            ]
        except Exception as exc:
            self._failed_to_start(task, f"CannotPullContainerError: {exc}")
            return
        run = TaskRun(task, backend, launches)
        ecs_tasks.ensure_containers(task, launches)
        with self._lock:
            self._runs[task.id] = run
        try:
            self._launcher.start_all(run)
        except OSError as exc:
            with self._lock:
                self._runs.pop(task.id, None)
            self._failed_to_start(task, f"CannotStartContainerError: {exc}")
            return
        ecs_tasks.mark_running(task)
        thread = threading.Thread(target=self._supervise, args=(run,), daemon=True)
        self._supervisors.add(thread)
        thread.start()

    def _failed_to_start(self, task: Task, reason: str) -> None:
        ecs_tasks.finish(self._console, task, {}, reason, "TaskFailedToStart")
        self._services.note_exit(task, 0.0)

    def _supervise(self, run: TaskRun) -> None:
        """Wait for an essential container to exit or a stop; then stop the rest and report."""
        run.wait_for_end()
        ecs_tasks.mark_deactivating(run.task)
        codes = run.stop_containers()
        requested = run.stop_requested
        reason, stop_code = ecs_tasks.end_reason(run.task, requested)
        if not requested:
            self._services.note_exit(run.task, time.monotonic() - run.started)
        with self._lock:
            self._runs.pop(run.task.id, None)
            ecs_tasks.finish(self._console, run.task, codes, reason, stop_code)
        self._supervisors.discard(threading.current_thread())
        self._wake_event.set()
