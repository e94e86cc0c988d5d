"""The WSGI app through werkzeug's test client, with a tiny in-memory bundle."""

import io
import logging
import os
from types import SimpleNamespace

import numpy as np
import openapi_spec_validator
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from werkzeug.test import Client

from service import codecs, errors, metrics, openapi
from service.artifacts import Bundle
from service.model import predict
from service.web import AppConfig, create_app, error_response
from tests.support import wait_for

COLUMNS = ("x1", "x2", "x3")
LIMIT = 4096
KEY = "s3cret-key"


def tiny_bundle(version: str = "1", seed: int = 0) -> Bundle:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(60, 3))
    target = (features @ np.array([1.0, -2.0, 0.5]) > 0).astype(int)
    scaler = StandardScaler().fit(features)
    model = LogisticRegression().fit(scaler.transform(features), target)
    means = dict(zip(COLUMNS, features.mean(axis=0).tolist(), strict=True))
    return Bundle(
        name="tiny",
        version=version,
        model=model,
        scaler=scaler,
        mean=means,
        columns=COLUMNS,
        id_column="id",
        output_column="activation",
        etag=f"etag-{version}",
    )


class FakeStore:
    def __init__(self, bundle: Bundle | None, last_error: str | None = None) -> None:
        self.current = bundle
        self.last_error = last_error
        self.reloads = 0
        self.reload_failures = 0


ROWS = pd.DataFrame(
    {"id": [10, 11, 12], "x3": [0.5, None, -1.0], "x1": [1.0, 2.0, None], "x2": [0.0, 1.5, 2.5]}
)


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return tiny_bundle()


@pytest.fixture
def store(bundle: Bundle) -> FakeStore:
    return FakeStore(bundle)


def make_client(store: FakeStore, api_key: str | None = None, recorder=None) -> Client:
    config = AppConfig(max_request_bytes=LIMIT, api_key=api_key, max_concurrent=8, max_payload_mb=1)
    return Client(create_app(store, config, recorder))


@pytest.fixture
def client(store: FakeStore) -> Client:
    return make_client(store)


