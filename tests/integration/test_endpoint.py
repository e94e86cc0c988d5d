"""The real server (`python -m service serve`, 2 processes) over HTTP: every route, every
type in and out, every client mistake, and a graceful stop on SIGTERM."""

import importlib.util
import io
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import openapi_spec_validator
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests

from service import codecs
from service.artifacts import Bundle, load_bundle, write_bundle
from service.model import predict
from tests.endpoint_fixtures import EndpointServer, metric, wait_for

KEY = "integration-key"
LIMIT_MB = 1
THREADS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path):
    log = tmp_path_factory.mktemp("endpoint") / "server.log"
    endpoint = EndpointServer(
        log, model_uri=bundle_dir, threads=THREADS, max_request_mb=LIMIT_MB, api_key=KEY
    )
    try:
        yield endpoint.start()
    finally:
        endpoint.kill()


@pytest.fixture(scope="module")
def http() -> requests.Session:
    with requests.Session() as session:
        session.headers["X-Api-Key"] = KEY
        yield session


@pytest.fixture(scope="module")
def rows(sample_frame: pd.DataFrame) -> pd.DataFrame:
    return sample_frame.head(25).reset_index(drop=True)


@pytest.fixture(scope="module")
def expected(bundle: Bundle, rows: pd.DataFrame) -> np.ndarray:
    """In-process predictions, checked against scikit-learn called by hand."""
    in_process = predict(bundle, rows)["activation"].to_numpy()
    columns = list(bundle.columns)
    features = rows[columns].fillna(pd.Series(bundle.mean)).to_numpy(dtype=np.float64)
    by_hand = bundle.model.predict_proba(bundle.scaler.transform(features))[:, 1]
    np.testing.assert_allclose(in_process, by_hand, rtol=0, atol=1e-12)
    return in_process


