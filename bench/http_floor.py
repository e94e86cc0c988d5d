"""The floor under the endpoint's per-request CPU: our WSGI app behind the least HTTP a
server can do, measured beside our server with wrk.

    python -m bench.http_floor [--rounds 3] [--seconds 6]

The floor server runs in one process on one thread. It reads with one `recv` per
readable socket. It splits the header from the body by Content-Length, hands the body to
`service.web`'s app, and sends the status line, the app's headers and the answer in one
`send`. There is no header parsing beyond that, no HTTP error handling and no
timeouts: no server a user should run is this simple. What is left is our app (decode,
predict, encode, routing) plus the socket system calls. Its CPU per one-row request,
divided by the in-process path's, bounds what any HTTP server in front of our app could
reach here.

Each round measures three things in alternating order, with the body and wrk settings of
`bench.endpoint` (one-row JSON, 16 connections, keep-alive):
- the floor server;
- our server (`python -m service serve`, WORKERS=1, so both are one process);
- the in-process path.
"""

import argparse
import io
import os
import re
import selectors
import socket
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.endpoint import (
    BUNDLE,
    JSON,
    Body,
    InProcess,
    ensure_bundle,
    per_call,
    start_ours,
    write_bodies,
)
from bench.load import run_wrk
from bench.processes import LOOPBACK, Managed, free_port, install_cleanup, wait_ready
from bench.report import DATA_DIR

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_FIRST_LINE = re.compile(rb"([A-Z]+) ([^ ?]*)\S* HTTP/1\.[01]\r\n")
_CONTENT_TYPE = re.compile(rb"\r\ncontent-type:\s*([^\r]*)", re.IGNORECASE)


def serve(port: int) -> None:
    """Answer requests with our app until killed."""
    from service.artifacts import ModelStore
    from service.server import settle_heap
    from service.settings import ServeSettings, load_settings
    from service.web import create_app

    settings = load_settings(ServeSettings)
    store = ModelStore(settings.model_uri, settings.model_poll_seconds, on_swap=settle_heap)
    store.start()  # as a server process does, polling included
    app = create_app(store, settings)
    listener = socket.create_server((LOOPBACK, port))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                connection, _ = listener.accept()
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                selector.register(connection, selectors.EVENT_READ)
                pending[connection] = b""
                continue
            connection = key.fileobj
            try:
                data = connection.recv(262144)
            except OSError:  # wrk resets its connections when a run ends
                data = b""
            if not data:
                selector.unregister(connection)
                pending.pop(connection, None)
                connection.close()
                continue
            pending[connection] = _answer_all(app, connection, pending[connection] + data)


def _answer_all(app: Any, connection: socket.socket, data: bytes) -> bytes:
    """Answer every whole request in `data`; return what is left of the next one."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return data
        head = data[: end + 2]
        length = _LENGTH.search(head)
        size = int(length.group(1)) if length else 0
        if len(data) < end + 4 + size:
            return data
        body, data = data[end + 4 : end + 4 + size], data[end + 4 + size :]
        connection.sendall(_call(app, head, body))


def _call(app: Any, head: bytes, body: bytes) -> bytes:
    first = _FIRST_LINE.match(head)
    method, path = (first.group(1), first.group(2)) if first else (b"GET", b"/")
    kind = _CONTENT_TYPE.search(head)
    environ = {
        "REQUEST_METHOD": method.decode(),
        "PATH_INFO": path.decode(),
        "CONTENT_TYPE": kind.group(1).decode() if kind else "",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_ACCEPT": JSON,
        "wsgi.input": io.BytesIO(body),
    }
    status: list[str] = []
    headers: list[tuple[str, str]] = []

    def start_response(line: str, given: list[tuple[str, str]]) -> None:
        status.append(line)
        headers.extend(given)

    answer = b"".join(app(environ, start_response))
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    return f"HTTP/1.1 {status[0]}\r\n{lines}\r\n".encode("latin-1") + answer


def start_floor(port: int) -> Managed:
    server = Managed(
        [sys.executable, "-m", "bench.http_floor", "--serve", str(port)],
        env={**os.environ, "MODEL_URI": str(BUNDLE)},
        name="floor",
        log=DATA_DIR / "logs" / "floor.log",
        cwd=Path(__file__).resolve().parent.parent,
    )
    wait_ready(server, f"http://{LOOPBACK}:{port}/ping")
    return server


def cpu_per_request(server: Managed, url: str, body: Body, seconds: float) -> float:
    run_wrk(url, body.path, body.content_type, 16, 2, True)
    before = server.cpu_seconds()
    result = run_wrk(url, body.path, body.content_type, 16, seconds, True)
    if result["errors"] or not result["requests"]:
        raise RuntimeError(
            f"{server.name}: {result['errors']} errors, {result['requests']} requests"
        )
    return (server.cpu_seconds() - before) / result["requests"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    install_cleanup()
    ensure_bundle()
    body = write_bodies({"ours"})["ours"]["json-1"]
    in_process = InProcess({"json-1": body})
    servers = {}
    try:
        for name, start in (("floor", start_floor), ("ours", lambda p: start_ours(p, 1))):
            port = free_port()
            servers[name] = (start(port), f"http://{LOOPBACK}:{port}/invocations")
        figures: dict[str, list[float]] = {"floor": [], "ours": [], "in-process": []}
        for round_ in range(args.rounds):
            order = list(servers) if round_ % 2 == 0 else list(reversed(servers))
            for name in order:
                server, url = servers[name]
                figures[name].append(cpu_per_request(server, url, body, args.seconds))
            figures["in-process"].append(per_call(in_process.path("json-1"), 400)[1])
    finally:
        for server, _ in servers.values():
            server.stop(grace=20)
    for name, values in figures.items():
        print(f"{name:10s} CPU per one-row request {_ms(values)}")
    for name in ("floor", "ours"):
        ratios = [a / b for a, b in zip(figures[name], figures["in-process"], strict=True)]
        print(
            f"{name} / in-process {statistics.median(ratios):.2f}x ({min(ratios):.2f} .. {max(ratios):.2f})"
        )
    return 0


def _ms(values: list[float]) -> str:
    median = statistics.median(values) * 1e3
    return f"{median:.3f} ms ({min(values) * 1e3:.3f} .. {max(values) * 1e3:.3f})"


if __name__ == "__main__":
    sys.exit(main())