def expected(bundle: Bundle, frame: pd.DataFrame = ROWS) -> np.ndarray:
    features = frame[list(COLUMNS)].fillna(pd.Series(bundle.mean)).to_numpy(dtype=float)
    return bundle.model.predict_proba(bundle.scaler.transform(features))[:, 1]


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def records(frame: pd.DataFrame) -> list[dict]:
    return [
        {k: (None if pd.isna(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


BODIES = {
    "parquet": (codecs.PARQUET, lambda f: parquet_bytes(f)),
    "x-parquet": (codecs.X_PARQUET, lambda f: parquet_bytes(f)),
    "csv": (codecs.CSV, lambda f: f.to_csv(index=False).encode()),
    "csv-charset": ("text/csv; charset=utf-8", lambda f: f.to_csv(index=False).encode()),
    "dataframe_split": (
        codecs.JSON,
        lambda f: orjson.dumps(
            {
                "dataframe_split": {
                    "columns": list(f.columns),
                    "data": [list(r.values()) for r in records(f)],
                }
            }
        ),
    ),
    "dataframe_records": (codecs.JSON, lambda f: orjson.dumps({"dataframe_records": records(f)})),
    "instances": (codecs.JSON, lambda f: orjson.dumps({"instances": records(f)})),
    "inputs": (codecs.JSON, lambda f: orjson.dumps({"inputs": records(f)})),
    "record-list": (codecs.JSON, lambda f: orjson.dumps(records(f))),
    "jsonlines": (codecs.JSONLINES, lambda f: b"\n".join(orjson.dumps(r) for r in records(f))),
    "ndjson": (codecs.NDJSON, lambda f: b"\n".join(orjson.dumps(r) for r in records(f))),
}


def read_predictions(response) -> pd.DataFrame:
    kind = codecs.media_type(response.headers["Content-Type"])
    if kind in (codecs.PARQUET, codecs.X_PARQUET):
        return pq.read_table(pa.BufferReader(response.data)).to_pandas()
    if kind == codecs.CSV:
        return pd.read_csv(io.BytesIO(response.data))
    if kind in (codecs.JSONLINES, codecs.NDJSON):
        return pd.DataFrame([orjson.loads(line) for line in response.data.splitlines()])
    return pd.DataFrame(orjson.loads(response.data)["predictions"])


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.data
    assert response.headers["Content-Type"] == "application/json"
    body = orjson.loads(response.data)
    assert body["error"] == code
    assert body["message"]
    assert "Traceback" not in body["message"]
    return body


# -- routes ---------------------------------------------------------------------------


def test_ping_reports_the_model(client: Client) -> None:
    response = client.get("/ping")
    assert response.status_code == 200
    assert orjson.loads(response.data) == {
        "status": "ok",
        "model": {"name": "tiny", "version": "1"},
    }
    assert response.headers["X-Model-Version"] == "1"


def test_ping_is_503_without_a_model_and_says_why() -> None:
    client = make_client(FakeStore(None, last_error="manifest.json does not exist"))
    body = assert_error(client.get("/ping"), 503, "model_unavailable")
    assert "manifest.json does not exist" in body["message"]
    assert client.get("/health").status_code == 200
    assert_error(
        client.post("/invocations", data=b"x", content_type="text/csv"), 503, "model_unavailable"
    )


def test_head_ping_works_for_load_balancers(client: Client) -> None:
    assert client.head("/ping").status_code == 200


def test_execution_parameters(client: Client) -> None:
    response = client.get("/execution-parameters")
    assert orjson.loads(response.data) == {
        "MaxConcurrentTransforms": 8,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 1,
    }


def test_unknown_route_is_404_and_wrong_method_405(client: Client) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    response = client.get("/invocations")
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "POST"
    assert "GET" in client.post("/ping").headers["Allow"]


def test_openapi_document_is_valid_and_lists_every_route(client: Client) -> None:
    document = orjson.loads(client.get("/openapi.json").data)
    assert set(document["paths"]) == set(metrics.ROUTES) - {"other"}
    assert document["components"]["schemas"]["Error"]["required"] == ["error", "message"]
    openapi_spec_validator.validate(document)
    openapi_spec_validator.validate(openapi.document(api_key_required=True))


# -- predictions ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(BODIES))
def test_every_input_type_predicts_the_same(client: Client, bundle: Bundle, shape: str) -> None:
    content_type, encode = BODIES[shape]
    response = client.post("/invocations", data=encode(ROWS), content_type=content_type)
    assert response.status_code == 200, response.data
    result = read_predictions(response)
    assert result["id"].tolist() == [10, 11, 12]
    np.testing.assert_allclose(result["activation"], expected(bundle), rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        result["activation"], predict(bundle, ROWS)["activation"], rtol=0, atol=1e-12
    )


@pytest.mark.parametrize(
    ("accept", "answer"),
    [
        (None, codecs.JSON),
        ("*/*", codecs.JSON),
        (codecs.JSON, codecs.JSON),
        (codecs.PARQUET, codecs.PARQUET),
        (codecs.X_PARQUET, codecs.X_PARQUET),
        (codecs.CSV, codecs.CSV),
        (codecs.JSONLINES, codecs.JSONLINES),
        (codecs.NDJSON, codecs.NDJSON),
        ("text/html;q=0.9, text/csv;q=0.5", codecs.CSV),
    ],
)
def test_answer_type_follows_accept(
    client: Client, bundle: Bundle, accept: str | None, answer: str
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = client.post(
        "/invocations", data=parquet_bytes(ROWS), content_type=codecs.PARQUET, headers=headers
    )
    assert response.status_code == 200, response.data
    assert codecs.media_type(response.headers["Content-Type"]) == answer
    assert response.headers["X-Model-Version"] == "1"
    np.testing.assert_allclose(
        read_predictions(response)["activation"], expected(bundle), atol=1e-9
    )


def test_the_bundle_is_taken_once_per_request(bundle: Bundle) -> None:
    """A hot swap between two reads of `current` must not mix models in one answer."""
    newer = tiny_bundle(version="2", seed=5)

    class SwappingStore(FakeStore):
        reads = 0

        @property
        def current(self) -> Bundle:
            self.reads += 1
            return bundle if self.reads == 1 else newer

        @current.setter
        def current(self, value: Bundle) -> None:
            pass

    store = SwappingStore(bundle)
    response = make_client(store).post(
        "/invocations", data=parquet_bytes(ROWS), content_type=codecs.PARQUET
    )
    assert store.reads == 1
    assert response.headers["X-Model-Version"] == "1"
    np.testing.assert_allclose(
        read_predictions(response)["activation"], expected(bundle), atol=1e-9
    )


# -- client mistakes --------------------------------------------------------------------


@pytest.mark.parametrize("content_type", codecs.MEDIA_TYPES)
def test_empty_body_is_400(client: Client, content_type: str) -> None:
    assert_error(
        client.post("/invocations", data=b"", content_type=content_type), 400, "malformed_body"
    )


@pytest.mark.parametrize("content_type", codecs.MEDIA_TYPES)
@pytest.mark.parametrize("garbage", [b"\x00\xff\xfe\x89PNG\r\n\x1a\n", b"hello world", b"{[\x01"])
def test_garbage_is_a_4xx_never_a_500(client: Client, content_type: str, garbage: bytes) -> None:
    response = client.post("/invocations", data=garbage, content_type=content_type)
    assert response.status_code in (400, 422), response.data
    assert orjson.loads(response.data)["error"] in ("malformed_body", "invalid_data")


@pytest.mark.parametrize("shape", ["parquet", "csv", "record-list", "jsonlines"])
def test_missing_columns_are_422_and_listed(client: Client, shape: str) -> None:
    content_type, encode = BODIES[shape]
    response = client.post(
        "/invocations", data=encode(ROWS.drop(columns=["x1", "x3"])), content_type=content_type
    )
    body = assert_error(response, 422, "invalid_data")
    assert "x1" in body["message"]
    assert "x3" in body["message"]


@pytest.mark.parametrize("shape", ["csv", "record-list", "parquet"])
def test_strings_in_numeric_columns_are_422(client: Client, shape: str) -> None:
    content_type, encode = BODIES[shape]
    frame = ROWS.astype({"x2": str})
    frame.loc[1, "x2"] = "lots"
    body = assert_error(
        client.post("/invocations", data=encode(frame), content_type=content_type),
        422,
        "invalid_data",
    )
    assert "x2" in body["message"]


@pytest.mark.parametrize(
    "document", [{"foo": 1}, [1, 2, 3], {"dataframe_split": {"columns": "x1"}}, "text", 42]
)
def test_wrong_json_shape_is_400(client: Client, document: object) -> None:
    response = client.post("/invocations", data=orjson.dumps(document), content_type=codecs.JSON)
    assert_error(response, 400, "malformed_body")


def test_unsupported_or_missing_content_type_is_415(client: Client) -> None:
    body = assert_error(
        client.post("/invocations", data=b"<rows/>", content_type="application/xml"),
        415,
        "unsupported_media_type",
    )
    assert "text/csv" in body["message"]
    assert_error(client.post("/invocations", data=b"a,b"), 415, "unsupported_media_type")


def test_accept_it_cannot_produce_is_406(client: Client) -> None:
    response = client.post(
        "/invocations",
        data=parquet_bytes(ROWS),
        content_type=codecs.PARQUET,
        headers={"Accept": "image/png"},
    )
    assert_error(response, 406, "not_acceptable")


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.delivered = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.delivered += len(data)
        return data


def test_oversized_body_with_length_is_413_before_reading(client: Client) -> None:
    stream = CountingStream(b"x" * (LIMIT * 3))
    response = client.post(
        "/invocations",
        input_stream=stream,
        content_length=LIMIT * 3,
        content_type=codecs.CSV,
    )
    assert_error(response, 413, "payload_too_large")
    assert stream.delivered == 0


def test_oversized_chunked_body_is_413_after_at_most_limit_plus_one(client: Client) -> None:
    stream = CountingStream(b"x" * (LIMIT * 3))
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/invocations",
        "CONTENT_TYPE": codecs.CSV,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": stream,
        "wsgi.input_terminated": True,
    }
    status = []
    body = client.application(environ, lambda line, headers: status.append(line))
    assert status == ["413 Request Entity Too Large"]
    assert orjson.loads(b"".join(body))["error"] == "payload_too_large"
    assert stream.delivered <= LIMIT + 1


def test_chunked_body_within_limit_is_read(client: Client, bundle: Bundle) -> None:
    data = ROWS.to_csv(index=False).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/invocations",
        "CONTENT_TYPE": codecs.CSV,
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(data),
    }
    status = []
    body = b"".join(client.application(environ, lambda line, headers: status.append(line)))
    assert status == ["200 OK"]
    activation = [p["activation"] for p in orjson.loads(body)["predictions"]]
    np.testing.assert_allclose(activation, expected(bundle), atol=1e-9)


def test_body_exactly_at_the_limit_is_accepted(client: Client) -> None:
    data = b"id,x1,x2,x3\n" + b"1,1,2,3\n" * ((LIMIT - 100) // 8)
    data += b"1,1,2," + b"3" * (LIMIT - len(data) - 7) + b"\n"
    assert len(data) == LIMIT
    assert client.post("/invocations", data=data, content_type=codecs.CSV).status_code == 200


# -- API key ----------------------------------------------------------------------------


@pytest.fixture
def guarded(store: FakeStore) -> Client:
    return make_client(store, api_key=KEY)


def post_rows(client: Client, headers: dict[str, str]):
    return client.post(
        "/invocations", data=parquet_bytes(ROWS), content_type=codecs.PARQUET, headers=headers
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Api-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}],
)
def test_missing_or_wrong_key_is_401(guarded: Client, headers: dict[str, str]) -> None:
    response = post_rows(guarded, headers)
    assert_error(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert_error(guarded.get("/metrics", headers=headers), 401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [{"X-Api-Key": KEY}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"bearer {KEY}"}],
)
def test_the_key_in_either_header_is_accepted(guarded: Client, headers: dict[str, str]) -> None:
    assert post_rows(guarded, headers).status_code == 200
    assert guarded.get("/metrics", headers=headers).status_code == 200


@pytest.mark.parametrize("path", ["/ping", "/health", "/execution-parameters", "/openapi.json"])
def test_health_checks_and_descriptions_need_no_key(guarded: Client, path: str) -> None:
    assert guarded.get(path).status_code == 200


def test_openapi_marks_the_guarded_routes(guarded: Client) -> None:
    document = orjson.loads(guarded.get("/openapi.json").data)
    assert "security" in document["paths"]["/invocations"]["post"]
    assert "security" not in document["paths"]["/ping"]["get"]


# -- failures ---------------------------------------------------------------------------


class BrokenModel:
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        raise RuntimeError("secret internals")


def test_unexpected_failure_is_500_without_a_traceback(
    bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    broken = Bundle(**{**bundle.__dict__, "model": BrokenModel()})
    client = make_client(FakeStore(broken))
    with caplog.at_level(logging.ERROR, logger="service.web"):
        response = post_rows(client, {})
    body = assert_error(response, 500, "internal_error")
    assert "secret internals" not in body["message"]
    assert "secret internals" in caplog.text
    assert "Traceback" in caplog.text


@pytest.mark.parametrize(
    "error",
    [
        errors.MalformedBody,
        errors.Unauthorized,
        errors.NotFound,
        errors.MethodNotAllowed,
        errors.NotAcceptable,
        errors.PayloadTooLarge,
        errors.UnsupportedMediaType,
        errors.InvalidData,
        errors.ModelError,
        errors.HashMismatch,
        errors.ServiceError,
    ],
)
def test_errors_map_to_their_status_and_code(error: type[errors.ServiceError]) -> None:
    response = error_response(error("what to fix"))
    assert response.status == error.status
    assert orjson.loads(response.body) == {"error": error.code, "message": "what to fix"}


# -- metrics ----------------------------------------------------------------------------


def test_metrics_count_requests_rows_errors_and_the_model(store: FakeStore) -> None:
    client = make_client(store)
    post_rows(client, {})
    post_rows(client, {})
    client.post("/invocations", data=b"", content_type=codecs.CSV)
    client.get("/nope")
    store.last_error = "model.joblib in /m has sha256 abc, but the manifest says def"
    store.reload_failures = 2
    text = client.get("/metrics").data.decode()
    assert 'endpoint_requests_total{route="/invocations",code="200"} 2' in text
    assert 'endpoint_requests_total{route="/invocations",code="400"} 1' in text
    assert 'endpoint_requests_total{route="other",code="404"} 1' in text
    assert 'endpoint_request_duration_seconds_count{route="/invocations"} 3' in text
    assert 'endpoint_request_duration_seconds_bucket{route="/invocations",le="+Inf"} 3' in text
    assert "endpoint_predicted_rows_total 6" in text
    assert 'endpoint_errors_total{error="malformed_body"} 1' in text
    assert 'endpoint_errors_total{error="not_found"} 1' in text
    assert 'endpoint_model_info{name="tiny",version="1"} 1' in text
    assert "endpoint_model_reload_failures_total 2" in text
    assert 'endpoint_model_reload_error{error="model.joblib in /m has sha256 abc' in text
    assert text.endswith("\n")


def test_metrics_sum_the_slots_of_every_process() -> None:
    shared = metrics.Metrics(slots=3)
    shared.slot(0).observe(1, 200, 0.002, rows=5)
    pid = os.fork()
    if pid == 0:
        try:
            child = shared.slot(2)
            child.observe(1, 200, 0.004, rows=7)
            child.observe(1, 422, 0.001, error="invalid_data")
            child.sync_store(FakeStore(tiny_bundle(version="9")))
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    text = shared.render().decode()
    assert 'endpoint_requests_total{route="/invocations",code="200"} 2' in text
    assert "endpoint_predicted_rows_total 12" in text
    assert 'endpoint_errors_total{error="invalid_data"} 1' in text
    assert 'endpoint_model_info{name="tiny",version="9"} 1' in text
    assert "endpoint_workers 1" in text
    shared.clear(2)
    assert "endpoint_workers 0" in shared.render().decode()
    assert "endpoint_predicted_rows_total 12" in shared.render().decode()


def test_metrics_label_values_are_escaped_and_long_errors_cut() -> None:
    shared = metrics.Metrics()
    store = FakeStore(None, last_error='bad "quote" \\ and\nnewline ' + "x" * 10000)
    shared.slot(0).sync_store(store)
    line = next(
        line for line in shared.render().decode().splitlines() if "model_reload_error{" in line
    )
    assert '\\"quote\\" \\\\ and\\nnewline' in line
    assert len(line) < 2000


# -- server -----------------------------------------------------------------------------


def test_the_server_disables_nagle_on_accepted_connections(store: FakeStore) -> None:
    """Small responses must not wait for the delayed-ACK timer (TCP_NODELAY)."""
    import socket

    from waitress import wasyncore

    from service.server import ProcessServer, bind

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=1, api_key=None)
    process = ProcessServer(create_app(store, settings), listener, settings)
    process.open()
    client = socket.create_connection(listener.getsockname())
    try:
        for _ in range(50):
            wasyncore.poll2(0.1, process.server._map)
            if process.server.active_channels:
                break
        (channel,) = process.server.active_channels.values()
        assert channel.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        client.close()
        process.drain(seconds=1)
        listener.close()


def _queue_record() -> logging.LogRecord:
    return logging.LogRecord(
        "waitress.queue", logging.WARNING, "", 0, "Task queue depth is %d", (1,), None
    )


def test_queue_depth_warning_is_summarised():
    from service.server import QueueDepthSummary

    summary = QueueDepthSummary(interval=60)
    assert summary.filter(_queue_record())
    assert not any(summary.filter(_queue_record()) for _ in range(5))
    summary.next_line = 0.0
    last = _queue_record()
    assert summary.filter(last)
    assert last.getMessage() == "Task queue depth is 1 (and 5 times more since the last such line)"


def test_a_process_takes_a_connection_unless_another_holds_fewer() -> None:
    from service.server import ConnectionCounts

    counts = ConnectionCounts(3)
    first, second = counts.balance(0), counts.balance(1)
    assert first.my_turn(0)  # slots that do not accept do not count
    assert second.my_turn(0)
    assert not first.my_turn(1)
    assert second.my_turn(1)
    second.close()
    assert first.my_turn(1)
    counts.clear(0)
    assert set(counts.cells) == {ConnectionCounts.NOT_ACCEPTING}


def test_a_busier_process_leaves_a_new_connection_to_another_then_takes_it(
    store: FakeStore,
) -> None:
    """The other process gets ACCEPT_DEFER_SECONDS; if it does not accept, this one does."""
    import socket
    import time

    from service.server import ACCEPT_DEFER_SECONDS, ConnectionCounts, ProcessServer, bind

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=1, max_request_mb=1, workers=2, api_key=None)
    counts = ConnectionCounts(2)
    counts.cells[1] = 0  # an idle sibling that never accepts
    process = ProcessServer(create_app(store, settings), listener, settings, counts.balance(0))
    process.open()
    clients = [socket.create_connection(listener.getsockname())]
    try:
        _poll_until(process, channels=1)
        clients.append(socket.create_connection(listener.getsockname()))
        started = time.monotonic()
        _poll_until(process, channels=2)
        assert time.monotonic() - started >= ACCEPT_DEFER_SECONDS
        assert counts.cells[0] >= 1
    finally:
        for client in clients:
            client.close()
        process.drain(seconds=1)
        listener.close()
    assert counts.cells[0] == ConnectionCounts.NOT_ACCEPTING


def _poll_until(process, channels: int) -> None:
    from waitress import wasyncore

    for _ in range(200):
        wasyncore.poll2(process._poll_timeout(), process.server._map)
        if len(process.server.active_channels) >= channels:
            return
    raise AssertionError(f"the server did not accept {channels} connections")


class ThreadReporter:
    """A WSGI app that answers with the id of the thread it ran on; b"slow" takes longer."""

    metrics = None

    def __call__(self, environ, start_response):
        import threading
        import time

        from service import server

        if environ["wsgi.input"].read() == b"slow":
            time.sleep(server.INLINE_SLOW_SECONDS * 2)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(threading.get_ident()).encode()]


