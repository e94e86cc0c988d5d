"""The server process on real sockets: waitress with service/waitress_hooks.py's
overrides, and the guard that those overrides still match the installed waitress."""

import logging
from types import SimpleNamespace

import pytest

from service import waitress_hooks
from service.web import create_app
from tests.support import wait_for
from tests.unit.test_web import FakeStore, tiny_bundle


def test_the_installed_waitress_is_the_one_the_overrides_were_written_for() -> None:
    """Each override in service/waitress_hooks.py relies on these waitress functions
    behaving as in WAITRESS_VERSION: a different version, or a changed function, must
    be read against the overrides (then update WAITRESS_VERSION and DIGESTS)."""
    assert waitress_hooks.installed_waitress() == waitress_hooks.WAITRESS_VERSION
    found = {
        function.__qualname__: waitress_hooks.source_digest(function)
        for function in waitress_hooks.RELIED_ON
    }
    assert found == DIGESTS


def stop_serving(process, loop, listener) -> None:
    """Stop a ProcessServer whose loop runs on `loop`, and close its listener."""
    process.stop()
    loop.join(5)
    process.drain(seconds=1)
    listener.close()


DIGESTS: dict[str, str] = {
    "create_server": "2e506b208edceac2",
    "BaseWSGIServer.readable": "4eea9c1036b55b41",
    "BaseWSGIServer.handle_accept": "69bfcf0fc140592a",
    "BaseWSGIServer.maintenance": "4ab5b7f595bc4253",
    "HTTPChannel.received": "08d6df73fb69da84",
    "HTTPChannel.service": "f73afa13748e1128",
    "WSGITask.get_environment": "3bb57be6c7db4e59",
    "HTTPChannel.write_soon": "20eedb92a8237c47",
    "HTTPChannel.handle_write": "6c900f395b306f09",
    "HTTPChannel.handle_read": "5f1fb08c95aa00cc",
    "HTTPChannel.handle_close": "8f59b9aaa45566bb",
    "HTTPChannel.readable": "e4722238ce60c915",
    "HTTPChannel.writable": "d0cbd4ae1b3ba2a3",
    "Task.service": "d96bb4019c488cca",
    "Task.write": "f9a97135b3b5d691",
    "Task.build_response_header": "2cf70b88816fabc1",
    "Task.set_close_on_finish": "90433a0ffcaf34a7",
    "ErrorTask.execute": "4abe3262db04d291",
    "ThreadedTaskDispatcher.add_task": "1028105a9aed367d",
    "ThreadedTaskDispatcher.handler_thread": "fe586964e3f09522",
    "ThreadedTaskDispatcher.shutdown": "f2550ddbfb8d46b9",
    "poll2": "f2ea2bd150ff2600",
    "close_all": "6b588549e9916191",
    "dispatcher.close": "dd4afafdd01181b1",
}


@pytest.fixture
def store() -> FakeStore:
    return FakeStore(tiny_bundle())


def test_the_server_disables_nagle_on_accepted_connections(store: FakeStore) -> None:
    """Small responses must not wait for the delayed-ACK timer (TCP_NODELAY)."""
    import socket

    from waitress import wasyncore

    from service.server import bind
    from service.waitress_hooks import ProcessServer

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=1, api_key=None)
    process = ProcessServer(create_app(store, settings), listener, settings)
    process.open()
    client = socket.create_connection(listener.getsockname())
    try:
        for _ in range(50):
            wasyncore.poll2(0.1, process.server._map)
            if process.server.active_channels:
                break
        (channel,) = process.server.active_channels.values()
        assert channel.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()
        process.drain(seconds=1)
        listener.close()


def _queue_record() -> logging.LogRecord:
    return logging.LogRecord(
        "waitress.queue", logging.WARNING, "", 0, "Task queue depth is %d", (1,), None
    )


def test_queue_depth_warning_is_summarised():
    from service.server import QueueDepthSummary

    summary = QueueDepthSummary(interval=60)
    assert summary.filter(_queue_record())
    assert not any(summary.filter(_queue_record()) for _ in range(5))
    summary.next_line = 0.0
    last = _queue_record()
    assert summary.filter(last)
    assert last.getMessage() == "Task queue depth is 1 (and 5 times more since the last such line)"


def test_a_process_takes_a_connection_unless_another_holds_fewer() -> None:
    from service.waitress_hooks import ConnectionCounts

    counts = ConnectionCounts(3)
    first, second = counts.balance(0), counts.balance(1)
    assert first.my_turn(0)  # slots that do not accept do not count
    assert second.my_turn(0)
    assert not first.my_turn(1)
    assert second.my_turn(1)
    second.close()
    assert first.my_turn(1)
    counts.clear(0)
    assert set(counts.cells) == {ConnectionCounts.NOT_ACCEPTING}


