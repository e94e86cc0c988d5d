"""Adaptive batching through the real server (`python -m service serve`, waitress) under
real concurrency: answers equal the one-by-one answers bit for bit, batches form (the /metrics
histogram says so), and a request whose rows fail gets its own 422 while its
neighbours get their answers. Both ways requests gather: small ones read together by
a process's event loop (THREADS 1), and ones on the request threads (bodies padded past
INLINE_MAX_BYTES, THREADS 8)."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import requests

from service.waitress_hooks import INLINE_MAX_BYTES
from tests.endpoint_fixtures import EndpointServer, metric
from tests.model_kinds import (
    assert_bit_equal,
    encode_rows,
    kind_rows,
    read_answer,
    write_kind_bundle,
)

JSON = "application/json"
CLIENTS = 16
ROUNDS = 20
SECONDS = 30


MODES = {"loop": {"threads": 1}, "threads": {"threads": 8, "batch_wait_ms": 1000}}


def padded(body: bytes) -> bytes:
    """The same JSON with trailing whitespace past INLINE_MAX_BYTES, so the server hands
    each request to its threads, never to its event loop."""
    return body + b" " * (INLINE_MAX_BYTES + 1 - len(body))


CONNECTIONS = threading.local()


def post(url: str, body: bytes) -> requests.Response:
    """POST on this thread's keep-alive connection, as a load balancer or wrk sends: the
    server then reads the requests of several clients in one pass of its event loop."""
    if not hasattr(CONNECTIONS, "session"):
        CONNECTIONS.session = requests.Session()
    headers = {"Content-Type": JSON, "Accept": JSON}
    return CONNECTIONS.session.post(
        f"{url}/invocations", data=body, headers=headers, timeout=SECONDS
    )


def batched_calls(url: str) -> tuple[float, float]:
    text = requests.get(f"{url}/metrics", timeout=SECONDS).text
    count = metric(text, "endpoint_batch_requests_count") or 0.0
    return count, metric(text, "endpoint_batch_requests_sum") or 0.0


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path, train_example):
    root = tmp_path_factory.mktemp("batching")
    mixed = write_kind_bundle("mixed", root / "mixed")
    return {
        "four-artifact": (bundle_dir, train_example.sample_rows(CLIENTS * 2)),
        "pipeline": (mixed, kind_rows("mixed", CLIENTS * 2)),
    }


@pytest.fixture(scope="module")
def servers(bundles, tmp_path_factory):
    started: dict[tuple[str, str], EndpointServer] = {}
    try:
        for name, (folder, _) in bundles.items():
            for mode, settings in MODES.items():
                log = tmp_path_factory.mktemp("logs") / f"{name}-{mode}.log"
                server = EndpointServer(
                    log, model_uri=folder, workers=1, batch_max_rows=64, **settings
                )
                started[name, mode] = server.launch()
        for server in started.values():
            server.until_ready()
        yield started
    finally:
        for server in started.values():
            server.kill()


def bodies(rows: pd.DataFrame, mode: str) -> list[bytes]:
    encoded = [encode_rows(rows.iloc[[i]], JSON) for i in range(len(rows))]
    return [padded(body) for body in encoded] if mode == "threads" else encoded


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", ["four-artifact", "pipeline"])
def test_concurrent_answers_equal_one_by_one_and_share_calls(servers, bundles, name, mode):
    url = servers[name, mode].url
    requests_ = bodies(bundles[name][1], mode)
    calls_before, served_before = batched_calls(url)
    alone = []
    for body in requests_:
        response = post(url, body)
        assert response.status_code == 200, response.text
        alone.append(read_answer(response.content, JSON))
    calls, served = batched_calls(url)
    calls, served = calls - calls_before, served - served_before
    assert calls == served == len(requests_), "one by one, every call serves one request"
    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(ROUNDS):
            answers = list(pool.map(lambda body: post(url, body), requests_))
            for response, want in zip(answers, alone, strict=True):
                assert response.status_code == 200, response.text
                assert_bit_equal(read_answer(response.content, JSON), want)
            calls, served = batched_calls(url)
            calls, served = calls - calls_before, served - served_before
            if served > calls:
                break
    assert served > calls, f"{ROUNDS} rounds of {CLIENTS} clients never shared a call"


@pytest.mark.parametrize("mode", list(MODES))
def test_a_failing_request_fails_alone(servers, bundles, mode):
    url = servers["pipeline", mode].url
    rows = bundles["pipeline"][1]
    good = [body for body in bodies(rows, mode) if b'"20' in body]
    bad = [body.replace(b'"20', b'"not a date 20', 1) for body in good]
    assert len(good) >= CLIENTS
    wanted = [read_answer(post(url, body).content, JSON) for body in good]
    mixed = [body for pair in zip(good, bad, strict=True) for body in pair]
    calls_before, served_before = batched_calls(url)
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(lambda body: post(url, body), mixed * 3))
    calls, served = batched_calls(url)
    assert served - served_before > calls - calls_before, "no call was shared"
    for index, response in enumerate(answers):
        row = (index % len(mixed)) // 2
        if index % 2:
            assert response.status_code == 422, response.text
            document = json.loads(response.content)
            assert document["error"] == "invalid_data" and "signup" in document["message"]
        else:
            assert response.status_code == 200, response.text
            assert_bit_equal(read_answer(response.content, JSON), wanted[row])
