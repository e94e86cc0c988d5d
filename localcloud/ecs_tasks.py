"""ECS task bookkeeping in moto's control plane: what a task's containers are to run, and
the status transitions (PENDING, RUNNING, DEACTIVATING, STOPPED) DescribeTasks reports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from moto.ecs.models import Container, EC2ContainerServiceBackend, Task, ecs_backends

from localcloud.console import Console

ESSENTIAL_EXITED = "Essential container in task exited"
USER_STOPPED = "Task stopped by user"
SHUTDOWN = "Task stopped: the local cloud is shutting down"


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


def docker_exit_code(code: int) -> int:
    """Docker reports a signal death as 128 + signal number."""
    return 128 - code if code < 0 else code


def backends() -> Iterator[EC2ContainerServiceBackend]:
    for _account, regions in list(ecs_backends.items()):
        yield from list(regions.values())


def tasks(backend: EC2ContainerServiceBackend) -> Iterator[Task]:
    for by_arn in list(backend.tasks.values()):
        yield from list(by_arn.values())


def container_launch(
    task: Task, definition: dict[str, Any], default_stop_timeout: float
) -> ContainerLaunch:
    """One container definition with the task's overrides applied."""
    name = definition.get("name", "container")
    override = next(
        (o for o in (task.overrides or {}).get("containerOverrides", []) if o.get("name") == name),
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
        stop_timeout=float(definition.get("stopTimeout") or default_stop_timeout),
        essential=definition.get("essential", True) not in (False, "false"),
        log_group=options.get("awslogs-group"),
        log_stream_prefix=options.get("awslogs-stream-prefix"),
    )


def mark_pending(task: Task) -> None:
    task.last_status = "PENDING"
    if getattr(task, "created_at", None) is None:
        task.created_at = datetime.now(UTC)  # moto records no createdAt for RunTask


def ensure_containers(task: Task, launches: list[ContainerLaunch]) -> None:
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


def mark_running(task: Task) -> None:
    task.last_status = "RUNNING"
    task.started_at = datetime.now(UTC)
    for container in task.containers:
        container.last_status = "RUNNING"


def mark_deactivating(task: Task) -> None:
    task.last_status = "DEACTIVATING"
    task.stopping_at = datetime.now(UTC)


def end_reason(task: Task, stop_requested: bool) -> tuple[str, str]:
    """The stopped reason and stop code of a task whose processes have ended."""
    if not stop_requested:
        return ESSENTIAL_EXITED, "EssentialContainerExited"
    by_service = task.group.startswith("service:")
    return task.stopped_reason or USER_STOPPED, (
        "ServiceSchedulerInitiated" if by_service else "UserInitiated"
    )


def finish(
    console: Console, task: Task, codes: dict[str, int], reason: str, stop_code: str
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
    console.line("ecs", f"task {task.id[:8]} STOPPED ({summary})")
