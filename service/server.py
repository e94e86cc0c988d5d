"""Serve the app with waitress on every core, and stop gracefully.

The parent binds one listening socket and forks WORKERS processes that each run
waitress (THREADS request threads) on that inherited socket, so no port juggling
is needed; a process holding more connections than another leaves new ones to it
(ConnectionCounts), so a burst of connections is spread over all of them. Each
process has its own ModelStore, which polls MODEL_URI for a new bundle. Small POSTs
that have proved fast run on the process's event-loop thread, the rest on its
THREADS request threads (LoopDispatcher).

The parent only supervises: it restarts a process that dies, and on SIGTERM or
SIGINT forwards SIGTERM to every process. A process then closes its listener,
finishes the requests in flight (their responses say `Connection: close`),
closes idle connections and exits 0. The parent kills what is left after
KILL_AFTER_SECONDS, so the whole stop fits the 30 s that ECS and SageMaker
allow between SIGTERM and SIGKILL.
"""

import contextlib
import logging
import mmap
import os
import select
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask

from service import metrics
from service.artifacts import ModelStore
from service.errors import InputError, PayloadTooLarge, ServiceError
from service.settings import ServeSettings
from service.web import create_app, error_response

log = logging.getLogger(__name__)

DRAIN_SECONDS = 20.0
KILL_AFTER_SECONDS = 25.0
TICK_SECONDS = 0.2
ACCEPT_DEFER_SECONDS = 0.005
INLINE_MAX_BYTES = 16 * 1024
INLINE_SLOW_SECONDS = 0.02
INLINE_AFTER_FAST = 4
QUEUE_LOG_SECONDS = 10.0
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_SECONDS = 30.0
CONNECTION_LIMIT = 1000
DISCARD_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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


# -- spreading connections over the processes ----------------------------------------


class ConnectionCounts:
    """Open connections per server process, in memory shared across the fork.

    Every process polls the one listener, so the first to wake takes a burst of new
    connections (wrk's 16 arrive at once) and serves them all on one core while the
    others idle. With these counts a process holding more connections than another
    leaves a new one to it. NOT_ACCEPTING marks a slot that does not accept (loading,
    stopping, gone). Create it before forking.
    """

    NOT_ACCEPTING = 1 << 62

    def __init__(self, slots: int) -> None:
        self._block = mmap.mmap(-1, 8 * slots)
        self.cells = memoryview(self._block).cast("q")
        for slot in range(slots):
            self.clear(slot)

    def clear(self, slot: int) -> None:
        self.cells[slot] = self.NOT_ACCEPTING

    def balance(self, slot: int) -> "AcceptBalance":
        return AcceptBalance(self, slot)


class AcceptBalance:
    """One process's view: publish its count, and say whether a new connection is its to take."""

    def __init__(self, counts: ConnectionCounts, slot: int) -> None:
        self.cells = counts.cells
        self.slot = slot

    def my_turn(self, mine: int) -> bool:
        """True unless another accepting process holds fewer connections."""
        self.cells[self.slot] = mine
        return mine <= min(self.cells)

    def close(self) -> None:
        self.cells[self.slot] = ConnectionCounts.NOT_ACCEPTING


# -- one server process --------------------------------------------------------------


class _Task(WSGITask):
    """Tells the client to close the connection once the process is stopping."""

    def build_response_header(self) -> bytes:
        if self.channel.server.draining:
            self.set_close_on_finish()
        return super().build_response_header()

    def write(self, data: bytes) -> None:
        """The header and the first body chunk go out in one send: one syscall, one segment."""
        channel = self.channel
        if self.wrote_header or not data:
            return super().write(data)
        channel.held = []
        try:
            super().write(data)
        finally:
            held, channel.held = channel.held, None
        channel.write_soon(b"".join(held))


