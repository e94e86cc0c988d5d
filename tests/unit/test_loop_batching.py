"""Adaptive batching in a server process, on real sockets: the small POSTs one pass of the
event loop reads, and the POSTs queued for a busy request thread, share model calls;
each gets its own answer or its own error, and a request alone is predicted at once."""

from __future__ import annotations

import http.client
import threading
import time
from types import SimpleNamespace

import orjson
import pandas as pd
import pytest

from service import metrics, waitress_hooks
from service.batching import Batcher
from service.model import predict
from service.server import bind
from service.web import AppConfig, create_app
from tests.support import wait_for
from tests.unit.test_waitress_hooks import stop_serving
from tests.unit.test_web import FakeStore

SECONDS = 10.0
JSON = "application/json"


class Gated:
    """The real predict; when armed, its next call waits for `release`."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, thread)
        self.armed = False
        self.holding = threading.Event()
        self.release = threading.Event()
        self.on_shared = lambda: None  # runs in a call of several rows

    def __call__(self, bundle, frame: pd.DataFrame) -> pd.DataFrame:
        self.calls.append((len(frame), threading.get_ident()))
        if self.armed:
            self.armed = False
            self.holding.set()
            assert self.release.wait(SECONDS)
        if len(frame) > 1:
            self.on_shared()
        return predict(bundle, frame)


def body_of(frame: pd.DataFrame) -> bytes:
    return b'{"dataframe_records":' + frame.to_json(orient="records").encode() + b"}"


def answer_of(connection: http.client.HTTPConnection) -> tuple[int, dict]:
    response = connection.getresponse()
    return response.status, orjson.loads(response.read())


def rows(sample_frame: pd.DataFrame, start: int, count: int = 1) -> pd.DataFrame:
    """Rows with no value missing: a null in a JSON body makes another dtype (a column of
    only nulls is not a float column), and frames of other dtypes never share a call."""
    complete = sample_frame.dropna()
    return complete.iloc[start : start + count].reset_index(drop=True)


@pytest.fixture
def server(monkeypatch, bundle):
    """A ProcessServer with BATCH_MAX_ROWS 64 and one request thread, its loop on a thread
    here, and eight keep-alive connections to it (`prove_fast` moves small POSTs to the
    loop)."""
    # the held call must not count as slow, which would send small POSTs to the threads
    monkeypatch.setattr(waitress_hooks, "INLINE_SLOW_SECONDS", SECONDS)
    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=1, batch_max_rows=64)
    recorder = metrics.Metrics(1).slot(0)
    app = create_app(FakeStore(bundle), AppConfig(1 << 20, batch_max_rows=64), recorder)
    gate = Gated()
    app.batcher = Batcher(64, 0.002, recorder.observe_batch, predict=gate)
    process = waitress_hooks.ProcessServer(app, listener, settings)
    process.open()
    loop = threading.Thread(target=process.serve, args=(lambda: None,), daemon=True)
    loop.start()
    connections = [
        http.client.HTTPConnection(*listener.getsockname(), timeout=SECONDS) for _ in range(8)
    ]
    try:
        yield SimpleNamespace(
            connections=connections, gate=gate, loop=loop, process=process, recorder=recorder
        )
    finally:
        for connection in connections:
            connection.close()
        stop_serving(process, loop, listener)


def prove_fast(server, sample_frame) -> None:
    for connection in server.connections:
        connection.request(
            "POST", "/invocations", body_of(rows(sample_frame, 0)), {"Content-Type": JSON}
        )
        assert answer_of(connection)[0] == 200
    wait_for(
        lambda: server.process.dispatcher.fast_in_a_row >= waitress_hooks.INLINE_AFTER_FAST,
        5,
        "the small POSTs to be counted as fast",
    )


def send_during_a_held_call(
    server, sample_frame, bodies: list[bytes], on_loop: bool = True
) -> list[tuple[int, dict]]:
    """Hold a one-row prediction on the loop (or the request thread) while `bodies` are
    sent on the other connections (on loopback each is in the server's socket before
    `request` returns), so the loop's next pass reads them all (or they all queue for
    the thread); then release it and read every answer."""
    first, *others = server.connections
    server.gate.armed = True
    first.request("POST", "/invocations", body_of(rows(sample_frame, 0)), {"Content-Type": JSON})
    assert server.gate.holding.wait(SECONDS), "the held request never reached the model"
    count, thread = server.gate.calls[-1]
    assert count == 1 and (thread == server.loop.ident) is on_loop, "it runs elsewhere"
    for connection, body in zip(others, bodies, strict=False):
        connection.request("POST", "/invocations", body, {"Content-Type": JSON})
    if not on_loop:  # the loop reads them while the thread is held: wait till it has
        queue = server.process.dispatcher.queue
        wait_for(lambda: len(queue) == len(bodies), SECONDS, "the POSTs to queue")
    server.gate.release.set()
    assert answer_of(first)[0] == 200
    return [answer_of(connection) for connection in others[: len(bodies)]]


def assert_answers(got: dict, frame: pd.DataFrame, bundle) -> None:
    """The one-by-one answer, bit for bit."""
    want = predict(bundle, frame)
    (answer,) = got["predictions"]
    assert answer["id"] == int(want["id"][0])
    for column in want.columns.drop("id"):
        assert answer[column] == want[column][0], column


def test_small_posts_read_in_one_pass_share_one_call(server, bundle, sample_frame):
    prove_fast(server, sample_frame)
    frames = [rows(sample_frame, i) for i in range(1, 8)]
    before = len(server.gate.calls)
    answers = send_during_a_held_call(server, sample_frame, [body_of(f) for f in frames])
    assert [rows for rows, _ in server.gate.calls[before:]] == [1, 7]
    assert server.gate.calls[-1][1] == server.loop.ident
    for (status, got), frame in zip(answers, frames, strict=True):
        assert status == 200
        assert_answers(got, frame, bundle)
    assert server.recorder.render().count(b'endpoint_batch_requests_bucket{le="8"} 1') == 1


def test_in_one_pass_a_refused_request_and_an_unlike_one_get_their_own_answers(
    server, bundle, sample_frame
):
    prove_fast(server, sample_frame)
    good = [rows(sample_frame, i) for i in (1, 2, 3, 4)]
    reordered = rows(sample_frame, 5)
    reordered = reordered[list(reversed(reordered.columns))]
    bodies = [
        body_of(good[0]),
        body_of(good[1]),
        b'{"dataframe_records": [{"id": 1,',
        body_of(reordered),
        body_of(good[2]),
        body_of(rows(sample_frame, 6, 2)),
        body_of(good[3]),
    ]
    before = len(server.gate.calls)
    answers = send_during_a_held_call(server, sample_frame, bodies)
    assert [rows for rows, _ in server.gate.calls[before:]] == [1, 6, 1]
    assert [status for status, _ in answers] == [200, 200, 400, 200, 200, 200, 200]
    assert "not valid JSON" in answers[2][1]["message"]
    for index, frame in ((0, good[0]), (1, good[1]), (3, reordered), (4, good[2]), (6, good[3])):
        assert_answers(answers[index][1], frame, bundle)
    assert len(answers[5][1]["predictions"]) == 2


def test_a_request_alone_is_predicted_by_itself_at_once(server, bundle, sample_frame):
    prove_fast(server, sample_frame)
    connection = server.connections[0]
    before = len(server.gate.calls)
    for start in (1, 2, 3):
        connection.request(
            "POST", "/invocations", body_of(rows(sample_frame, start)), {"Content-Type": JSON}
        )
        status, got = answer_of(connection)
        assert status == 200
        assert_answers(got, rows(sample_frame, start), bundle)
    assert server.gate.calls[before:] == [(1, server.loop.ident)] * 3


def test_a_slow_shared_call_sends_the_next_small_posts_to_the_threads(
    server, bundle, sample_frame, monkeypatch
):
    def slow() -> None:
        monkeypatch.setattr(waitress_hooks, "INLINE_SLOW_SECONDS", 0.01)
        time.sleep(0.05)

    prove_fast(server, sample_frame)
    server.gate.on_shared = slow
    frames = [rows(sample_frame, i) for i in range(1, 4)]
    answers = send_during_a_held_call(server, sample_frame, [body_of(f) for f in frames])
    assert [status for status, _ in answers] == [200] * 3
    assert server.gate.calls[-1] == (3, server.loop.ident)
    connection = server.connections[1]
    connection.request("POST", "/invocations", body_of(frames[0]), {"Content-Type": JSON})
    status, got = answer_of(connection)
    assert status == 200
    assert_answers(got, frames[0], bundle)
    assert server.gate.calls[-1][1] != server.loop.ident


def test_posts_queued_for_the_busy_request_thread_share_one_call(server, bundle, sample_frame):
    """Before small POSTs have proved fast, each goes to the process's one thread."""
    frames = [rows(sample_frame, i) for i in range(1, 8)]
    bodies = [body_of(frame) for frame in frames]
    answers = send_during_a_held_call(server, sample_frame, bodies, on_loop=False)
    assert [rows for rows, _ in server.gate.calls] == [1, 7]
    assert server.gate.calls[0][1] == server.gate.calls[1][1] != server.loop.ident
    for (status, got), frame in zip(answers, frames, strict=True):
        assert status == 200
        assert_answers(got, frame, bundle)


def test_if_sharing_itself_fails_each_request_still_gets_a_clear_error(bundle, sample_frame):
    """The requests' bodies are read before the shared call: a failure there must still
    leave each with an answer (the generic 500), not a second read of an empty body."""
    from werkzeug.test import EnvironBuilder

    from service.web import PREDICTED

    def broken(calls):
        raise RuntimeError("a bug in the batcher")

    app = create_app(FakeStore(bundle), AppConfig(1 << 20, batch_max_rows=64))
    app.batcher.predict_ready = broken
    environs = [
        EnvironBuilder(
            path="/invocations",
            method="POST",
            data=body_of(rows(sample_frame, i)),
            content_type=JSON,
        ).get_environ()
        for i in (1, 2)
    ]
    app.predict_ready(environs)
    statuses: list[str] = []
    for environ in environs:
        assert PREDICTED in environ
        body = b"".join(app(environ, lambda status, headers: statuses.append(status)))
        assert b"the server failed unexpectedly" in body
    assert statuses == ["500 Internal Server Error"] * 2
