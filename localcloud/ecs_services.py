"""ECS services: keep each at its desired count of its current task definition, replace
tasks one at a time on a deployment or restart, and back off a service whose tasks keep
dying young, as ECS throttles."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from moto.ecs.models import EC2ContainerServiceBackend, Service, Task

from localcloud.console import Console
from localcloud.ecs_tasks import backends
from localcloud.settings import LocalCloudSettings

QUICK_EXIT_SECONDS = 10.0


@dataclass
class ServiceState:
    quick_failures: int = 0
    next_start: float = 0.0
    warned: str = ""
    restart_after: datetime | None = None


def _newer(task: Task, state: ServiceState) -> bool:
    """Started after the last restart asked for (a task not yet started counts as new)."""
    started = getattr(task, "started_at", None)
    return state.restart_after is None or started is None or started >= state.restart_after


class ServiceReconciler:
    """``is_running(task_id)`` says whether a task's processes still run; ``wake()`` asks the
    agent to look at the control plane again."""

    def __init__(
        self,
        settings: LocalCloudSettings,
        console: Console,
        is_running: Callable[[str], bool],
        wake: Callable[[], None],
    ) -> None:
        self.settings = settings
        self._console = console
        self._is_running = is_running
        self._wake = wake
        self._services: dict[tuple[str, str], ServiceState] = {}
        self._lock = threading.Lock()

    def reconcile(self, backend: EC2ContainerServiceBackend, service: Service) -> None:
        """Keep ``desiredCount`` tasks of the service's current task definition running."""
        group = f"service:{service.name}"
        tasks = [
            t
            for t in backend.tasks.get(service.cluster_name, {}).copy().values()
            if t.group == group and t.desired_status == "RUNNING"
        ]
        want = int(service.desired_count or 0) if service.status == "ACTIVE" else 0
        try:
            current = backend.describe_task_definition(service.task_definition).arn
        except Exception:
            current = service.task_definition
        state = self._state(service.cluster_name, group)
        fresh = [t for t in tasks if t.task_definition_arn == current and _newer(t, state)]
        stale = [t for t in tasks if t not in fresh]
        if self._draining(backend, service.cluster_name, group):
            pass  # one at a time: a stopped task still holds the host port
        elif len(fresh) + len(stale) < want and time.monotonic() >= state.next_start:
            self._start_tasks(backend, service, current, want - len(tasks), state)
        elif stale:
            backend.stop_task(
                service.cluster_name, stale[0].task_arn, "Deployment replaced the task"
            )
        for task in fresh[want:]:
            backend.stop_task(
                service.cluster_name, task.task_arn, "Scaling activity initiated by service"
            )
        _report_counts(service, tasks)

    def note_exit(self, task: Task, ran_seconds: float) -> None:
        """Back off restarting a service whose tasks keep dying young, as ECS throttles."""
        if not task.group.startswith("service:"):
            return
        state = self._state(task.cluster_name, task.group)
        if ran_seconds < QUICK_EXIT_SECONDS:
            state.quick_failures += 1
        else:
            state.quick_failures = 1
        delay = 0.0 if state.quick_failures <= 1 else 2.0 ** (state.quick_failures - 2)
        state.next_start = time.monotonic() + min(delay, self.settings.restart_backoff_max)

    def restart_all(self) -> list[str]:
        """Replace every service's tasks one by one (new code); the services' names."""
        names = []
        for backend in backends():
            for service in list(backend.services.values()):
                state = self._state(service.cluster_name, f"service:{service.name}")
                state.restart_after = datetime.now(UTC)
                names.append(service.name)
        return names

    def _state(self, cluster: str, group: str) -> ServiceState:
        with self._lock:
            return self._services.setdefault((cluster, group), ServiceState())

    def _draining(self, backend: EC2ContainerServiceBackend, cluster: str, group: str) -> bool:
        """Whether a stopped task of the service still has a running process."""
        tasks = backend.tasks.get(cluster, {}).copy().values()
        return any(
            t.group == group and t.desired_status == "STOPPED" and self._is_running(t.id)
            for t in tasks
        )

    def _start_tasks(
        self,
        backend: EC2ContainerServiceBackend,
        service: Service,
        taskdef: str,
        count: int,
        state: ServiceState,
    ) -> None:
        deployment = (service.deployments or [{}])[0].get("id", "ecs-svc/local")
        try:
            started = backend.run_task(
                cluster_str=service.cluster_name,
                task_definition_str=taskdef,
                count=count,
                overrides=None,
                started_by=deployment,
                tags=None,
                launch_type="FARGATE",
                networking_configuration=service.network_configuration or None,
                group=f"service:{service.name}",
            )
        except Exception as exc:
            self._warn_once(state, f"service {service.name} cannot start tasks: {exc}")
            state.next_start = time.monotonic() + self.settings.restart_backoff_max
            return
        self._record_started(service, started)
        self._wake()

    def _warn_once(self, state: ServiceState, message: str) -> None:
        if state.warned != message:
            self._console.line("ecs", message)
            state.warned = message

    def _record_started(self, service: Service, started: list[Task]) -> None:
        """The console line and the service event ECS writes for new tasks."""
        ids = ", ".join(t.id[:8] for t in started)
        self._console.line(
            "ecs", f"service {service.name} has started {len(started)} task(s): {ids}"
        )
        service.events.insert(
            0,
            {
                "id": started[0].id if started else "",
                "createdAt": datetime.now(UTC),
                "message": f"(service {service.name}) has started {len(started)} tasks: ({ids}).",
            },
        )


def _report_counts(service: Service, tasks: list[Task]) -> None:
    running = sum(1 for t in tasks if t.last_status == "RUNNING")
    service.running_count = running
    service.pending_count = max(0, len(tasks) - running)
    if service.deployments:
        deployment = service.deployments[0]
        deployment["runningCount"] = running
        deployment["pendingCount"] = service.pending_count
        deployment["desiredCount"] = service.desired_count
        done = running >= int(service.desired_count or 0)
        deployment["rolloutState"] = "COMPLETED" if done else "IN_PROGRESS"
