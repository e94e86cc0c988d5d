"""Any HTTP client reads our 4xx, also for a body over MAX_REQUEST_MB.

Python's urllib writes the whole body before it reads (http.client's `request`
sends the body, then `getresponse` reads: cpython Lib/http/client.py); a server that
answers early and closes with unread input makes the kernel reset the connection,
and urllib then raises ConnectionResetError instead of showing the 413
(EMULATORS.md, "Measured in round 2"). requests streams the same way but reads
the early answer. Both must get the 413 with its JSON, every time.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
import requests

from tests.conformance.conftest import LIMIT_MB
from tests.endpoint_fixtures import EndpointServer

OVER = b"x" * (LIMIT_MB * 1024 * 1024 * 3)
TRIES = 6


def test_urllib_reads_the_413(endpoint: EndpointServer) -> None:
    for _ in range(TRIES):
        request = urllib.request.Request(
            f"{endpoint.url}/invocations", data=OVER, headers={"Content-Type": "text/csv"}
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 413
        document = json.loads(caught.value.read())
        assert document["error"] == "payload_too_large"
        assert "MAX_REQUEST_MB" in document["message"]


def test_requests_reads_the_413(endpoint: EndpointServer) -> None:
    for _ in range(TRIES):
        response = requests.post(
            f"{endpoint.url}/invocations",
            data=OVER,
            headers={"Content-Type": "text/csv"},
            timeout=30,
        )
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"


def test_a_client_that_never_stops_sending_is_cut_off(endpoint: EndpointServer) -> None:
    """The drain after an early answer is bounded: a client announcing 1 GB and sending
    until the server stops reading gets the 413, then the connection ends."""
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as connection:
        connection.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: t\r\nContent-Type: text/csv\r\n"
            b"Content-Length: 1073741824\r\n\r\n"
        )
        answer = connection.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 ")
        chunk = b"x" * (1 << 20)
        with pytest.raises(OSError):
            for _ in range(1024):
                connection.sendall(chunk)