def test_a_process_two_connections_ahead_ends_one_at_most_twice_a_second() -> None:
    from service.waitress_hooks import REBALANCE_SECONDS, ConnectionCounts

    counts = ConnectionCounts(3)
    first, second = counts.balance(0), counts.balance(1)
    second.my_turn(2)
    first.my_turn(3)
    assert not first.crowded(3)  # one ahead: moving a client would not even them out
    assert first.crowded(4)
    assert not first.crowded(4), "a second one within REBALANCE_SECONDS"
    first.ended_at -= REBALANCE_SECONDS
    assert first.crowded(4)
    second.close()  # alone among the accepting processes: no one to hand a client to
    first.ended_at -= REBALANCE_SECONDS
    assert not first.crowded(9)


def test_a_crowded_process_ends_a_keep_alive_connection_after_its_response(
    store: FakeStore,
) -> None:
    """The client learns it from the response (Connection: close) and its next connection
    goes to the process with fewer (here a sibling that holds none)."""
    import http.client
    import threading

    from service.server import bind
    from service.waitress_hooks import ConnectionCounts, ProcessServer

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=2, api_key=None)
    counts = ConnectionCounts(2)
    process = ProcessServer(create_app(store, settings), listener, settings, counts.balance(0))
    process.open()
    loop = threading.Thread(target=process.serve, args=(lambda: None,), daemon=True)
    loop.start()
    clients = [http.client.HTTPConnection(*listener.getsockname(), timeout=10) for _ in range(2)]
    try:
        answers = []
        for client in clients:
            client.request("GET", "/health")
            answers.append(client.getresponse())
            answers[-1].read()
        assert [a.getheader("Connection") for a in answers] == [None, None]
        counts.cells[1] = 0  # a sibling that now accepts and holds nothing
        clients[0].request("GET", "/health")
        answer = clients[0].getresponse()
        answer.read()
        assert answer.getheader("Connection") == "close"
        clients[1].request("GET", "/health")
        answer = clients[1].getresponse()
        answer.read()
        assert answer.getheader("Connection") is None, "one per REBALANCE_SECONDS"
    finally:
        for client in clients:
            client.close()
        stop_serving(process, loop, listener)


def test_a_busier_process_leaves_a_new_connection_to_another_then_takes_it(
    store: FakeStore,
) -> None:
    """The other process gets ACCEPT_DEFER_SECONDS; if it does not accept, this one does."""
    import socket
    import time

    from service.server import bind
    from service.waitress_hooks import ACCEPT_DEFER_SECONDS, ConnectionCounts, ProcessServer

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=2, api_key=None)
    counts = ConnectionCounts(2)
    counts.cells[1] = 0  # an idle sibling that never accepts
    process = ProcessServer(create_app(store, settings), listener, settings, counts.balance(0))
    process.open()
    clients = [socket.create_connection(listener.getsockname())]
    try:
        _poll_until(process, channels=1)
        clients.append(socket.create_connection(listener.getsockname()))
        started = time.monotonic()
        _poll_until(process, channels=2)
        assert time.monotonic() - started >= ACCEPT_DEFER_SECONDS
        assert counts.cells[0] >= 1
    finally:
        for client in clients:
            client.close()
        process.drain(seconds=1)
        listener.close()
    assert counts.cells[0] == ConnectionCounts.NOT_ACCEPTING


def _poll_until(process, channels: int) -> None:
    from waitress import wasyncore

    for _ in range(200):
        wasyncore.poll2(process._poll_timeout(), process.server._map)
        if len(process.server.active_channels) >= channels:
            return
    raise AssertionError(f"the server did not accept {channels} connections")


class ThreadReporter:
    """A WSGI app that answers with the id of the thread it ran on; b"slow" takes longer."""

    metrics = None

    def __init__(self) -> None:
        import threading

        self.blocked = threading.Event()
        self.release = threading.Event()

    def __call__(self, environ, start_response):
        import threading
        import time

        from service import waitress_hooks as server

        body = environ["wsgi.input"].read()
        if body == b"slow":
            time.sleep(server.INLINE_SLOW_SECONDS * 2)
        elif body == b"block":
            self.blocked.set()
            self.release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(threading.get_ident()).encode()]


