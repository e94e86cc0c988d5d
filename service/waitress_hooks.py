"""Everything that reaches into waitress's internals, in one place.

The server otherwise uses waitress through `create_server` and its adjustments. The
overrides below rely on waitress WAITRESS_VERSION; `RELIED_ON` names each waitress
function whose behaviour they depend on, with a hash of its source, and
tests/unit/test_waitress_hooks.py fails on any waitress whose version or one of
those functions differs, so an upgrade is a decision, not a surprise:

- `_ErrorTask.execute` replaces `ErrorTask.execute`: waitress's own refusals (a body over
  max_request_body_size, an unparsable request) answer with our JSON error, and the
  channel is marked `refused`.
- `_Channel.handle_close/readable/writable/handle_read`: after a refusal the channel
  half-closes and reads what the client still sends, up to DISCARD_BYTES for
  DISCARD_SECONDS, so clients that write their whole body first read the 413
  (`HTTPChannel.handle_write` closes through `handle_close` once flushed).
- `_Task.build_response_header`: `Connection: close` once the process is stopping.
- `_Task.write` + `_Channel.write_soon`: the header and the first body chunk leave in
  one send (`Task.write` calls `channel.write_soon` for the header, then the body).
- `LoopDispatcher.add_task` + `_Channel.service`: small POSTs that proved fast run on
  the event-loop thread (`HTTPChannel.received` hands a complete request to
  `server.add_task`, which calls the dispatcher's `add_task`).
- `LoopDispatcher.run_ready` + `_Task.get_environment`: with batching on, the small
  POSTs one loop pass read are predicted together before each is served; their
  environs are built first (`WSGITask.get_environment`) and kept on the request, where
  the task serving it takes its environ from.
- `LoopDispatcher.take_queued` + `_Channel.service`: with batching on, a request thread
  that takes a small POST from the queue (`ThreadedTaskDispatcher.handler_thread`) takes
  the small POSTs queued behind it too, predicts them together and serves them.
- `ProcessServer`: drives `wasyncore.poll2` over the server's map itself (so it can
  tick, stop accepting and drain), and wraps the server's `readable`/`handle_accept`
  for AcceptBalance.

The measured reasons for the speed paths are in bench/RESULTS.md.
"""

import hashlib
import inspect
import mmap
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import waitress
from waitress import create_server, wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask, Task, ThreadedTaskDispatcher, WSGITask

from service import metrics
from service.errors import InputError, PayloadTooLarge, ServiceError
from service.web import error_response

WAITRESS_VERSION = "3.0.2"
TICK_SECONDS = 0.2
DRAIN_SECONDS = 20.0
ACCEPT_DEFER_SECONDS = 0.005
REBALANCE_SECONDS = 0.5
INLINE_MAX_BYTES = 16 * 1024
INLINE_SLOW_SECONDS = 0.02
INLINE_AFTER_FAST = 4
CONNECTION_LIMIT = 1000
# a 1,000-row JSON body is ~240 KB: read it in one recv, not thirty 8 KB ones that each
# wait for the GIL while a request thread predicts
RECV_BYTES = 256 * 1024
DISCARD_BYTES = 64 * 1024 * 1024
DISCARD_SECONDS = 10.0

# -- spreading connections over the processes -------------------------------------------


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
        self.ended_at = float("-inf")

    def my_turn(self, mine: int) -> bool:
        """True unless another accepting process holds fewer connections."""
        self.cells[self.slot] = mine
        return mine <= min(self.cells)

    def crowded(self, mine: int) -> bool:
        """True if another accepting process holds at least two connections fewer.

        Connections stay where they were accepted: a burst that came while the other
        process was still busy with requests of clients gone (its count not yet down)
        would stay on this one. Ending one keep-alive connection after its response
        (`Connection: close`, which every HTTP/1.1 client honours) lets the client's
        next connection land on the other process. At most one per REBALANCE_SECONDS,
        so a sibling slow to accept costs a reconnect now and then, not one per request.
        """
        if mine < min(self.cells) + 2:
            return False
        others = [count for slot, count in enumerate(self.cells) if slot != self.slot]
        now = time.monotonic()
        if not others or mine < min(others) + 2 or now - self.ended_at < REBALANCE_SECONDS:
            return False
        self.ended_at = now
        return True

    def close(self) -> None:
        self.cells[self.slot] = ConnectionCounts.NOT_ACCEPTING


