"""Serve the app with waitress on every core, and stop gracefully.

The parent binds one listening socket and forks WORKERS processes that each run
waitress (THREADS request threads) on that inherited socket, so no port juggling
is needed; a process holding more connections than another leaves new ones to it
(ConnectionCounts), so a burst of connections is spread over all of them, and one
holding two more ends a keep-alive connection after its response so the client comes
back to the other. Each process has its own ModelStore, which polls MODEL_URI for a new
bundle. GETs, and small POSTs that have proved fast, run on the process's event-loop
thread, the rest on its THREADS request threads (LoopDispatcher). Every override of
waitress's internals lives in service/waitress_hooks.py; this module is the process
life cycle.

The parent only supervises: it restarts a process that dies, and on SIGTERM or
SIGINT forwards SIGTERM to every process. A process then closes its listener,
finishes the requests in flight (their responses say `Connection: close`),
closes idle connections and exits 0. The parent kills what is left after
KILL_AFTER_SECONDS, so the whole stop fits the 30 s that ECS and SageMaker
allow between SIGTERM and SIGKILL.
"""

import contextlib
import gc
import logging
import os
import select
import signal
import socket
import threading
import time
from collections.abc import Callable

import orjson

from service import metrics
from service.artifacts import ModelStore
from service.settings import ServeSettings
from service.waitress_hooks import (
    DRAIN_SECONDS,
    AcceptBalance,
    ConnectionCounts,
    ProcessServer,
)
from service.web import create_app

log = logging.getLogger(__name__)

KILL_AFTER_SECONDS = 25.0
QUEUE_LOG_SECONDS = 10.0
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
YOUNG_OBJECTS = 20_000  # the cyclic collector's first threshold once a model is loaded


def run_server(settings: ServeSettings) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code (0 after a clean stop)."""
    try:
        listener = bind(settings.host, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (set HOST/PORT)", settings.host, settings.port, exc)
        return 1
    shared = metrics.Metrics(settings.workers)
    if not hasattr(os, "fork"):
        log.warning("this platform cannot fork: serving with one process")
        return serve_process(listener, settings, shared.slot(0), report=_log_ready(settings))
    return Supervisor(listener, settings, shared).run()


def bind(host: str, port: int) -> socket.socket:
    """The one listening socket every server process accepts on."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    listener.bind(address)
    listener.listen(1024)
    listener.set_inheritable(True)
    return listener


class QueueDepthSummary(logging.Filter):
    """waitress warns "Task queue depth is N" for every request that waits for a free
    thread: under load, a log line per request, written while the dispatcher's lock is
    held. Let one through per interval and count the others in it."""

    def __init__(self, interval: float = QUEUE_LOG_SECONDS) -> None:
        super().__init__()
        self.interval = interval
        self.next_line = 0.0
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self.next_line:
            self.suppressed += 1
            return False
        if self.suppressed:
            record.msg = f"{record.msg} (and %d times more since the last such line)"
            record.args = (*(record.args or ()), self.suppressed)
        self.next_line = now + self.interval
        self.suppressed = 0
        return True


def serve_process(
    listener: socket.socket,
    settings: ServeSettings,
    recorder: metrics.SlotMetrics,
    report: Callable[[ModelStore], None],
    parent: int | None = None,
    balance: AcceptBalance | None = None,
) -> int:
    """One server process: its own ModelStore and waitress, until told to stop.

    The model loads in the background; the process accepts connections once the
    first attempt is over (then /ping says 200, or 503 and why), so a restarted
    process never answers 503 while its siblings have the model. It calls
    `report` at that moment.
    """
    store = ModelStore(settings.model_uri, settings.model_poll_seconds, on_swap=settle_heap)
    app = create_app(store, settings, recorder)
    process = ProcessServer(app, listener, settings, balance)
    queue_log = logging.getLogger("waitress.queue")
    if not any(isinstance(f, QueueDepthSummary) for f in queue_log.filters):
        queue_log.addFilter(QueueDepthSummary())
    for number in STOP_SIGNALS:
        signal.signal(number, process.stop)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {*STOP_SIGNALS, signal.SIGCHLD})
    threading.Thread(target=store.start, name="model-load", daemon=True).start()
    reported = False

    def tick() -> None:
        nonlocal reported
        recorder.sync_store(store)
        if not reported and (store.current is not None or store.last_error is not None):
            reported = True
            process.open()
            report(store)
        if parent is not None and os.getppid() != parent:
            log.warning("the supervising process is gone: stopping")
            process.stop()

    process.serve(tick)
    finished = process.drain()
    if not finished:
        log.warning("stopped before every request finished (drain limit %ss)", DRAIN_SECONDS)
    store.stop()
    return 0


