"""A new bundle at MODEL_URI replaces the running model without a failed request; a broken
one leaves the old model serving and shows in /metrics."""

import io
import re
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from service import codecs
from service.artifacts import load_bundle
from service.model import predict
from tests.endpoint_fixtures import (
    EndpointServer,
    copy_bundle,
    metric,
    publish_bundle,
    publish_with_bad_hash,
    wait_for,
)
from tests.model_kinds import kind_rows, write_kind_bundle

POLL_SECONDS = 1.0
SWITCH_MARGIN = 4.0
CLIENTS = 4


@pytest.fixture
def live(tmp_path: Path, bundle_dir: Path) -> Path:
    """MODEL_URI: a folder holding version 1 that the test overwrites."""
    return copy_bundle(bundle_dir, tmp_path / "live")


@pytest.fixture(scope="module")
def version_2(tmp_path_factory: pytest.TempPathFactory, train_example) -> Path:
    out = tmp_path_factory.mktemp("v2") / "bundle"
    train_example.main(["--out", str(out), "--version", "2", "--regularisation", "0.01"])
    return out


@pytest.fixture
def server(tmp_path: Path, live: Path):
    endpoint = EndpointServer(
        tmp_path / "server.log", model_uri=live, model_poll_seconds=POLL_SECONDS, threads=2
    )
    try:
        yield endpoint.start()
    finally:
        endpoint.kill()


@pytest.fixture(scope="module")
def rows(sample_frame: pd.DataFrame) -> pd.DataFrame:
    return sample_frame.head(10)


@pytest.fixture(scope="module")
def body(rows: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), sink)
    return sink.getvalue()


def expected_by_version(rows: pd.DataFrame, *folders: Path) -> dict[str, np.ndarray]:
    answers = {}
    for folder in folders:
        bundle = load_bundle(str(folder))
        answers[bundle.version] = predict(bundle, rows)["activation"].to_numpy()
    return answers


class Load:
    """Client threads posting the same rows continuously, each on its own keep-alive session."""

    def __init__(self, url: str, body: bytes) -> None:
        self.url = f"{url}/invocations"
        self.body = body
        self.results: list[tuple[float, float, str, list[float]]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(CLIENTS)]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = session.post(
                        self.url, data=self.body, headers={"Content-Type": codecs.PARQUET}
                    )
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text}")
                    continue
                activation = [p["activation"] for p in response.json()["predictions"]]
                version = response.headers["X-Model-Version"]
                self.results.append((started, time.monotonic(), version, activation))

    def count(self, since: float = 0.0) -> int:
        return sum(1 for started, *_ in list(self.results) if started >= since)


def scrape(server: EndpointServer) -> str:
    response = requests.get(f"{server.url}/metrics")
    assert response.status_code == 200
    return response.text


def test_new_version_is_served_without_a_failed_request(
    server: EndpointServer, live: Path, version_2: Path, rows: pd.DataFrame, body: bytes
) -> None:
    expected = expected_by_version(rows, live, version_2)
    assert not np.allclose(expected["1"], expected["2"], atol=1e-6), "versions must differ"
    with Load(server.url, body) as load:
        wait_for(lambda: load.count() >= 40, 30, "requests answered by version 1")
        published = time.monotonic()
        publish_bundle(version_2, live)
        wait_for(
            lambda: metric(scrape(server), "endpoint_model_info", name="example", version="2") == 2,
            POLL_SECONDS + SWITCH_MARGIN,
            "both server processes to serve version 2",
        )
        switched = time.monotonic()
        wait_for(lambda: load.count(since=switched) >= 40, 30, "requests after the switch")
    assert load.failures == []
    for _, _, version, activation in load.results:
        np.testing.assert_allclose(activation, expected[version], rtol=0, atol=1e-9)
    versions = [version for *_, version, _ in load.results]
    assert versions.count("1") >= 40
    assert versions.count("2") >= 40
    last_v1_started = max(started for started, _, v, _ in load.results if v == "1")
    assert last_v1_started - published <= POLL_SECONDS + SWITCH_MARGIN
    text = scrape(server)
    assert metric(text, "endpoint_model_reloads_total") == 2
    assert metric(text, "endpoint_model_info", name="example", version="1") is None


def reload_errors(text: str) -> dict[str, float]:
    found = re.findall(r'^endpoint_model_reload_error\{error="(.*)"\} (\S+)$', text, re.MULTILINE)
    return {error: float(value) for error, value in found}