@pytest.fixture
def loop_server(monkeypatch):
    """A ProcessServer running ThreadReporter, its loop on a thread of this test."""
    import http.client
    import threading

    from service import waitress_hooks as server
    from service.server import bind
    from service.waitress_hooks import ProcessServer

    monkeypatch.setattr(server, "INLINE_SLOW_SECONDS", 0.25)  # no hiccup counts as slow

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=1, api_key=None)
    app = ThreadReporter()
    process = ProcessServer(app, listener, settings)
    process.open()
    loop = threading.Thread(target=process.serve, args=(lambda: None,), daemon=True)
    loop.start()
    connection = http.client.HTTPConnection(*listener.getsockname(), timeout=10)

    def call(body: bytes | None = b"row", method: str = "POST") -> int:
        connection.request(method, "/invocations", body=body)
        answer = connection.getresponse()
        assert answer.status == 200
        return int(answer.read())

    def prove_fast() -> list[int]:
        """INLINE_AFTER_FAST small POSTs, then wait for the last one's timing: a thread
        records it after its response has left, so the client may be quicker."""
        threads = [call() for _ in range(server.INLINE_AFTER_FAST)]
        wait_for(
            lambda: process.dispatcher.fast_in_a_row >= server.INLINE_AFTER_FAST,
            5,
            "the small POSTs to be counted as fast",
        )
        return threads

    try:
        yield SimpleNamespace(app=app, call=call, loop=loop, process=process, prove_fast=prove_fast)
    finally:
        connection.close()
        stop_serving(process, loop, listener)


def test_small_posts_run_on_the_loop_once_proved_fast(loop_server) -> None:
    from service.waitress_hooks import INLINE_AFTER_FAST

    loop = loop_server.loop.ident
    first = loop_server.prove_fast()
    assert len(first) == INLINE_AFTER_FAST
    assert loop not in first, "a request must prove fast on the threads first"
    assert [loop_server.call() for _ in range(3)] == [loop] * 3


def test_a_slow_request_sends_small_posts_back_to_the_threads(loop_server) -> None:

    loop = loop_server.loop.ident
    loop_server.prove_fast()
    assert loop_server.call(b"slow") == loop  # the one request a slow model may hold it
    assert loop_server.call() != loop
    assert loop_server.call(b"slow") != loop


def test_a_request_waitress_cannot_parse_is_400_while_the_loop_serves(loop_server) -> None:
    """RELIABILITY R8: once small POSTs run on the loop, a request line waitress cannot
    parse still gets its 400 (it goes to the threads, with waitress's error task)."""
    import socket

    from service.waitress_hooks import INLINE_AFTER_FAST

    loop = loop_server.loop.ident
    loop_server.prove_fast()
    assert loop_server.call() == loop, "the loop path must be active for this test"
    address = loop_server.process.server.socket.getsockname()
    with socket.create_connection(address, timeout=10) as connection:
        connection.sendall(b"\x00GARBAGE\r\n\r\n")
        answer = connection.recv(65536)
    assert answer.startswith(b"HTTP/1.0 400 "), answer[:200]
    assert loop_server.process.dispatcher.fast_in_a_row >= INLINE_AFTER_FAST
    assert loop_server.call() == loop


def test_gets_run_on_the_loop_and_big_bodies_on_the_threads(loop_server) -> None:
    from service.waitress_hooks import INLINE_MAX_BYTES

    loop = loop_server.loop.ident
    assert loop_server.call(None, "GET") == loop, "a GET needs no proof"
    assert loop_server.call() != loop, "a POST must prove fast on the threads first"
    loop_server.prove_fast()
    assert loop_server.call(None, "GET") == loop
    assert loop_server.call(b"x" * (INLINE_MAX_BYTES + 1)) != loop
    assert loop_server.call() == loop


def test_a_health_check_is_answered_while_the_only_thread_predicts(loop_server) -> None:
    """THREADS=1 predicts one request after another; /ping must not queue behind them."""
    import http.client
    import threading

    app = loop_server.app
    address = loop_server.process.server.socket.getsockname()
    busy = http.client.HTTPConnection(*address, timeout=10)
    answered: list[int] = []
    sender = threading.Thread(
        target=lambda: (
            busy.request("POST", "/invocations", body=b"block"),
            answered.append(busy.getresponse().status),
        )
    )
    sender.start()
    try:
        assert app.blocked.wait(10), "the POST never reached a request thread"
        assert loop_server.call(None, "GET") == loop_server.loop.ident
        assert not answered, "the GET was answered only after the POST"
    finally:
        app.release.set()
        sender.join(10)
        busy.close()
    assert answered == [200]


def test_the_header_and_a_small_body_leave_in_one_send(loop_server, monkeypatch) -> None:
    from service import waitress_hooks as server

    sizes: list[int] = []
    send = server._Channel.send

    def counting(channel, data, **options):
        sent = send(channel, data, **options)
        sizes.append(sent)
        return sent

    monkeypatch.setattr(server._Channel, "send", counting, raising=False)
    for _ in range(6):  # on the threads, then on the loop
        loop_server.call()
    wait_for(lambda: len(sizes) >= 6, 5, "the last send to be counted")
    assert len(sizes) == 6, sizes  # not a header send and a body send each
