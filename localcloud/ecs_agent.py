"""ECS agent: runs the tasks recorded in moto's ECS control plane as local processes.

Like the real agent, it watches the control plane (moto's ECS models, in this process),
starts a process for every new task, reports RUNNING and then STOPPED with the container's
exit code, stops the process on StopTask and keeps every service at its desired count.

One moto seam: ``EC2ContainerServiceBackend.stop_task`` marks a task STOPPED at once; while
the agent runs it is wrapped so a task the agent runs stays ``DEACTIVATING`` (desired
STOPPED) until its process has really exited, as on AWS.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moto.ecs.models import (
    Container,
    EC2ContainerServiceBackend,
    Service,
    Task,
    ecs_backends,
)

from localcloud.console import Console
from localcloud.cwlogs import LogStreamWriter
from localcloud.procs import Child, aws_environment, base_environment
from localcloud.server import ECS_TASK_MANUAL
from localcloud.settings import ENDPOINT_CONTAINER_PORT, LocalCloudSettings

ESSENTIAL_EXITED = "Essential container in task exited"
USER_STOPPED = "Task stopped by user"
SHUTDOWN = "Task stopped: the local cloud is shutting down"
QUICK_EXIT_SECONDS = 10.0

_original_stop_task = EC2ContainerServiceBackend.stop_task
_active: EcsAgent | None = None


@dataclass(frozen=True)
class ContainerLaunch:
    """What the agent knows about one container it is about to start."""

    task_id: str
    name: str
    command: list[str]
    environment: dict[str, str]
    port: int | None
    stop_timeout: float
    essential: bool = True
    log_group: str | None = None
    log_stream_prefix: str | None = None


CommandFor = Callable[[ContainerLaunch], list[str]]


def service_command(launch: ContainerLaunch) -> list[str]:
    """The image's entrypoint (``python -m service``) plus the container's command."""
    return [sys.executable, "-m", "service", *launch.command]


def docker_exit_code(code: int) -> int:
    """Docker reports a signal death as 128 + signal number."""
    return 128 - code if code < 0 else code


@dataclass
class _TaskRun:
    task: Task
    backend: EC2ContainerServiceBackend
    launches: list[ContainerLaunch]
    children: dict[str, Child] = field(default_factory=dict)
    wake: threading.Event = field(default_factory=threading.Event)
    stop_requested: bool = False
    grace_cap: float | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class _ServiceState:
    quick_failures: int = 0
    next_start: float = 0.0
    warned: str = ""
    restart_after: datetime | None = None


def _newer(task: Task, state: _ServiceState) -> bool:
    """Started after the last restart asked for (a task not yet started counts as new)."""
    started = getattr(task, "started_at", None)
    return state.restart_after is None or started is None or started >= state.restart_after


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
        self._command_for = command_for
        self._runs: dict[str, _TaskRun] = {}
        self._seen: set[str] = set()
        self._services: dict[tuple[str, str], _ServiceState] = {}
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
            self._request_stop(run, SHUTDOWN, grace_cap=cap)
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
                task.last_status = "DEACTIVATING"
                task.stopping_at = datetime.now(UTC)
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
            return {tid: [c.pid for c in run.children.values()] for tid, run in self._runs.items()}

    def _loop(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # the agent must outlive one bad resource
                self._console.line("ecs", f"agent error: {type(exc).__name__}: {exc}")
            self._wake_event.wait(self.settings.agent_poll_seconds)
            self._wake_event.clear()

    def sync_once(self) -> None:
        """One pass: start new tasks, stop stopped ones, reconcile services."""
        for backend in _backends():
            for task in _tasks(backend):
                self._sync_task(backend, task)
            for service in list(backend.services.values()):
                self._reconcile(backend, service)

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
            self._request_stop(run, task.stopped_reason or USER_STOPPED)

    def _launch(self, backend: EC2ContainerServiceBackend, task: Task) -> None:
        task.last_status = "PENDING"
        if getattr(task, "created_at", None) is None:
            task.created_at = datetime.now(UTC)  # moto records no createdAt for RunTask
        try:
            taskdef = backend.describe_task_definition(task.task_definition_arn)
            launches = [self._container_launch(task, d) for d in taskdef.container_definitions]
        except Exception as exc:
            self._finish(task, {}, f"CannotPullContainerError: {exc}", "TaskFailedToStart")
            self._note_service_exit(task, 0.0)
            return
        run = _TaskRun(task, backend, launches)
        _ensure_containers(task, launches)
        with self._lock:
            self._runs[task.id] = run
        try:
            for launch in launches:
                run.children[launch.name] = self._spawn(run, launch)
        except OSError as exc:
            for child in run.children.values():
                child.kill()
            with self._lock:
                self._runs.pop(task.id, None)
            self._finish(task, {}, f"CannotStartContainerError: {exc}", "TaskFailedToStart")
            self._note_service_exit(task, 0.0)
            return
        task.last_status = "RUNNING"
        task.started_at = datetime.now(UTC)
        for container in task.containers:
            container.last_status = "RUNNING"
        thread = threading.Thread(target=self._supervise, args=(run,), daemon=True)
        self._supervisors.add(thread)
        thread.start()

    def _container_launch(self, task: Task, definition: dict[str, Any]) -> ContainerLaunch:
        name = definition.get("name", "container")
        override = next(
            (
                o
                for o in (task.overrides or {}).get("containerOverrides", [])
                if o.get("name") == name
            ),
            {},
        )
        env = {e["name"]: str(e.get("value", "")) for e in definition.get("environment") or []}
        env.update({e["name"]: str(e.get("value", "")) for e in override.get("environment") or []})
        ports = [m.get("containerPort") for m in definition.get("portMappings") or []]
        options = (definition.get("logConfiguration") or {}).get("options") or {}
        return ContainerLaunch(
            task_id=task.id,
            name=name,
            command=list(override.get("command") or definition.get("command") or []),
            environment=env,
            port=int(ports[0]) if ports and ports[0] else None,
            stop_timeout=float(definition.get("stopTimeout") or self.settings.default_stop_timeout),
            essential=definition.get("essential", True) not in (False, "false"),
            log_group=options.get("awslogs-group"),
            log_stream_prefix=options.get("awslogs-stream-prefix"),
        )

    def _host_port(self, container_port: int) -> int:
        """The endpoint's port on this machine (tasks share the host's network here)."""
        mapped = self.settings.endpoint_port
        return mapped if mapped and container_port == ENDPOINT_CONTAINER_PORT else container_port

    def _spawn(self, run: _TaskRun, launch: ContainerLaunch) -> Child:
        env = base_environment()
        env.update(self.settings.extra_env)
        env.update(launch.environment)
        env.update(aws_environment(self.settings.endpoint_url, run.task.region_name))
        env["HOST"] = self.settings.bind
        if launch.port is not None:
            env["PORT"] = str(self._host_port(launch.port))
        writer = self._log_writer(run.task, launch)
        return Child(
            self._command_for(launch),
            name=f"ecs:{run.task.id[:8]} {launch.name}",
            console=self._console,
            env=env,
            cwd=self.settings.repo_root,
            on_line=writer.write if writer else None,
            on_exit=lambda _code: run.wake.set(),
        )

    def _log_writer(self, task: Task, launch: ContainerLaunch) -> LogStreamWriter | None:
        if not launch.log_group:
            return None
        prefix = f"{launch.log_stream_prefix}/" if launch.log_stream_prefix else ""
        stream = f"{prefix}{launch.name}/{task.id}"
        return LogStreamWriter(task._account_id, task.region_name, launch.log_group, stream)

    def _request_stop(self, run: _TaskRun, reason: str, grace_cap: float | None = None) -> None:
        run.grace_cap = grace_cap
        run.stop_requested = True
        if not run.task.stopped_reason:
            run.task.stopped_reason = reason
        run.wake.set()

    def _supervise(self, run: _TaskRun) -> None:
        """Wait for an essential container to exit or a stop; then stop the rest and report."""
        essential = {launch.name for launch in run.launches if launch.essential}
        while True:
            run.wake.wait()
            run.wake.clear()
            exited = [
                n for n, c in run.children.items() if n in essential and c.returncode is not None
            ]
            if exited or run.stop_requested:
                break
        run.task.last_status = "DEACTIVATING"
        run.task.stopping_at = datetime.now(UTC)
        cap = run.grace_cap if run.grace_cap is not None else float("inf")
        grace = {launch.name: min(launch.stop_timeout, cap) for launch in run.launches}
        stoppers = [
            threading.Thread(target=child.stop, args=(grace[name],), daemon=True)
            for name, child in run.children.items()
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        codes = {name: docker_exit_code(child.wait() or 0) for name, child in run.children.items()}
        if run.stop_requested:
            reason = run.task.stopped_reason or USER_STOPPED
            stop_code = (
                "ServiceSchedulerInitiated"
                if run.task.group.startswith("service:")
                else "UserInitiated"
            )
        else:
            reason, stop_code = ESSENTIAL_EXITED, "EssentialContainerExited"
            self._note_service_exit(run.task, time.monotonic() - run.started)
        with self._lock:
            self._runs.pop(run.task.id, None)
            self._finish(run.task, codes, reason, stop_code)
        self._supervisors.discard(threading.current_thread())
        self._wake_event.set()

    def _finish(
        self,
        task: Task,
        codes: dict[str, int],
        reason: str,
        stop_code: str,
    ) -> None:
        """Report the task STOPPED, with each container's exit code, as DescribeTasks shows it."""
        for container in task.containers:
            container.last_status = "STOPPED"
            if container.name in codes:
                container.exitCode = codes[container.name]
        if not task.stopped_reason:
            task.stopped_reason = reason
        task.stop_code = stop_code
        task.stopped_at = datetime.now(UTC)
        task.desired_status = "STOPPED"
        task.last_status = "STOPPED"
        summary = ", ".join(f"{n} exit {c}" for n, c in codes.items()) or reason
        self._console.line("ecs", f"task {task.id[:8]} STOPPED ({summary})")

    def _note_service_exit(self, task: Task, ran_seconds: float) -> None:
        """Back off restarting a service whose tasks keep dying young, as ECS throttles."""
        if not task.group.startswith("service:"):
            return
        state = self._service_state(task.cluster_name, task.group)
        if ran_seconds < QUICK_EXIT_SECONDS:
            state.quick_failures += 1
        else:
            state.quick_failures = 1
        delay = 0.0 if state.quick_failures <= 1 else 2.0 ** (state.quick_failures - 2)
        state.next_start = time.monotonic() + min(delay, self.settings.restart_backoff_max)

    def _service_state(self, cluster: str, group: str) -> _ServiceState:
        with self._lock:
            return self._services.setdefault((cluster, group), _ServiceState())

    def _reconcile(self, backend: EC2ContainerServiceBackend, service: Service) -> None:
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
        state = self._service_state(service.cluster_name, group)
        fresh = [t for t in tasks if t.task_definition_arn == current and _newer(t, state)]
        stale = [t for t in tasks if t not in fresh]
        if self._draining(backend, service.cluster_name, group):
            pass  # one at a time: a stopped task still holds the host port
        elif len(fresh) + len(stale) < want and time.monotonic() >= state.next_start:
            self._start_service_tasks(backend, service, current, want - len(tasks), state)
        elif stale:
            backend.stop_task(
                service.cluster_name, stale[0].task_arn, "Deployment replaced the task"
            )
        for task in fresh[want:]:
            backend.stop_task(
                service.cluster_name, task.task_arn, "Scaling activity initiated by service"
            )
        _report_counts(service, tasks)

    def restart_services(self) -> list[str]:
        """Replace every service's tasks one by one (new code); the services' names."""
        names = []
        for backend in _backends():
            for service in list(backend.services.values()):
                state = self._service_state(service.cluster_name, f"service:{service.name}")
                state.restart_after = datetime.now(UTC)
                names.append(service.name)
        self.wake()
        return names

    def _draining(self, backend: EC2ContainerServiceBackend, cluster: str, group: str) -> bool:
        """Whether a stopped task of the service still has a running process."""
        tasks = backend.tasks.get(cluster, {}).copy().values()
        return any(
            t.group == group and t.desired_status == "STOPPED" and self.is_running(t.id)
            for t in tasks
        )

    def _start_service_tasks(
        self,
        backend: EC2ContainerServiceBackend,
        service: Service,
        taskdef: str,
        count: int,
        state: _ServiceState,
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
            message = f"service {service.name} cannot start tasks: {exc}"
            if state.warned != message:
                self._console.line("ecs", message)
                state.warned = message
            state.next_start = time.monotonic() + self.settings.restart_backoff_max
            return
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
        self.wake()


def _backends() -> Iterator[EC2ContainerServiceBackend]:
    for _account, regions in list(ecs_backends.items()):
        yield from list(regions.values())


def _tasks(backend: EC2ContainerServiceBackend) -> Iterator[Task]:
    for tasks in list(backend.tasks.values()):
        yield from list(tasks.values())


def _ensure_containers(task: Task, launches: list[ContainerLaunch]) -> None:
    """moto models only the first container of a task; add the others, named."""
    names = {container.name for container in task.containers}
    template = task.containers[0] if task.containers else None
    for launch in launches:
        if launch.name in names or template is None:
            continue
        extra = Container.__new__(Container)
        extra.__dict__.update(template.__dict__)
        extra.name = launch.name
        task.containers.append(extra)


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
