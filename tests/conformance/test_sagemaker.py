"""What SageMaker sends: the SDK's serializers' exact bytes, and batch transform's splitting.

Serializers: aws/sagemaker-python-sdk, sagemaker-core/src/sagemaker/core/serializers/base.py
(`CSVSerializer.serialize`, `_serialize_row`, `JSONSerializer.serialize`,
`JSONLinesSerializer.serialize`); the functions below repeat what those lines do.
Batch transform: the TransformInput fields SplitType=Line, BatchStrategy
(MultiRecord / SingleRecord), MaxPayloadInMB (read from GET /execution-parameters as
the toolkit's users do), AssembleWith=Line and JoinSource=Input, as documented in the
SDK's sagemaker-core transformer (sagemaker-core/src/sagemaker/core/transformer.py):
a Line split sends whole lines, many per request up to MaxPayloadInMB (MultiRecord) or
one (SingleRecord); AssembleWith=Line joins the answers with a newline; JoinSource=Input
puts each input line and its output line side by side, joined by a comma.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from service.artifacts import Bundle
from tests.endpoint_fixtures import EndpointServer

CSV = "text/csv"


# -- the SDK's serializers (sagemaker-core/src/sagemaker/core/serializers/base.py) -------


def csv_serializer(data: object) -> str:
    """CSVSerializer.serialize: a DataFrame as `to_csv(header=False, index=False)`; a 2-D
    array row by row, each through csv.writer, joined by "\\n" (no final newline)."""
    if isinstance(data, pd.DataFrame):
        return data.to_csv(header=False, index=False)
    assert isinstance(data, np.ndarray)
    if data.ndim == 2:
        return "\n".join(_serialize_row(row) for row in data)
    return _serialize_row(data)


def _serialize_row(data: np.ndarray) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=",").writerow(np.ndarray.flatten(data))
    return buffer.getvalue().rstrip("\r\n")


def json_serializer(data: object) -> str:
    """JSONSerializer.serialize: an ndarray as json.dumps(data.tolist()), a dict with its
    arrays as lists, anything else json.dumps."""
    if isinstance(data, dict):
        return json.dumps(
            {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in data.items()}
        )
    if isinstance(data, np.ndarray):
        return json.dumps(data.tolist())
    return json.dumps(data)


def jsonlines_serializer(data: list) -> str:
    """JSONLinesSerializer.serialize: json.dumps of each element, joined by "\\n"."""
    return "\n".join(json.dumps(element) for element in data)


def invoke(
    endpoint: EndpointServer,
    body: str | bytes,
    content_type: str,
    accept: str | None = "application/json",
) -> requests.Response:
    """POST to /invocations; `accept=None` sends requests' own `Accept: */*`."""
    headers = {"Content-Type": content_type}
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(
        f"{endpoint.url}/invocations",
        data=body.encode() if isinstance(body, str) else body,
        headers=headers,
        timeout=30,
    )


def scores(response: requests.Response, column: str = "activation") -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([row[column] for row in response.json()["predictions"]])


def complete(features: pd.DataFrame) -> pd.DataFrame:
    """ndarray serializers cannot carry a missing value the way CSV can: use full rows."""
    return features.dropna().reset_index(drop=True)


def test_csv_serializer_of_a_dataframe(
    endpoint: EndpointServer, features: pd.DataFrame, expected: np.ndarray
) -> None:
    np.testing.assert_allclose(
        scores(invoke(endpoint, csv_serializer(features), CSV)), expected, rtol=0, atol=1e-12
    )


def test_csv_serializer_of_an_ndarray_and_of_one_row(
    endpoint: EndpointServer, features: pd.DataFrame, rows: pd.DataFrame, bundle: Bundle
) -> None:
    full = complete(features)
    wanted = scores(invoke(endpoint, csv_serializer(full), CSV))
    array = full.to_numpy()
    np.testing.assert_allclose(
        scores(invoke(endpoint, csv_serializer(array), CSV)), wanted, rtol=0, atol=1e-12
    )
    one = invoke(endpoint, csv_serializer(array[0]), CSV, accept=CSV)
    assert one.status_code == 200, one.text
    assert one.text.count("\n") == 1
    assert float(one.text) == pytest.approx(wanted[0], abs=1e-12)


def test_json_serializer_of_an_ndarray_a_row_and_a_record(
    endpoint: EndpointServer, features: pd.DataFrame, bundle: Bundle
) -> None:
    full = complete(features)
    wanted = scores(invoke(endpoint, csv_serializer(full), CSV))
    array = full.to_numpy()
    np.testing.assert_allclose(
        scores(invoke(endpoint, json_serializer(array), "application/json")),
        wanted,
        rtol=0,
        atol=1e-12,
    )
    assert scores(invoke(endpoint, json_serializer(array[0]), "application/json"))[
        0
    ] == pytest.approx(wanted[0], abs=1e-12)
    record = {"id": 5, **full.iloc[0].to_dict()}
    answer = invoke(endpoint, json_serializer(record), "application/json")
    assert answer.json()["predictions"][0]["id"] == 5
    assert scores(answer)[0] == pytest.approx(wanted[0], abs=1e-12)


def test_jsonlines_serializer_of_rows(endpoint: EndpointServer, features: pd.DataFrame) -> None:
    full = complete(features)
    wanted = scores(invoke(endpoint, csv_serializer(full), CSV))
    body = jsonlines_serializer(full.to_numpy().tolist())
    np.testing.assert_allclose(
        scores(invoke(endpoint, body, "application/jsonlines")), wanted, rtol=0, atol=1e-12
    )


# -- batch transform over a real file ------------------------------------------------------