# -- one server process --------------------------------------------------------------


class _Task(WSGITask):
    """Tells the client to close the connection once the process is stopping, or when
    this process holds more connections than another (AcceptBalance.crowded); takes
    the environ `LoopDispatcher` built for its request, if it did."""

    def get_environment(self) -> dict[str, Any]:
        environ = getattr(self.request, "ready_environ", None)
        if environ is None:
            return super().get_environment()
        self.environ = environ
        return environ

    def build_response_header(self) -> bytes:
        server = self.channel.server
        balance = server.balance
        if server.draining or (
            balance is not None and balance.crowded(len(server.active_channels))
        ):
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
    return _small(request, ("POST",))


def _small(request: Any, methods: tuple[str, ...]) -> bool:
    return (
        not request.error
        and request.command in methods
        and request.body_bytes_received <= INLINE_MAX_BYTES
    )


class LoopDispatcher(ThreadedTaskDispatcher):
    """Runs GETs, and small POSTs once they have proved fast, on the event-loop thread.

    Handing a request to a thread costs a lock, a thread wake-up, GIL switches and a
    pipe write to wake the loop again: about a third of the CPU of a one-row request.
    Once INLINE_AFTER_FAST small POSTs in a row took at most INLINE_SLOW_SECONDS each,
    the next ones run where they were read; the first slower one sends them back to
    the threads, so a slow model stalls the other connections of its process for at
    most one request. GETs (health checks, metrics) always run on the loop, so they are
    answered while the threads predict; big bodies always go to the threads.
    """

    def __init__(
        self, threads: int, predict_ready: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> None:
        super().__init__()
        self.ready: deque[HTTPChannel] = deque()
        self.predict_ready = predict_ready
        self.fast_in_a_row = 0
        self.loop_thread = threading.get_ident()
        self.set_thread_count(threads)

    def add_task(self, task: Any) -> None:
        if threading.get_ident() == self.loop_thread and self._on_loop(task.requests[0]):
            self.ready.append(task)
        else:
            super().add_task(task)

    def _on_loop(self, request: Any) -> bool:
        if self.fast_in_a_row >= INLINE_AFTER_FAST and small_post(request):
            return True
        return _small(request, ("GET", "HEAD"))  # our GET routes answer from memory

    def observe(self, seconds: float) -> None:
        """How long a small POST took, wherever it ran."""
        self.fast_in_a_row = self.fast_in_a_row + 1 if seconds <= INLINE_SLOW_SECONDS else 0

    def run_ready(self) -> None:
        """Serve the requests `add_task` kept for the loop (called by the loop)."""
        shared = None
        if self.predict_ready is not None and len(self.ready) > 1:
            shared = self.predict_together(self.ready)
        while self.ready:
            self.ready.popleft().service()
        if shared is not None:
            self.observe(shared)

    def take_queued(self) -> list[HTTPChannel]:
        """The small POSTs waiting for a request thread, out of the queue (batching on):
        the thread that calls this predicts them with its own and serves them. Big bodies
        stay queued: their rows rarely fit a shared call, and each would wait for all."""
        with self.lock:
            taken = [channel for channel in self.queue if small_post(channel.requests[0])]
            for channel in taken:
                self.queue.remove(channel)
        return taken

    def predict_together(self, channels: Iterable[HTTPChannel]) -> float | None:
        """Hand the small POSTs among `channels` to `predict_ready` at once, so they
        share model calls; each is then served with what it left in its environ.
        The seconds it took, to observe once they are served: a pass slower than
        INLINE_SLOW_SECONDS sends the next small POSTs to the threads."""
        environs = []
        for channel in channels:
            request = channel.requests[0]
            if small_post(request) and channel.connected:
                request.ready_environ = channel.task_class(channel, request).get_environment()
                environs.append(request.ready_environ)
        if len(environs) < 2:
            return None
        started = time.perf_counter()
        assert self.predict_ready is not None
        self.predict_ready(environs)
        return time.perf_counter() - started

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
        dispatcher = self.server.task_dispatcher
        request = self.requests[0]
        if (
            dispatcher.predict_ready is not None
            and threading.get_ident() != dispatcher.loop_thread
            and getattr(request, "ready_environ", None) is None
            and small_post(request)
        ):
            return self._serve_with_queued(dispatcher)
        if not small_post(request):
            return super().service()
        started = time.perf_counter()
        super().service()
        dispatcher.observe(time.perf_counter() - started)

    def _serve_with_queued(self, dispatcher: "LoopDispatcher") -> None:
        """On a request thread with batching on: the small POSTs queued behind this one
        are predicted with it, then served here one after another."""
        company = dispatcher.take_queued()
        shared = dispatcher.predict_together([self, *company]) if company else None
        for channel in (self, *company):
            started = time.perf_counter()
            HTTPChannel.service(channel)
            dispatcher.observe(time.perf_counter() - started)
        if shared is not None:
            dispatcher.observe(shared)

    def idle(self) -> bool:
        """No request half-read, running or waiting for its response to be sent."""
        return not self.requests and self.request is None and not self.total_outbufs_len


class ProcessServer:
    """waitress on the shared listener, driven by our loop so it can stop gracefully."""

    def __init__(
        self,
        app: Any,
        listener: socket.socket,
        settings: Any,
        balance: AcceptBalance | None = None,
    ) -> None:
        body_limit = int(settings.max_request_mb * 1024 * 1024)
        batching = getattr(settings, "batch_max_rows", 0) > 0
        self.dispatcher = LoopDispatcher(settings.threads, app.predict_ready if batching else None)
        self.server = create_server(
            app,
            sockets=[listener],
            _dispatcher=self.dispatcher,
            ident="model-endpoint",
            connection_limit=CONNECTION_LIMIT,
            asyncore_use_poll=True,
            recv_bytes=RECV_BYTES,
            # waitress buffers whole bodies before the app runs: refuse bigger ones
            # while reading (headroom for chunk framing; the app enforces the exact limit)
            max_request_body_size=body_limit + max(1 << 16, body_limit // 16),
            channel_timeout=getattr(settings, "timeout_seconds", 120.0),
        )
        self.server.channel_class = _Channel
        self.server.discarding = set()
        self.server.draining = False
        self.server.balance = balance
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


# -- what the overrides rely on ---------------------------------------------------------

RELIED_ON: tuple[Any, ...] = (
    create_server,
    BaseWSGIServer.readable,
    BaseWSGIServer.handle_accept,
    BaseWSGIServer.maintenance,
    HTTPChannel.received,
    HTTPChannel.service,
    WSGITask.get_environment,
    HTTPChannel.write_soon,
    HTTPChannel.handle_write,
    HTTPChannel.handle_read,
    HTTPChannel.handle_close,
    HTTPChannel.readable,
    HTTPChannel.writable,
    Task.service,
    Task.write,
    Task.build_response_header,
    Task.set_close_on_finish,
    ErrorTask.execute,
    ThreadedTaskDispatcher.add_task,
    ThreadedTaskDispatcher.handler_thread,
    ThreadedTaskDispatcher.shutdown,
    wasyncore.poll2,
    wasyncore.close_all,
    wasyncore.dispatcher.close,
)


def source_digest(function: Any) -> str:
    """A short hash of a waitress function's source, to notice when it changes."""
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


def installed_waitress() -> str:
    return getattr(waitress, "__version__", None) or _distribution_version()


def _distribution_version() -> str:
    from importlib.metadata import version

    return version("waitress")
