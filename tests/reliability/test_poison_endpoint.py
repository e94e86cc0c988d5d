"""Every poison in the catalogue against the real endpoint: 4xx with a JSON error naming the
problem (or a documented success), never a 5xx, and the server keeps serving."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pandas as pd
import pytest
import requests

from tests.endpoint_fixtures import EndpointServer, metric
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


BATCHING_ROUNDS = 10
CLIENTS = 16


def test_the_catalogue_sent_concurrently_to_a_batching_server_gets_the_same_answers(
    start_endpoint: Callable[..., EndpointServer],
    bundle_dir: Path,
    good_rows: pd.DataFrame,
    http: requests.Session,
) -> None:
    """With BATCH_MAX_ROWS set, requests a process reads together are decoded together and
    share model calls: every poison among them still gets its own answer (the status it
    gets alone), each good request its predictions, and nothing fails with a 5xx."""
    server = start_endpoint(model_uri=bundle_dir, workers=1, batch_max_rows=64)
    settled = [poison for poison in CATALOGUE if "endpoint" not in poison.pending]
    good = good_rows.head(1).to_json(orient="records").encode()
    mix = [(p.make(good_rows), {"Content-Type": p.content_type, **p.headers}) for p in settled]
    mix += [(b'{"dataframe_records":' + good + b"}", {"Content-Type": "application/json"})] * len(
        settled
    )
    wanted = [p.endpoint.status for p in settled] + [200] * len(settled)

    def shared_calls() -> float:
        text = http.get(f"{server.url}/metrics", timeout=10).text
        return (metric(text, "endpoint_batch_requests_sum") or 0.0) - (
            metric(text, "endpoint_batch_requests_count") or 0.0
        )

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(BATCHING_ROUNDS):
            answers = list(pool.map(lambda case: post(server, *case), mix))
            assert [status for status, _ in answers] == wanted
            if shared_calls() > 0:
                break
    assert shared_calls() > 0, f"{BATCHING_ROUNDS} rounds never shared a call"
    for _, body in answers[len(settled) :]:
        assert len(orjson.loads(body)["predictions"]) == 1
    assert server_errors(http.get(f"{server.url}/metrics", timeout=10).text) == 0
    log = server.log()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
    assert len(server.children()) == 1, "the server process died"