def settle_heap(_bundle: object = None) -> None:
    """Once a model is loaded: collect, then leave every object alive now (the libraries,
    the model) out of the cyclic garbage collector's later passes.

    A full collection walks every tracked object: ~150,000 in a server with pandas and
    scikit-learn loaded, 50-90 ms during which the process answers nothing; it comes every
    few seconds under load and was the 60-80 ms stalls in the 1,000-row requests' tail
    (bench/RESULTS.md). Frozen objects are still freed by reference counting. Each load
    unfreezes and collects first, so cycles of a model that was still referenced at the
    last load (by requests in flight) are collected at the next one: at most one old
    model's cyclic garbage waits, never an accumulation.

    The youngest generation is then collected after YOUNG_OBJECTS new objects instead of
    700: a 1,000-row JSON request holds a list per row while it decodes, which set off
    one young collection per request (0.1 ms), although reference counting frees them.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_OBJECTS, *gc.get_threshold()[1:])


def _log_ready(settings: ServeSettings) -> Callable[[ModelStore], None]:
    def report(store: ModelStore) -> None:
        log.info("%s", _startup_line(settings, 1, _model_text(store)))

    return report


def _model_text(store: ModelStore) -> str:
    bundle = store.current
    if bundle is None:
        return f"no model loaded yet ({store.last_error})"
    return f"model {bundle.name} version {bundle.version}"


def _startup_line(settings: ServeSettings, workers: int, model: str) -> str:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    batching = (
        f"adaptive batching up to {settings.batch_max_rows} rows "
        f"(a queued request waits at most {settings.batch_wait_ms:g} ms), "
        if settings.batch_max_rows
        else ""
    )
    return (
        f"serving http://{host}:{settings.port} with {workers} "
        f"process{'es' if workers != 1 else ''} x {settings.threads} threads, {batching}{model}"
    )


# -- the supervising parent ------------------------------------------------------------


class Supervisor:
    """Starts one process per slot, restarts those that die, stops them all on a signal."""

    def __init__(
        self, listener: socket.socket, settings: ServeSettings, shared: metrics.Metrics
    ) -> None:
        self.listener = listener
        self.settings = settings
        self.shared = shared
        self.connections = ConnectionCounts(settings.workers)
        self.children: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.restart_at: dict[int, float] = {}
        self.ready: dict[int, str] = {}
        self.announced = False
        self.stop_signals = 0
        self._status = b""

    def run(self) -> int:
        self._wake_read, self._wake_write = os.pipe()
        self._status_read, self._status_write = os.pipe()
        for fd in (self._wake_read, self._wake_write, self._status_read):
            os.set_blocking(fd, False)
        for number in STOP_SIGNALS:
            signal.signal(number, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        try:
            for slot in range(self.settings.workers):
                self._spawn(slot)
            while not self.stop_signals:
                self._wait(self._next_timeout())
                self._reap()
                self._restart_due()
            return self._shutdown()
        finally:
            signal.set_wakeup_fd(-1)
            for fd in (self._wake_read, self._wake_write, self._status_read, self._status_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.listener.close()

    def _on_stop_signal(self, number: int, _frame: object) -> None:
        self.stop_signals += 1
        if self.stop_signals > 1:
            for pid in list(self.children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _spawn(self, slot: int) -> None:
        blocked = {*STOP_SIGNALS, signal.SIGCHLD}
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(slot)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
        self.children[pid] = slot
        self.started[slot] = time.monotonic()

    def _child(self, slot: int) -> None:
        """Runs in the forked process and never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self._wake_read, self._wake_write, self._status_read):
                os.close(fd)
            status = self._status_write

            def report(store: ModelStore) -> None:
                model = _model_text(store)[:300]
                line = orjson.dumps({"slot": slot, "pid": os.getpid(), "model": model})
                os.write(status, line + b"\n")

            code = serve_process(
                self.listener,
                self.settings,
                self.shared.slot(slot),
                report,
                os.getppid(),
                self.connections.balance(slot),
            )
        except BaseException:
            log.exception("server process %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def _wait(self, timeout: float) -> None:
        try:
            readable, _, _ = select.select([self._wake_read, self._status_read], [], [], timeout)
        except InterruptedError:
            return
        if self._wake_read in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_read, 512):
                    pass
        if self._status_read in readable:
            self._read_status()

    def _read_status(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self._status_read, 4096):
                self._status += chunk
        *lines, self._status = self._status.split(b"\n")
        for line in lines:
            message = orjson.loads(line)
            self.ready[message["slot"]] = message["model"]
            if self.announced:
                log.info("server process %d (slot %d) ready", message["pid"], message["slot"])
        if not self.announced and len(self.ready) >= self.settings.workers:
            self.announced = True
            log.info("%s", _startup_line(self.settings, self.settings.workers, self.ready[0]))

    def _next_timeout(self) -> float:
        if not self.restart_at:
            return 5.0
        return max(0.0, min(self.restart_at.values()) - time.monotonic())

    def _reap(self) -> list[int]:
        """Collect exited children; schedule restarts unless we are stopping."""
        gone = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            gone.append(slot)
            self.shared.clear(slot)
            self.connections.clear(slot)
            self.ready.pop(slot, None)
            if not self.stop_signals:
                self._schedule_restart(slot, pid, status)
        return gone

    def _schedule_restart(self, slot: int, pid: int, status: int) -> None:
        lived = time.monotonic() - self.started[slot]
        failures = 0 if lived > STABLE_SECONDS else self.failures.get(slot, 0) + 1
        self.failures[slot] = failures
        delay = (
            RESTART_BACKOFF_SECONDS[min(failures, len(RESTART_BACKOFF_SECONDS)) - 1]
            if failures
            else 0.0
        )
        log.error(
            "server process %d (slot %d) %s after %.1fs; restarting in %.1fs",
            pid,
            slot,
            _exit_text(status),
            lived,
            delay,
        )
        self.restart_at[slot] = time.monotonic() + delay

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.restart_at.items()):
            if when <= now:
                del self.restart_at[slot]
                self._spawn(slot)

    def _shutdown(self) -> int:
        log.info("stopping: %d server processes finish their requests", len(self.children))
        self.listener.close()
        deadline = time.monotonic() + KILL_AFTER_SECONDS
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        while self.children and time.monotonic() < deadline:
            self._wait(min(0.5, max(0.0, deadline - time.monotonic())))
            self._reap()
        for pid in list(self.children):
            log.warning("server process %d did not stop in time: killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            pid, _ = os.waitpid(-1, 0)
            self.children.pop(pid, None)
        log.info("stopped")
        return 0


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"
