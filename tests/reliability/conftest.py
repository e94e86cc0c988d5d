"""Fixtures for the reliability and security suites.

They reuse the integration fixtures: the real endpoint server (tests/endpoint_fixtures.py)
and the real moto server with worker subprocesses (tests/worker_fixtures.py). Every
process started here is stopped in a finalizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from tests import worker_fixtures
from tests.endpoint_fixtures import EndpointServer

cloud = worker_fixtures.cloud
model_uri = worker_fixtures.model_uri
stack = worker_fixtures.stack
start_worker = worker_fixtures.start_worker

GOOD_ROWS = 20


@pytest.fixture(scope="session")
def good_rows() -> pd.DataFrame:
    """The good rows every poison is made from (and the good file after the poison)."""
    return worker_fixtures.sample_rows(GOOD_ROWS, seed=11)


@pytest.fixture(scope="module")
def start_endpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., EndpointServer]]:
    """Start `python -m service serve` with settings; every server is killed at the end."""
    started: list[EndpointServer] = []

    def start(**settings: Any) -> EndpointServer:
        log = tmp_path_factory.mktemp("endpoint") / "server.log"
        server = EndpointServer(log, **settings)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.kill()


@pytest.fixture(scope="module")
def endpoint(start_endpoint: Callable[..., EndpointServer], bundle_dir: Path) -> EndpointServer:
    """The endpoint with its default request limit (6 MB) and no API key."""
    return start_endpoint(model_uri=bundle_dir, max_request_mb=6, threads=4)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session