def records(frame: pd.DataFrame) -> list[dict]:
    return [
        {key: (None if pd.isna(value) else value) for key, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def split(frame: pd.DataFrame) -> bytes:
    rows = [list(row.values()) for row in records(frame)]
    return orjson.dumps({"dataframe_split": {"columns": list(frame.columns), "data": rows}})


ENCODERS = {
    "parquet": (codecs.PARQUET, parquet_bytes),
    "x-parquet": (codecs.X_PARQUET, parquet_bytes),
    "csv": (codecs.CSV, lambda frame: frame.to_csv(index=False).encode()),
    "dataframe_split": (codecs.JSON, split),
    "dataframe_records": (codecs.JSON, lambda f: orjson.dumps({"dataframe_records": records(f)})),
    "instances": (codecs.JSON, lambda f: orjson.dumps({"instances": records(f)})),
    "inputs": (codecs.JSON, lambda f: orjson.dumps({"inputs": records(f)})),
    "record-list": (codecs.JSON, lambda f: orjson.dumps(records(f))),
    "jsonlines": (codecs.JSONLINES, lambda f: b"\n".join(map(orjson.dumps, records(f)))),
}


def decode_answer(response: requests.Response) -> pd.DataFrame:
    kind = codecs.media_type(response.headers["Content-Type"])
    if kind in (codecs.PARQUET, codecs.X_PARQUET):
        return pq.read_table(pa.BufferReader(response.content)).to_pandas()
    if kind == codecs.CSV:
        return pd.read_csv(io.BytesIO(response.content))
    if kind in (codecs.JSONLINES, codecs.NDJSON):
        return pd.DataFrame([orjson.loads(line) for line in response.content.splitlines()])
    return pd.DataFrame(orjson.loads(response.content)["predictions"])


def invoke(http: requests.Session, server: EndpointServer, body, content_type: str, **headers):
    return http.post(
        f"{server.url}/invocations", data=body, headers={"Content-Type": content_type, **headers}
    )


def assert_error(response: requests.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"] == code
    assert "Traceback" not in response.text
    return body["message"]


# -- routes -----------------------------------------------------------------------------


def test_health_checks_answer_without_a_key(server: EndpointServer) -> None:
    ping = requests.get(f"{server.url}/ping")
    assert ping.status_code == 200
    assert ping.json() == {"status": "ok", "model": {"name": "example", "version": "1"}}
    assert ping.headers["X-Model-Version"] == "1"
    assert requests.get(f"{server.url}/health").json() == {"status": "ok"}


def test_execution_parameters(server: EndpointServer) -> None:
    assert requests.get(f"{server.url}/execution-parameters").json() == {
        "MaxConcurrentTransforms": 2 * THREADS,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": LIMIT_MB,
    }


def test_openapi_describes_every_route(server: EndpointServer) -> None:
    document = requests.get(f"{server.url}/openapi.json").json()
    assert set(document["paths"]) == {
        "/ping",
        "/invocations",
        "/execution-parameters",
        "/health",
        "/metrics",
        "/openapi.json",
        "/version",
    }
    openapi_spec_validator.validate(document)


def test_unknown_route_and_method(http: requests.Session, server: EndpointServer) -> None:
    assert_error(http.get(f"{server.url}/predict"), 404, "not_found")
    response = http.get(f"{server.url}/invocations")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"


# -- predictions ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(ENCODERS))
def test_every_input_type(
    http: requests.Session,
    server: EndpointServer,
    rows: pd.DataFrame,
    expected: np.ndarray,
    shape: str,
) -> None:
    content_type, encode = ENCODERS[shape]
    response = invoke(http, server, encode(rows), content_type)
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == "1"
    answer = decode_answer(response)
    assert answer["id"].tolist() == rows["id"].tolist()
    np.testing.assert_allclose(answer["activation"], expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("accept", [None, "*/*", *codecs.MEDIA_TYPES])
def test_every_answer_type(
    http: requests.Session,
    server: EndpointServer,
    rows: pd.DataFrame,
    expected: np.ndarray,
    accept: str | None,
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = invoke(http, server, parquet_bytes(rows), codecs.PARQUET, **headers)
    assert response.status_code == 200, response.text
    wanted = codecs.JSON if accept in (None, "*/*") else accept
    assert codecs.media_type(response.headers["Content-Type"]) == wanted
    answer = decode_answer(response)
    assert answer["id"].tolist() == rows["id"].tolist()
    np.testing.assert_allclose(answer["activation"], expected, rtol=0, atol=1e-9)


# -- client mistakes --------------------------------------------------------------------


@pytest.mark.parametrize("content_type", codecs.MEDIA_TYPES)
def test_empty_body(http: requests.Session, server: EndpointServer, content_type: str) -> None:
    assert_error(invoke(http, server, b"", content_type), 400, "malformed_body")


@pytest.mark.parametrize("content_type", codecs.MEDIA_TYPES)
def test_garbage_bytes(http: requests.Session, server: EndpointServer, content_type: str) -> None:
    response = invoke(http, server, b"\x00\xff\xfe\x89PNG\r\n\x1a\n\x00garbage", content_type)
    assert_error(response, 400, "malformed_body")


@pytest.mark.parametrize("shape", ["parquet", "csv", "dataframe_records", "jsonlines"])
def test_missing_feature_columns_are_listed(
    http: requests.Session, server: EndpointServer, rows: pd.DataFrame, shape: str
) -> None:
    content_type, encode = ENCODERS[shape]
    dropped = ["mean_radius", "worst_symmetry"]
    message = assert_error(
        invoke(http, server, encode(rows.drop(columns=dropped)), content_type), 422, "invalid_data"
    )
    assert all(name in message for name in dropped), message


@pytest.mark.parametrize("shape", ["parquet", "csv", "dataframe_split", "jsonlines"])
def test_strings_in_numeric_columns(
    http: requests.Session, server: EndpointServer, rows: pd.DataFrame, shape: str
) -> None:
    content_type, encode = ENCODERS[shape]
    frame = rows.astype({"mean_area": str})
    frame.loc[3, "mean_area"] = "large"
    message = assert_error(invoke(http, server, encode(frame), content_type), 422, "invalid_data")
    assert "mean_area" in message


@pytest.mark.parametrize(
    "document",
    [
        {"rows": []},
        [[1, 2], [3]],
        {"dataframe_split": {"columns": "a"}},
        {"instances": "x"},
        {"instances": [[1]], "inputs": [[1]]},
        3,
    ],
)
def test_wrong_json_shape(http: requests.Session, server: EndpointServer, document) -> None:
    assert_error(invoke(http, server, orjson.dumps(document), codecs.JSON), 400, "malformed_body")


def oversized_csv(rows: pd.DataFrame) -> bytes:
    text = rows.to_csv(index=False).encode()
    header, body = text.split(b"\n", 1)
    copies = LIMIT_MB * 1024 * 1024 // len(body) + 2
    return header + b"\n" + body * copies


def test_body_over_the_limit(
    http: requests.Session, server: EndpointServer, rows: pd.DataFrame
) -> None:
    data = oversized_csv(rows)
    assert len(data) > LIMIT_MB * 1024 * 1024
    assert_error(invoke(http, server, data, codecs.CSV), 413, "payload_too_large")
    chunks = (data[i : i + 65536] for i in range(0, len(data), 65536))
    chunked = invoke(http, server, chunks, codecs.CSV)
    assert chunked.request.headers.get("Transfer-Encoding") == "chunked"
    assert_error(chunked, 413, "payload_too_large")
    at_limit = data[: LIMIT_MB * 1024 * 1024].rsplit(b"\n", 1)[0] + b"\n"
    assert invoke(http, server, at_limit, codecs.CSV).status_code == 200


def test_huge_content_length_is_refused_without_reading_the_body(server: EndpointServer) -> None:
    """The server answers 413 although only 3 of the announced 100 MB were sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(
            b"POST /invocations HTTP/1.1\r\nHost: test\r\nContent-Type: text/csv\r\n"
            b"X-Api-Key: " + KEY.encode() + b"\r\nContent-Length: 104857600\r\n\r\nabc"
        )
        answer = read_answer(connection)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"error":"payload_too_large"' in answer


def read_answer(connection: socket.socket) -> bytes:
    """One whole response (a JSON body) from a raw socket."""
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        part = connection.recv(65536)
        if not part:
            break
        answer += part
    return answer


def test_unsupported_content_type(http: requests.Session, server: EndpointServer) -> None:
    assert_error(invoke(http, server, b"<rows/>", "application/xml"), 415, "unsupported_media_type")


def test_unacceptable_accept(
    http: requests.Session, server: EndpointServer, rows: pd.DataFrame
) -> None:
    response = invoke(http, server, parquet_bytes(rows), codecs.PARQUET, Accept="image/png")
    assert_error(response, 406, "not_acceptable")


@pytest.mark.parametrize(
    "headers", [{}, {"X-Api-Key": "nope"}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}]
)
def test_missing_or_wrong_api_key(server: EndpointServer, rows: pd.DataFrame, headers) -> None:
    response = requests.post(
        f"{server.url}/invocations",
        data=parquet_bytes(rows),
        headers={"Content-Type": codecs.PARQUET, **headers},
    )
    assert_error(response, 401, "unauthorized")
    assert_error(requests.get(f"{server.url}/metrics", headers=headers), 401, "unauthorized")


def test_bearer_key(server: EndpointServer, rows: pd.DataFrame) -> None:
    response = requests.post(
        f"{server.url}/invocations",
        data=parquet_bytes(rows),
        headers={"Content-Type": codecs.PARQUET, "Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 200


# -- metrics ----------------------------------------------------------------------------


def test_metrics_sum_over_processes(server: EndpointServer, rows: pd.DataFrame) -> None:
    headers = {"X-Api-Key": KEY}

    def scrape() -> str:
        response = requests.get(f"{server.url}/metrics", headers=headers)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.text

    before = scrape()
    body = parquet_bytes(rows.head(3))
    for _ in range(20):  # a new connection each: the kernel spreads them over the processes
        response = requests.post(
            f"{server.url}/invocations",
            data=body,
            headers={**headers, "Content-Type": codecs.PARQUET, "Connection": "close"},
        )
        assert response.status_code == 200
    requests.post(
        f"{server.url}/invocations", data=b"", headers={**headers, "Content-Type": codecs.CSV}
    )
    after = scrape()
    rows_before = metric(before, "endpoint_predicted_rows_total")
    assert metric(after, "endpoint_predicted_rows_total") == rows_before + 60
    ok = {"route": "/invocations", "code": "200"}
    assert metric(after, "endpoint_requests_total", **ok) >= 20 + (
        metric(before, "endpoint_requests_total", **ok) or 0
    )
    assert metric(after, "endpoint_errors_total", error="malformed_body") >= 1
    assert metric(after, "endpoint_errors_total", error="internal_error") is None
    assert metric(after, "endpoint_workers") == 2
    assert metric(after, "endpoint_model_info", name="example", version="1") == 2
    assert metric(after, "endpoint_model_reload_failures_total") == 0
    assert metric(after, "endpoint_model_reload_error", error="") == 0
    assert "endpoint_request_duration_seconds_bucket" in after


# -- processes --------------------------------------------------------------------------


def test_a_dead_process_is_replaced(tmp_path: Path, bundle_dir: Path) -> None:
    endpoint = EndpointServer(tmp_path / "server.log", model_uri=bundle_dir)
    try:
        endpoint.start()
        first = endpoint.children()
        assert len(first) == 2
        victim = first[0]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_for(
            lambda: (pids := endpoint.children()) and len(pids) == 2 and victim not in pids,
            30,
            "a replacement server process",
        )
        assert replaced
        wait_for(lambda: ") ready" in endpoint.log(), 60, "the replacement to load the model")
        for _ in range(10):
            ping = requests.get(f"{endpoint.url}/ping", headers={"Connection": "close"})
            assert ping.status_code == 200
        assert "was killed by SIGKILL" in endpoint.log()
        endpoint.terminate()
        assert endpoint.wait(30) == 0
    finally:
        endpoint.kill()


SLOW_MODEL = '''
import os
import time


class SlowModel:
    """Delegates to a real model after marking that a prediction is under way."""

    def __init__(self, inner, seconds):
        self.inner = inner
        self.seconds = seconds

    def predict_proba(self, features):
        open(os.environ["SLOW_MODEL_MARKER"], "a").close()
        time.sleep(self.seconds)
        return self.inner.predict_proba(features)
'''


def slow_bundle(folder: Path, bundle_dir: Path, seconds: float) -> Path:
    """The example bundle with its model wrapped in one that takes `seconds` to predict."""
    module_path = folder / "slow_model.py"
    module_path.write_text(SLOW_MODEL)
    spec = importlib.util.spec_from_file_location("slow_model", module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["slow_model"] = module
    spec.loader.exec_module(module)
    inner = load_bundle(str(bundle_dir))
    buffer = io.BytesIO()
    joblib.dump(module.SlowModel(inner.model, seconds), buffer)
    files = {
        "model": ("model.joblib", buffer.getvalue(), "joblib"),
        **{
            role: (name, (bundle_dir / name).read_bytes(), fmt)
            for role, name, fmt in [
                ("scaler", "scaler.joblib", "joblib"),
                ("mean", "mean.json", None),
                ("columns", "columns.json", None),
            ]
        },
    }
    out = folder / "slow-bundle"
    write_bundle(str(out), files, name="example", version="slow")
    return out


def slow_endpoint(
    folder: Path, bundle_dir: Path, seconds: float, **options: object
) -> tuple[EndpointServer, Path]:
    """A server of slow_bundle, and the file that appears once a prediction started."""
    marker = folder / "predicting"
    endpoint = EndpointServer(
        folder / "server.log",
        model_uri=slow_bundle(folder, bundle_dir, seconds),
        extra_path=[folder],
        slow_model_marker=marker,
        **options,
    )
    return endpoint, marker


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_slow_model_does_not_hold_up_health_checks(
    tmp_path: Path, bundle_dir: Path, rows: pd.DataFrame
) -> None:
    """One process: /ping answers while a prediction of that process is under way."""
    endpoint, marker = slow_endpoint(tmp_path, bundle_dir, 1.5, workers=1)
    predictions: list[int] = []

    def call() -> None:
        answer = requests.post(
            f"{endpoint.url}/invocations",
            data=rows.head(1).to_json(orient="records"),
            headers={"Content-Type": codecs.JSON},
            timeout=60,
        )
        predictions.append(answer.status_code)

    try:
        endpoint.start()
        for _ in range(3):
            call()
        marker.unlink()
        client = threading.Thread(target=call)
        client.start()
        wait_for(marker.exists, 30, "the slow prediction to start")
        assert requests.get(f"{endpoint.url}/ping", timeout=2).status_code == 200
        assert client.is_alive(), "/ping should have answered while the prediction ran"
        client.join(30)
    finally:
        endpoint.kill()
    assert predictions == [200] * 4


def test_sigterm_lets_the_request_in_flight_finish(
    tmp_path: Path, bundle_dir: Path, rows: pd.DataFrame, expected: np.ndarray
) -> None:
    endpoint, marker = slow_endpoint(tmp_path, bundle_dir, 4)
    answers: list[requests.Response | Exception] = []

    def call() -> None:
        try:
            answers.append(
                requests.post(
                    f"{endpoint.url}/invocations",
                    data=parquet_bytes(rows),
                    headers={"Content-Type": codecs.PARQUET},
                    timeout=60,
                )
            )
        except Exception as exc:
            answers.append(exc)

    try:
        endpoint.start()
        client = threading.Thread(target=call)
        client.start()
        wait_for(marker.exists, 30, "the slow prediction to start")
        signalled = time.monotonic()
        endpoint.terminate()
        wait_for(lambda: refused(endpoint.port), 5, "the server to stop accepting connections")
        assert client.is_alive(), "the request should still be in flight"
        client.join(30)
        assert endpoint.wait(30) == 0
        assert time.monotonic() - signalled < 30
    finally:
        endpoint.kill()
    (answer,) = answers
    assert isinstance(answer, requests.Response), answer
    assert answer.status_code == 200
    assert answer.headers["Connection"] == "close"
    np.testing.assert_allclose(decode_answer(answer)["activation"], expected, rtol=0, atol=1e-9)
    assert "stopped" in endpoint.log()


def test_sigterm_stops_within_30_seconds_even_when_a_request_hangs(
    tmp_path: Path, bundle_dir: Path, rows: pd.DataFrame
) -> None:
    endpoint, marker = slow_endpoint(tmp_path, bundle_dir, 120, workers=1)
    try:
        endpoint.start()
        answers: list[object] = []

        def call() -> None:
            try:
                answers.append(
                    requests.post(
                        f"{endpoint.url}/invocations",
                        data=parquet_bytes(rows),
                        headers={"Content-Type": codecs.PARQUET},
                        timeout=60,
                    )
                )
            except requests.RequestException as exc:
                answers.append(exc)

        client = threading.Thread(target=call, daemon=True)
        client.start()
        wait_for(marker.exists, 30, "the slow prediction to start")
        signalled = time.monotonic()
        endpoint.terminate()
        assert endpoint.wait(35) == 0
        assert time.monotonic() - signalled < 30
        client.join(10)
    finally:
        endpoint.kill()
    assert len(answers) == 1
    assert isinstance(answers[0], requests.ConnectionError), answers