@pytest.fixture
def loop_server(monkeypatch):
    """A ProcessServer running ThreadReporter, its loop on a thread of this test."""
    import http.client
    import threading

    from service import server
    from service.server import ProcessServer, bind

    monkeypatch.setattr(server, "INLINE_SLOW_SECONDS", 0.25)  # no hiccup counts as slow

    listener = bind("127.0.0.1", 0)
    settings = SimpleNamespace(threads=2, max_request_mb=1, workers=1, api_key=None)
    process = ProcessServer(ThreadReporter(), listener, settings)
    process.open()
    loop = threading.Thread(target=process.serve, args=(lambda: None,), daemon=True)
    loop.start()
    connection = http.client.HTTPConnection(*listener.getsockname(), timeout=10)

    def call(body: bytes | None = b"row", method: str = "POST") -> int:
        connection.request(method, "/invocations", body=body)
        answer = connection.getresponse()
        assert answer.status == 200
        return int(answer.read())

    try:
        yield SimpleNamespace(call=call, loop=loop, process=process)
    finally:
        connection.close()
        process.stop()
        loop.join(5)
        process.drain(seconds=1)
        listener.close()


def test_small_posts_run_on_the_loop_once_proved_fast(loop_server) -> None:
    from service.server import INLINE_AFTER_FAST

    loop = loop_server.loop.ident
    first = [loop_server.call() for _ in range(INLINE_AFTER_FAST)]
    assert loop not in first, "a request must prove fast on the threads first"
    assert [loop_server.call() for _ in range(3)] == [loop] * 3