def split_lines(path: Path, max_payload_mb: int, single_record: bool) -> list[bytes]:
    """SplitType=Line: whole lines; MultiRecord packs as many as fit MaxPayloadInMB."""
    limit = max_payload_mb * 1024 * 1024
    batches: list[bytes] = []
    current = b""
    for line in path.read_bytes().splitlines(keepends=True):
        if current and (single_record or len(current) + len(line) > limit):
            batches.append(current)
            current = b""
        current += line
    if current:
        batches.append(current)
    return batches


def batch_transform(endpoint: EndpointServer, path: Path, single_record: bool) -> list[str]:
    """Send every mini-batch as text/csv asking for text/csv, assemble the answers by line
    (AssembleWith=Line) and join them with their input lines (JoinSource=Input)."""
    parameters = requests.get(f"{endpoint.url}/execution-parameters", timeout=10).json()
    assert parameters["BatchStrategy"] == "MULTI_RECORD"
    assert 1 <= parameters["MaxPayloadInMB"] <= 100
    outputs: list[str] = []
    for batch in split_lines(path, parameters["MaxPayloadInMB"], single_record):
        answer = invoke(endpoint, batch, CSV, accept=CSV)
        assert answer.status_code == 200, answer.text
        output_lines = answer.text.splitlines()
        input_lines = batch.decode().splitlines()
        assert len(output_lines) == len(input_lines), "one output line per input line"
        outputs += [f"{i},{o}" for i, o in zip(input_lines, output_lines, strict=True)]
    return outputs


@pytest.mark.parametrize("single_record", [False, True], ids=["MultiRecord", "SingleRecord"])
@pytest.mark.parametrize("with_id", [False, True], ids=["features", "id-first"])
def test_batch_transform_split_line_assemble_line_join_input(
    endpoint: EndpointServer,
    rows: pd.DataFrame,
    bundle: Bundle,
    expected: np.ndarray,
    tmp_path: Path,
    single_record: bool,
    with_id: bool,
) -> None:
    columns = [bundle.id_column, *bundle.input_columns] if with_id else list(bundle.input_columns)
    many = pd.concat([rows] * (1 if single_record else 400), ignore_index=True)
    path = tmp_path / "input.csv"
    path.write_bytes(csv_serializer(many[columns]).encode())
    joined = batch_transform(endpoint, path, single_record)
    input_lines = path.read_text().splitlines()
    assert len(joined) == len(input_lines)
    width = len(columns)
    for line, source in zip(joined, input_lines, strict=True):
        assert line.startswith(source + ",")
    outputs = [line.split(",")[width:] for line in joined]
    if with_id:
        assert [int(o[0]) for o in outputs] == many[bundle.id_column].tolist()
    predicted = np.array([float(o[-1]) for o in outputs])
    np.testing.assert_allclose(
        predicted, np.tile(expected, len(many) // len(rows)), rtol=0, atol=1e-12
    )
    if not single_record:
        assert len(split_lines(path, 1, False)) > 1, "the file must need several mini-batches"


# -- the container as SageMaker starts it ---------------------------------------------------


def test_model_tar_gz_served_from_the_model_dir_on_the_bound_port(
    bundle: Bundle, rows: pd.DataFrame, expected: np.ndarray, tmp_path: Path
) -> None:
    """scripts/package_model.py --tar writes model.tar.gz; SageMaker unpacks it into
    <SAGEMAKER_BASE_DIR>/model and starts `serve` with SAGEMAKER_BIND_TO_PORT and the
    toolkit's variables (sagemaker_inference/parameters.py, environment.py), no MODEL_URI;
    SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT answers a request without Accept or with */*
    (transformer.py)."""
    import pickle
    import subprocess
    import sys

    from tests.endpoint_fixtures import REPO
    from tests.support import extract_flat_tar, free_port

    pickles = {}
    for name, value in (
        ("model", bundle.model),
        ("scaler", bundle.scaler),
        ("mean", dict(bundle.mean)),
        ("columns", list(bundle.columns)),
    ):
        pickles[name] = tmp_path / f"{name}.pkl"
        pickles[name].write_bytes(pickle.dumps(value))
    archive = tmp_path / "bundle" / "model.tar.gz"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "package_model.py"),
            *(f"--{name}={path}" for name, path in pickles.items()),
            "--name",
            bundle.name,
            "--version",
            "7",
            "--out",
            str(tmp_path / "bundle"),
            "--tar",
        ],
        check=True,
    )
    base = tmp_path / "opt-ml"
    extract_flat_tar(archive, base / "model")
    server = EndpointServer(
        tmp_path / "server.log",
        port=free_port(),  # PORT loses to SAGEMAKER_BIND_TO_PORT
        sagemaker_base_dir=base,
        sagemaker_model_server_workers=1,
        sagemaker_max_payload_in_mb=2,
    )
    server.env["SAGEMAKER_BIND_TO_PORT"] = str(server.port)
    server.env["SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"] = CSV
    try:
        server.start()
        assert requests.get(f"{server.url}/ping", timeout=10).json()["model"]["version"] == "7"
        assert (
            requests.get(f"{server.url}/execution-parameters", timeout=10).json()["MaxPayloadInMB"]
            == 2
        )
        assert "with 1 process " in server.log()
        body = csv_serializer(rows[list(bundle.input_columns)])
        for accept in (CSV, None):  # None: a job that sets no Accept (the toolkit's default)
            answer = invoke(server, body, CSV, accept=accept)
            assert answer.headers["Content-Type"] == CSV
            np.testing.assert_allclose(
                [float(v) for v in answer.text.splitlines()], expected, rtol=0, atol=1e-12
            )
        assert invoke(server, body, CSV).headers["Content-Type"] == "application/json"
    finally:
        server.kill()
