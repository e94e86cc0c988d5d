"""Every poison in the catalogue against the real endpoint: 4xx with a JSON error naming the
problem (or a documented success), never a 5xx, and the server keeps serving."""

from __future__ import annotations

import http.client

import orjson
import pandas as pd
import pytest
import requests

from tests.endpoint_fixtures import EndpointServer
from tests.reliability.poison.catalogue import CATALOGUE, Poison

pytestmark = pytest.mark.reliability

SEND_CHUNK = 1 << 20


def cases(path: str) -> list[pytest.param]:
    """The catalogue as parameters; a case waiting for a requested change is a strict xfail."""
    return [
        pytest.param(
            poison,
            id=poison.name,
            marks=[pytest.mark.xfail(strict=True, reason=poison.pending[path])]
            if path in poison.pending
            else [],
        )
        for poison in CATALOGUE
    ]


def post(server: EndpointServer, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with http.client, sending the body in chunks and reading the answer even when
    the server refuses the body early (it answers 413 and closes before reading it all)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("POST", "/invocations")
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            connection.putheader(name, value)
        connection.endheaders()
        try:
            for start in range(0, len(body), SEND_CHUNK):
                connection.send(body[start : start + SEND_CHUNK])
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("poison", cases("endpoint"))
def test_poison_is_answered_without_a_5xx(
    endpoint: EndpointServer, good_rows: pd.DataFrame, poison: Poison
) -> None:
    expect = poison.endpoint
    status, body = post(
        endpoint,
        poison.make(good_rows),
        {
            "Content-Type": poison.content_type,
            **poison.headers,
        },
    )
    assert status < 500, (status, body[:500])
    document = orjson.loads(body)
    if expect.code is None:
        assert status == expect.status == 200, document
        assert len(document["predictions"]) == expect.rows
        return
    assert status == expect.status, document
    assert set(document) == {"error", "message", "error_code"}, document
    assert expect.accepts(document["error"]), document
    assert expect.missing_words(document["message"]) == [], document["message"]
    assert "Traceback" not in document["message"]


def server_errors(text: str) -> float:
    """5xx answers so far, summed over routes."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("endpoint_requests_total{") and 'code="5' in line
    )


def test_server_is_healthy_and_logged_no_crash_after_the_catalogue(
    endpoint: EndpointServer, good_rows: pd.DataFrame, http: requests.Session
) -> None:
    """The catalogue again, minus the cases waiting for a fix: no 5xx, no traceback logged,
    no server process lost."""
    before = server_errors(http.get(f"{endpoint.url}/metrics", timeout=10).text)
    log_start = len(endpoint.log())
    settled = [poison for poison in CATALOGUE if "endpoint" not in poison.pending]
    for poison in settled:
        headers = {"Content-Type": poison.content_type, **poison.headers}
        status, _ = post(endpoint, poison.make(good_rows), headers)
        assert status == poison.endpoint.status, poison.name
    assert http.get(f"{endpoint.url}/ping", timeout=10).ok
    text = http.get(f"{endpoint.url}/metrics", timeout=10).text
    assert server_errors(text) == before
    log = endpoint.log()[log_start:]
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    assert len(endpoint.children()) == 2, "a server process died"