def test_broken_bundle_keeps_the_old_model_and_shows_in_metrics(
    server: EndpointServer,
    live: Path,
    bundle_dir: Path,
    version_2: Path,
    rows: pd.DataFrame,
    body: bytes,
) -> None:
    expected = expected_by_version(rows, live, version_2)
    with Load(server.url, body) as load:
        wait_for(lambda: load.count() >= 10, 30, "requests answered by version 1")
        publish_with_bad_hash(version_2, live, version="3")

        def both_failed() -> dict[str, float] | None:
            text = scrape(server)
            failing = {e: n for e, n in reload_errors(text).items() if "sha256" in e and n == 2}
            failures = metric(text, "endpoint_model_reload_failures_total") or 0
            return failing if failing and failures >= 2 else None

        failing = wait_for(
            both_failed, POLL_SECONDS + SWITCH_MARGIN, "the failed reload in /metrics"
        )
        (message,) = failing
        assert "model.joblib" in message
        assert "manifest" in message
        ping = requests.get(f"{server.url}/ping")
        assert ping.status_code == 200
        assert ping.headers["X-Model-Version"] == "1"
        since = time.monotonic()
        wait_for(lambda: load.count(since=since) >= 20, 30, "requests while the bundle is broken")

        publish_bundle(version_2, live)
        wait_for(
            lambda: metric(scrape(server), "endpoint_model_info", name="example", version="2") == 2,
            POLL_SECONDS + SWITCH_MARGIN,
            "the fixed bundle to be served",
        )
    assert load.failures == []
    assert {version for *_, version, _ in load.results} <= {"1", "2"}
    for _, _, version, activation in load.results:
        np.testing.assert_allclose(activation, expected[version], rtol=0, atol=1e-9)
    assert reload_errors(scrape(server)) == {"": 0.0}


@pytest.fixture(scope="module")
def mixed_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The example's rows plus the mixed pipeline's columns: both kinds of bundle answer them."""
    extra = kind_rows("mixed", len(rows)).drop(columns="id")
    return pd.concat([rows.reset_index(drop=True), extra], axis=1)


@pytest.fixture(scope="module")
def pipeline_v2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kind_bundle("mixed", tmp_path_factory.mktemp("p2") / "bundle", version="2")


@pytest.fixture(scope="module")
def four_artifact_v3(tmp_path_factory: pytest.TempPathFactory, train_example) -> Path:
    out = tmp_path_factory.mktemp("v3") / "bundle"
    train_example.main(["--out", str(out), "--version", "3", "--regularisation", "0.01"])
    return out


def served_by_both_processes(server: EndpointServer, version: str) -> bool:
    return metric(scrape(server), "endpoint_model_info", name="example", version=version) == 2


def test_four_artifact_to_pipeline_and_back_without_a_failed_request(
    server: EndpointServer,
    live: Path,
    pipeline_v2: Path,
    four_artifact_v3: Path,
    mixed_rows: pd.DataFrame,
) -> None:
    expected = expected_by_version(mixed_rows, live, pipeline_v2, four_artifact_v3)
    sink = io.BytesIO()
    mixed_rows.to_parquet(sink, index=False)
    with Load(server.url, sink.getvalue()) as load:
        wait_for(lambda: load.count() >= 20, 30, "requests answered by version 1")
        for folder, version in ((pipeline_v2, "2"), (four_artifact_v3, "3")):
            publish_bundle(folder, live)
            wait_for(
                lambda version=version: served_by_both_processes(server, version),
                POLL_SECONDS + SWITCH_MARGIN,
                f"both server processes to serve version {version}",
            )
            since = time.monotonic()
            wait_for(lambda since=since: load.count(since) >= 20, 30, "requests after a switch")
    assert load.failures == []
    versions = [version for *_, version, _ in load.results]
    assert {"1", "2", "3"} <= set(versions), set(versions)
    for _, _, version, activation in load.results:
        np.testing.assert_allclose(activation, expected[version], rtol=0, atol=1e-9)


def test_bundle_needing_a_missing_package_keeps_the_old_model(
    server: EndpointServer, live: Path, pipeline_v2: Path, mixed_rows: pd.DataFrame
) -> None:
    needs = {"version": "2", "requirements": {"no-such-model-package": "1.0"}}
    publish_bundle(pipeline_v2, live, needs)

    def refused() -> dict[str, float] | None:
        failing = {e: n for e, n in reload_errors(scrape(server)).items() if n == 2}
        return failing if any("no-such-model-package" in e for e in failing) else None

    (message,) = wait_for(refused, POLL_SECONDS + SWITCH_MARGIN, "the refused reload")
    assert "requirements-model.txt" in message
    ping = requests.get(f"{server.url}/ping")
    assert ping.status_code == 200
    assert ping.headers["X-Model-Version"] == "1"


def test_fresh_start_with_a_missing_package_is_not_ready(tmp_path: Path, pipeline_v2: Path) -> None:
    folder = copy_bundle(pipeline_v2, tmp_path / "needs")
    publish_bundle(pipeline_v2, folder, {"requirements": {"no-such-model-package": "1.0"}})
    endpoint = EndpointServer(tmp_path / "needs.log", model_uri=folder, workers=1)
    try:
        endpoint.start()
        ping = requests.get(f"{endpoint.url}/ping")
        assert ping.status_code == 503
        assert "no-such-model-package" in ping.text
    finally:
        endpoint.kill()
