"""The AWS API: moto's server in this process, so the other components can reach its models."""

from __future__ import annotations

import logging
import socket
import threading

from moto.moto_api import state_manager
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from localcloud import (
    s3_etags,
    s3_events,
    s3_multipart,
    s3_ranges,
    s3_writes,
    stack_calls,
    stack_updates,
)
from localcloud.console import Console
from localcloud.settings import LocalCloudSettings

# The ECS agent, not the passage of DescribeTasks calls, decides a task's status.
ECS_TASK_MANUAL = {"progression": "manual", "times": 10**12}
_LOGGERS = ("werkzeug", "moto")
# What the local cloud changes in moto while it runs; stack_updates also needs the URL.
MOTO_MENDS = (s3_etags, s3_events, s3_ranges, s3_multipart, s3_writes, stack_calls)


class ServerStartError(RuntimeError):
    """A server of the local cloud (the AWS API, the endpoint) cannot have its port."""


class MotoServer:
    """moto's server on a loopback port, like ``ThreadedMotoServer`` but closing its socket."""

    def __init__(self, settings: LocalCloudSettings, console: Console | None = None) -> None:
        self.settings = settings
        self._console = console or Console()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._handler: logging.Handler | None = None
        self._saved_loggers: dict[str, tuple[int, bool]] = {}

    @property
    def endpoint_url(self) -> str:
        return self.settings.endpoint_url

    def start(self) -> None:
        """Bind, serve in a thread and route moto's logging to the console."""
        state_manager.set_transition("ecs::task", ECS_TASK_MANUAL)
        app = DomainDispatcherApplication(create_backend_app)
        with self._listen() as listener:
            self._server = make_server(
                self.settings.bind,
                self.settings.port,
                app,
                True,
                request_handler=MotoRequestHandler,
                fd=listener.fileno(),
            )
        self._attach_logging()
        for mend in MOTO_MENDS:
            mend.patch()
        stack_updates.patch(self.endpoint_url)
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()
        self._console.line("moto", f"AWS API on {self.endpoint_url}")

    def _listen(self) -> socket.socket:
        """Bind here, not in werkzeug, which exits the process when the port is taken."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.settings.bind, self.settings.port))
            listener.listen(128)
        except OSError as exc:
            listener.close()
            raise ServerStartError(
                f"cannot listen on {self.settings.bind}:{self.settings.port} ({exc.strerror}); "
                "is another local cloud or LocalStack running? Choose another port with --port"
            ) from exc
        return listener

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)
        self._detach_logging()
        for mend in MOTO_MENDS:
            mend.unpatch()
        stack_updates.unpatch()
        state_manager.unset_transition("ecs::task")
        self._server = self._thread = None

    def reset(self) -> None:
        """Forget every resource (between tests), keeping the ECS setting."""
        from moto.moto_api._internal.models import moto_api_backend

        moto_api_backend.reset()
        state_manager.set_transition("ecs::task", ECS_TASK_MANUAL)

    def _attach_logging(self) -> None:
        self._handler = self._console.handler("moto")
        self._handler.addFilter(_OncePerMessage())
        level = logging.INFO if self.settings.verbose else logging.WARNING
        for name in _LOGGERS:
            logger = logging.getLogger(name)
            self._saved_loggers[name] = (logger.level, logger.propagate)
            logger.addHandler(self._handler)
            logger.setLevel(level)
            logger.propagate = False

    def _detach_logging(self) -> None:
        if self._handler is None:
            return
        for name, (level, propagate) in self._saved_loggers.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self._handler)
            logger.setLevel(level)
            logger.propagate = propagate
        self._handler = None


class _OncePerMessage(logging.Filter):
    """moto repeats its warnings (a stack's unsupported resources at every read): say each once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if message in self._seen:
            return False
        self._seen.add(message)
        return True
