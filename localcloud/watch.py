"""``up --watch``: reload what changed under ``service/``, ``lambda/`` or ``infra/``.

What ``sam sync --watch`` gives people on AWS: a change to ``service/`` replaces the
endpoint's tasks one by one (workers start with the new code at their next task), a change
to ``lambda/`` gives the function its new package and retires its warm environments, a
change to ``infra/`` re-applies the template as a stack update.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from watchfiles import PythonFilter, watch

from localcloud.deploy import DeployError
from localcloud.redeploy import redeploy, update_code

if TYPE_CHECKING:
    from localcloud.cloud import LocalCloud

AREAS = ("service", "lambda", "infra")
NAME = "watch"


def changed_areas(root: Path, paths: list[str]) -> set[str]:
    """Which of ``AREAS`` the changed paths are in."""
    found = set()
    for path in paths:
        try:
            parts = Path(path).resolve().relative_to(root).parts
        except ValueError:
            continue
        if parts and parts[0] in AREAS:
            found.add(parts[0])
    return found


class Watcher:
    """Start/stop component: a thread waiting on file changes."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.cloud = cloud
        self._root = cloud.settings.repo_root
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        folders = [str(self._root / area) for area in AREAS if (self._root / area).is_dir()]
        self._thread = threading.Thread(target=self._loop, args=(folders,), name=NAME, daemon=True)
        self._thread.start()
        self._say(f"watching {', '.join(AREAS)} for changes")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _loop(self, folders: list[str]) -> None:
        extra = PythonFilter(extra_extensions=(".yaml", ".yml", ".json"))
        for changes in watch(*folders, watch_filter=extra, stop_event=self._stop, rust_timeout=500):
            paths = [path for _change, path in changes]
            params = self.cloud.settings.params
            edited = any(Path(path).resolve() == params.resolve() for path in paths)
            try:
                self.reload(changed_areas(self._root, paths), params if edited else None)
            except Exception as exc:  # one failed reload must not end the watch
                self._say(f"reload failed: {type(exc).__name__}: {exc}")

    def reload(self, areas: set[str], params: Path | None = None) -> None:
        """Reload the given areas, in the order code, then template (with ``params`` when
        the cloud's parameter file was edited)."""
        cloud = self.cloud
        stack = cloud.stack
        if stack is None:
            return
        if "lambda" in areas:
            function = stack.outputs.get("FunctionName", "")
            if update_code(
                cloud.session, stack.outputs, stack.parameters, cloud.settings.lambda_source
            ):
                retired = cloud.lambdas.retire(function)
                self._say(
                    f"lambda/ changed: new code for {function}, {retired} warm environment(s) retired"
                )
        if "service" in areas:
            names = cloud.agent.restart_services()
            self._say(
                f"service/ changed: replacing the tasks of {', '.join(names) or 'no service'}"
            )
        if "infra" in areas:
            self._say("infra/ changed: updating the stack")
            try:
                redeploy(cloud.settings, cloud.session, params, self._say)
            except DeployError as exc:
                self._say(str(exc))

    def _say(self, text: str) -> None:
        self.cloud.console.line(NAME, text)