def test_a_slow_request_sends_small_posts_back_to_the_threads(loop_server) -> None:
    from service.server import INLINE_AFTER_FAST

    loop = loop_server.loop.ident
    for _ in range(INLINE_AFTER_FAST):
        loop_server.call()
    assert loop_server.call(b"slow") == loop  # the one request a slow model may hold it
    assert loop_server.call() != loop
    assert loop_server.call(b"slow") != loop


def test_gets_and_big_bodies_always_run_on_the_threads(loop_server) -> None:
    from service.server import INLINE_AFTER_FAST, INLINE_MAX_BYTES

    loop = loop_server.loop.ident
    for _ in range(INLINE_AFTER_FAST):
        loop_server.call()
    assert loop_server.call(None, "GET") != loop
    assert loop_server.call(b"x" * (INLINE_MAX_BYTES + 1)) != loop
    assert loop_server.call() == loop


def test_the_header_and_a_small_body_leave_in_one_send(loop_server, monkeypatch) -> None:
    from service import server

    sizes: list[int] = []
    send = server._Channel.send

    def counting(channel, data, **options):
        sent = send(channel, data, **options)
        sizes.append(sent)
        return sent

    monkeypatch.setattr(server._Channel, "send", counting, raising=False)
    for _ in range(6):  # on the threads, then on the loop
        loop_server.call()
    wait_for(lambda: len(sizes) >= 6, 5, "the last send to be counted")
    assert len(sizes) == 6, sizes  # not a header send and a body send each