class _ErrorTask(ErrorTask):
    """waitress's own refusals (oversized or unparsable requests) as our JSON errors."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            refusal: ServiceError = PayloadTooLarge(
                "the body is over the MAX_REQUEST_MB limit: split the rows into smaller "
                "requests, or use the batch transform for files"
            )
        elif error.code == 500:
            refusal = ServiceError("the server failed unexpectedly; the error is in its log")
        else:
            refusal = InputError(f"{error.reason}: {error.body}")
        response = error_response(refusal)
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(h for h in response.headers if h[0] != "Content-Length")
        self.set_close_on_finish()
        self.channel.refused = True
        self.content_length = len(response.body)
        self.write(response.body)
        path = getattr(self.request, "path", "")
        route = metrics.ROUTES.index(path) if path in metrics.ROUTES else metrics.OTHER_ROUTE
        self.channel.server.recorder.observe(route, error.code, 0.0, 0, refusal.code)


def small_post(request: Any) -> bool:
    """A parsed request whose handling may run on the event-loop thread (a request
    waitress could not parse has an error and may have no method)."""
    return (
        not request.error
        and request.command == "POST"
        and request.body_bytes_received <= INLINE_MAX_BYTES
    )


class LoopDispatcher(ThreadedTaskDispatcher):
    """Runs small POSTs on the event-loop thread once they have proved fast.

    Handing a request to a thread costs a lock, a thread wake-up, GIL switches and a
    pipe write to wake the loop again: about a third of the CPU of a one-row request.
    Once INLINE_AFTER_FAST small POSTs in a row took at most INLINE_SLOW_SECONDS each,
    the next ones run where they were read; the first slower one sends them back to
    the threads, so a slow model stalls the other connections of its process for at
    most one request. GETs (health checks) and big bodies always go to the threads.
    """

    def __init__(self, threads: int) -> None:
        super().__init__()
        self.ready: deque[HTTPChannel] = deque()
        self.fast_in_a_row = 0
        self.loop_thread = threading.get_ident()
        self.set_thread_count(threads)

    def add_task(self, task: Any) -> None:
        if (
            self.fast_in_a_row >= INLINE_AFTER_FAST
            and threading.get_ident() == self.loop_thread
            and small_post(task.requests[0])
        ):
            self.ready.append(task)
        else:
            super().add_task(task)

    def observe(self, seconds: float) -> None:
        """How long a small POST took, wherever it ran."""
        self.fast_in_a_row = self.fast_in_a_row + 1 if seconds <= INLINE_SLOW_SECONDS else 0

    def run_ready(self) -> None:
        """Serve the requests `add_task` kept for the loop (called by the loop)."""
        while self.ready:
            self.ready.popleft().service()

    def shutdown(self, cancel_pending: bool = True, timeout: float = 5) -> bool:
        while self.ready:
            self.ready.popleft().cancel()
        return super().shutdown(cancel_pending, timeout)


class _Channel(HTTPChannel):
    """waitress's channel, plus: after refusing a request it could not take (413 for a body
    over the limit, 431, 400), it half-closes and reads the rest of the client's input,
    up to DISCARD_BYTES for DISCARD_SECONDS, before closing. Closing with unread input
    makes the kernel send a reset, and a client that writes its whole body before
    reading (Python's urllib) would see that instead of the answer."""

    task_class = _Task
    error_task_class = _ErrorTask
    held: list[bytes] | None = None
    refused = False
    discard_until: float | None = None
    discard_left = 0

    def handle_close(self) -> None:
        if self.refused and self.discard_until is None and not self.total_outbufs_len:
            self.refused = False
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                return super().handle_close()
            self.will_close = False
            self.discard_until = time.monotonic() + DISCARD_SECONDS
            self.discard_left = DISCARD_BYTES
            self.server.discarding.add(self)
            return None
        self.server.discarding.discard(self)
        return super().handle_close()

    def readable(self) -> bool:
        return self.discard_until is not None or super().readable()

    def writable(self) -> bool:
        if self.discard_until is not None:
            return self.will_close
        return super().writable()

    def handle_read(self) -> None:
        if self.discard_until is None:
            return super().handle_read()
        try:
            data = self.socket.recv(1 << 16)
        except OSError:
            data = b""
        self.discard_left -= len(data)
        if not data or self.discard_left <= 0 or time.monotonic() > self.discard_until:
            self.handle_close()
        return None

    def write_soon(self, data: bytes) -> int:
        if self.held is not None:
            self.held.append(data)
            return len(data)
        return super().write_soon(data)

    def service(self) -> None:
        if not small_post(self.requests[0]):
            return super().service()
        started = time.perf_counter()
        super().service()
        self.server.task_dispatcher.observe(time.perf_counter() - started)

    def idle(self) -> bool:
        """No request half-read, running or waiting for its response to be sent."""
        return not self.requests and self.request is None and not self.total_outbufs_len


class ProcessServer:
    """waitress on the shared listener, driven by our loop so it can stop gracefully."""

    def __init__(
        self,
        app: Any,
        listener: socket.socket,
        settings: ServeSettings,
        balance: AcceptBalance | None = None,
    ) -> None:
        body_limit = int(settings.max_request_mb * 1024 * 1024)
        self.dispatcher = LoopDispatcher(settings.threads)
        self.server = create_server(
            app,
            sockets=[listener],
            _dispatcher=self.dispatcher,
            ident="model-endpoint",
            connection_limit=CONNECTION_LIMIT,
            asyncore_use_poll=True,
            # waitress buffers whole bodies before the app runs: refuse bigger ones
            # while reading (headroom for chunk framing; the app enforces the exact limit)
            max_request_body_size=body_limit + max(1 << 16, body_limit // 16),
            channel_timeout=getattr(settings, "timeout_seconds", 120.0),
        )
        self.server.channel_class = _Channel
        self.server.discarding = set()
        self.server.draining = False
        self.server.recorder = app.metrics
        self.server.accepting = False
        self.server.pull_trigger = self._pull_trigger
        self.stopping = False
        self.balance = balance
        self.deferred_at: float | None = None
        self.accept_now = False
        if balance is not None:
            self._server_readable = self.server.readable
            self._server_accept = self.server.handle_accept
            self.server.readable = self._readable
            self.server.handle_accept = self._handle_accept

    def open(self) -> None:
        """Start accepting connections (until then the kernel hands them to other processes)."""
        self.server.accepting = True

    def serve(self, tick: Callable[[], None]) -> None:
        """Answer requests until `stop` is called (from a signal handler or `tick`).

        Under load poll2 returns for every socket event; `tick` still runs only every
        TICK_SECONDS, so its checks cost nothing per request.
        """
        channels = self.server._map
        next_tick = 0.0
        self.dispatcher.loop_thread = threading.get_ident()
        while not self.stopping:
            wasyncore.poll2(self._poll_timeout(), channels)
            self.dispatcher.run_ready()
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_SECONDS
                self._end_discards(now)
                tick()

    def _end_discards(self, now: float) -> None:
        """Close the channels whose client kept sending past DISCARD_SECONDS."""
        for channel in list(self.server.discarding):
            if channel.discard_until is not None and now > channel.discard_until:
                channel.handle_close()

    def stop(self, *_: object) -> None:
        self.stopping = True
        self.server.draining = True  # a response built from now on says Connection: close

    def _pull_trigger(self) -> None:
        """Wake the loop, unless the caller is the loop (it polls again next anyway)."""
        if threading.get_ident() != self.dispatcher.loop_thread:
            self.server.trigger.pull_trigger()

    def _poll_timeout(self) -> float:
        if self.deferred_at is None:
            return TICK_SECONDS
        # poll counts whole milliseconds: round up rather than spin at 0
        return max(0.001, self.deferred_at + ACCEPT_DEFER_SECONDS - time.monotonic() + 0.001)

    def _readable(self) -> bool:
        """The listener is watched unless a connection waits for a process with fewer
        connections: that one gets ACCEPT_DEFER_SECONDS to take it, then this one does."""
        self.accept_now = False
        if not self._server_readable():
            return False
        assert self.balance is not None
        if self.balance.my_turn(len(self.server.active_channels)) or self.deferred_at is None:
            self.deferred_at = None
            return True
        if time.monotonic() - self.deferred_at < ACCEPT_DEFER_SECONDS:
            return False
        self.deferred_at = None
        self.accept_now = True
        return True

    def _handle_accept(self) -> None:
        assert self.balance is not None
        if self.accept_now or self.balance.my_turn(len(self.server.active_channels)):
            self.accept_now = False
            self._server_accept()
        else:
            self.deferred_at = time.monotonic()

    def drain(self, seconds: float = DRAIN_SECONDS) -> bool:
        """Stop accepting, finish requests in flight, close idle connections. True if all done."""
        server = self.server
        server.draining = True
        if self.balance is not None:
            self.balance.close()
        wasyncore.dispatcher.close(server)
        deadline = time.monotonic() + seconds
        channels = server._map
        while server.active_channels and time.monotonic() < deadline:
            for channel in list(server.active_channels.values()):
                if channel.idle():
                    channel.handle_close()
            if server.active_channels:
                wasyncore.poll2(0.05, channels)
                self.dispatcher.run_ready()
        finished = not server.active_channels
        server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(channels)
        return finished


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
    store = ModelStore(settings.model_uri, settings.model_poll_seconds)
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
    return (
        f"serving http://{host}:{settings.port} with {workers} "
        f"process{'es' if workers != 1 else ''} x {settings.threads} threads, {model}"
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
