"""The WSGI app through werkzeug's test client, with a tiny in-memory bundle."""

import io
import logging
import os
import re
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
from service.web import AppConfig, config_from_settings, create_app, error_response

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
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "message", "error_code"]
    openapi_spec_validator.validate(document)
    openapi_spec_validator.validate(openapi.document(api_key_required=True))


def test_openapi_and_metrics_list_exactly_the_codes_of_the_error_registry(
    client: Client,
) -> None:
    """service/errors.py is the one list: the document's Error enum, its responses and the
    errors_total series of /metrics all hold exactly its codes, each under its status."""
    document = orjson.loads(client.get("/openapi.json").data)
    registry = {error.code: error.status for error in errors.ENDPOINT_ERRORS}
    assert set(document["components"]["schemas"]["Error"]["properties"]["error"]["enum"]) == set(
        registry
    )
    listed = {}
    for name, response in document["components"]["responses"].items():
        codes = response["description"].rsplit("Codes: ", 1)[1].rstrip(".").split(", ")
        listed.update({code: int(name[1:]) for code in codes})
    assert listed == registry
    recorder = metrics.Metrics().slot(0)
    for code in registry:
        recorder.observe(1, registry[code], 0.001, error=code)
    text = recorder.render().decode()
    counted = set(re.findall(r'endpoint_errors_total\{error="([a-z_]+)"\}', text))
    assert counted == set(registry) == set(metrics.ERROR_CODES)


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


# -- positional input (the features in the bundle's input order, an optional leading id) ---

FEATURES = ROWS[list(COLUMNS)]


def headerless_csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(header=False, index=False).encode()


POSITIONAL = {
    "csv": (codecs.CSV, lambda f: headerless_csv(f)),
    "json-rows": (
        codecs.JSON,
        lambda f: orjson.dumps(f.astype(object).where(f.notna()).values.tolist()),
    ),
    "instances-rows": (
        codecs.JSON,
        lambda f: orjson.dumps({"instances": f.astype(object).where(f.notna()).values.tolist()}),
    ),
    "inputs-rows": (
        codecs.JSON,
        lambda f: orjson.dumps(
            {"inputs": f.astype(object).where(f.notna()).values.tolist(), "params": {"k": 1}}
        ),
    ),
    "jsonlines-rows": (
        codecs.JSONLINES,
        lambda f: b"\n".join(
            orjson.dumps(r) for r in f.astype(object).where(f.notna()).values.tolist()
        ),
    ),
}


@pytest.mark.parametrize("shape", list(POSITIONAL))
@pytest.mark.parametrize("with_id", [False, True], ids=["features", "id-first"])
def test_positional_rows_predict_as_named_ones(
    client: Client, bundle: Bundle, shape: str, with_id: bool
) -> None:
    content_type, encode = POSITIONAL[shape]
    frame = ROWS[["id", *COLUMNS]] if with_id else FEATURES
    response = client.post("/invocations", data=encode(frame), content_type=content_type)
    assert response.status_code == 200, response.data
    result = pd.DataFrame(orjson.loads(response.data)["predictions"])
    assert ("id" in result.columns) is with_id
    if with_id:
        assert result["id"].tolist() == [10, 11, 12]
    np.testing.assert_allclose(result["activation"], expected(bundle), rtol=0, atol=1e-12)


def test_headerless_csv_is_answered_without_header_one_line_per_input_line(
    client: Client, bundle: Bundle
) -> None:
    body = headerless_csv(FEATURES)
    response = client.post(
        "/invocations", data=body, content_type=codecs.CSV, headers={"Accept": codecs.CSV}
    )
    lines = response.data.decode().splitlines()
    assert len(lines) == len(body.decode().splitlines()) == 3
    np.testing.assert_allclose([float(v) for v in lines], expected(bundle), rtol=0, atol=1e-12)
    with_id = client.post(
        "/invocations",
        data=headerless_csv(ROWS[["id", *COLUMNS]]),
        content_type=codecs.CSV,
        headers={"Accept": codecs.CSV},
    )
    assert [line.split(",")[0] for line in with_id.data.decode().splitlines()] == ["10", "11", "12"]
    headed = client.post(
        "/invocations",
        data=ROWS.to_csv(index=False).encode(),
        content_type=codecs.CSV,
        headers={"Accept": codecs.CSV},
    )
    assert headed.data.decode().splitlines()[0] == '"id","activation"'


