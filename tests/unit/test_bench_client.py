"""The pipeline bench's minimal HTTP client reads whole answers and refuses failures."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.models import RawClient

ANSWER = b'{"predictions": [{"id": 1, "activation": 0.5}]}' * 3000  # several reads


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if body == b"ok" else 503
        answer = ANSWER if status == 200 else b"{}"
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_reads_each_answer_whole_on_one_connection(port: int) -> None:
    client = RawClient(port, b"ok")
    try:
        assert [client.post() for _ in range(3)] == [ANSWER] * 3
    finally:
        client.close()


def test_an_answer_other_than_200_is_an_error(port: int) -> None:
    client = RawClient(port, b"fail")
    try:
        with pytest.raises(RuntimeError, match="503"):
            client.post()
    finally:
        client.close()