def test_a_header_is_recognised_by_its_names_never_by_its_values(client: Client) -> None:
    """A headed CSV lacking a column is still headed (422 naming it); a first line of
    text that names no column is a row (422: its values are not numbers)."""
    missing = client.post("/invocations", data=b"id,x1,x2\n1,2,3\n", content_type=codecs.CSV)
    assert "missing columns: x3" in assert_error(missing, 422, "invalid_data")["message"]
    words = client.post("/invocations", data=b"a,b,c\n1,2,3\n", content_type=codecs.CSV)
    assert assert_error(words, 422, "invalid_data")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (codecs.CSV, b"1,2\n3,4\n"),
        (codecs.JSON, b"[[1, 2, 3, 4, 5]]"),
        (codecs.JSON, b'{"instances": [[1]]}'),
        (codecs.JSONLINES, b"[1, 2]\n[3, 4]\n"),
    ],
)
def test_a_row_of_the_wrong_width_names_the_expected_count(
    client: Client, content_type: str, body: bytes
) -> None:
    message = assert_error(
        client.post("/invocations", data=body, content_type=content_type), 422, "invalid_data"
    )["message"]
    assert "send 3" in message and "or 4" in message and "x1, x2, x3" in message


@pytest.mark.parametrize("body", ["\r¦AÅ`".encode(), b"a,b\rc\r1,2\r", b'"x\x00', b"\r\n\r\n"])
def test_odd_csv_first_lines_are_a_4xx_never_a_500(client: Client, body: bytes) -> None:
    """Found by schemathesis: a first line ended by a bare CR made the header check raise."""
    response = client.post("/invocations", data=body, content_type=codecs.CSV)
    assert 400 <= response.status_code < 500, response.data


def test_one_json_object_is_one_record(client: Client, bundle: Bundle) -> None:
    record = {"id": 7, "x1": 1.0, "x2": 0.0, "x3": 0.5}
    for document in (record, {"instances": record}, {"inputs": record}):
        response = client.post(
            "/invocations", data=orjson.dumps(document), content_type=codecs.JSON
        )
        assert orjson.loads(response.data)["predictions"][0]["id"] == 7, document


def test_mlflow_format_keys_exactly_one(client: Client) -> None:
    body = {"instances": [[1, 2, 3]], "inputs": [[1, 2, 3]]}
    response = client.post("/invocations", data=orjson.dumps(body), content_type=codecs.JSON)
    error = assert_error(response, 400, "malformed_body")
    assert "exactly one" in error["message"] and error["error_code"] == "BAD_REQUEST"


def test_version_is_the_services_version(client: Client) -> None:
    response = client.get("/version")
    assert response.status_code == 200
    assert response.data.decode() == __import__("service").__version__
    pyproject = (__import__("pathlib").Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'version = "{response.data.decode()}"' in pyproject


@pytest.mark.parametrize(("megabytes", "payload"), [(1.0, 1), (6.9, 6), (1024.0, 100)])
def test_max_payload_never_above_the_limit_nor_100(megabytes: float, payload: int) -> None:
    settings = SimpleNamespace(max_request_mb=megabytes, workers=1, threads=1, api_key=None)
    assert config_from_settings(settings).max_payload_mb == payload


@pytest.mark.parametrize(
    "document",
    [
        {"foo": [1]},
        {"not": "a serialized dataframe"},
        [[1, 2], [1]],
        {"dataframe_split": {"columns": "x1"}},
        {"instances": [{"x1": 1}], "inputs": [[1, 2, 3]]},
        {"params": {"k": 1}},
        "text",
        42,
    ],
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


@pytest.mark.parametrize(
    "path", ["/ping", "/health", "/execution-parameters", "/openapi.json", "/version"]
)
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
    assert orjson.loads(response.body) == {
        "error": error.code,
        "message": "what to fix",
        "error_code": error.mlflow_code,
    }


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


@pytest.mark.parametrize("accept", [None, "*/*"])
def test_default_accept_answers_requests_that_name_no_type(
    store: FakeStore, bundle: Bundle, accept: str | None
) -> None:
    """SageMaker batch transform sends headerless CSV and, unless the job sets Accept, no
    Accept: with SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT=text/csv the answer is CSV lines, as
    the inference toolkit's transformer.py gives for no Accept or */*."""
    config = AppConfig(max_request_bytes=LIMIT, default_accept=codecs.CSV)
    client = Client(create_app(store, config))
    headers = {} if accept is None else {"Accept": accept}
    response = client.post(
        "/invocations", data=headerless_csv(FEATURES), content_type=codecs.CSV, headers=headers
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == codecs.CSV
    lines = response.data.decode().splitlines()
    np.testing.assert_allclose([float(v) for v in lines], expected(bundle), rtol=0, atol=1e-12)
    named = client.post(
        "/invocations",
        data=headerless_csv(FEATURES),
        content_type=codecs.CSV,
        headers={"Accept": codecs.JSON},
    )
    assert named.headers["Content-Type"] == codecs.JSON
