"""MLflow's request shapes and its Python client against our endpoint.

Shapes: mlflow/mlflow tests/pyfunc/test_scoring_server.py (the scoring server's own
tests: the bodies they send and the error_code they expect) and
mlflow/utils/proto_json_utils.py `dump_input_data` (what the client sends for a
DataFrame: {"dataframe_split": df.to_dict(orient="split")}, for an ndarray:
{"inputs": array.tolist()}, plus "params"). The client itself,
mlflow/pyfunc/scoring_server/client.py `ScoringServerClient` (ping, get_version,
invoke), runs in MLflow's own venv (bench/requirements-mlflow.txt, made by tools.py).
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import requests

from service import __version__
from tests.conformance import tools
from tests.endpoint_fixtures import EndpointServer

JSON = "application/json"


def post(endpoint: EndpointServer, body: str, content_type: str = JSON) -> requests.Response:
    return requests.post(
        f"{endpoint.url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=30
    )


def activations(response: requests.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([row["activation"] for row in response.json()["predictions"]])


def test_scoring_server_success_shapes(
    endpoint: EndpointServer, rows: pd.DataFrame, features: pd.DataFrame, expected: np.ndarray
) -> None:
    """test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_records_
    orientation / ..._split_orientation (with and without "; charset=UTF-8") and
    ..._correct_tf_serving_sklearn ({"instances": X.tolist()})."""
    frame = rows.astype(object).where(rows.notna(), None)
    records = json.dumps({"dataframe_records": frame.to_dict(orient="records")})
    split = json.dumps({"dataframe_split": frame.to_dict(orient="split")})
    for body in (records, split):
        for content_type in (JSON, JSON + "; charset=UTF-8"):
            np.testing.assert_allclose(
                activations(post(endpoint, body, content_type)), expected, rtol=0, atol=1e-12
            )
    full = features.dropna()
    instances = json.dumps({"instances": full.to_numpy().tolist()})
    wanted = expected[full.index.to_numpy()]
    np.testing.assert_allclose(activations(post(endpoint, instances)), wanted, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ("this is,,,, not valid json", 400),
        (json.dumps(1), 400),
        (json.dumps("1"), 400),
        (json.dumps({"not": "a serialized dataframe"}), 400),
        (json.dumps({"dataframe_records": [], "dataframe_split": {"data": []}}), 400),
        (json.dumps({"dataframe_split": [{"a": 1}]}), 400),
        (json.dumps({"dataframe_records": {"columns": ["a"], "data": [[1]]}}), 400),
        (json.dumps({"dataframe_split": {"index": [1, 2], "data": [[1], [2], [3]]}}), 400),
        # MLflow answers 400 for a bare list; here a list holds rows, and one value
        # is a row of the wrong width: 422, still an error that MLflow's client reads.
        (json.dumps([1]), 422),
    ],
)
def test_scoring_server_error_shapes_carry_mlflow_error_code(
    endpoint: EndpointServer, body: str, status: int
) -> None:
    """test_scoring_server_responds_to_malformed_json_input_with_error_code_and_message,
    ..._invalid_json_format_..., ..._invalid_pandas_input_format_...,
    ..._invalid_dataframe_...: the bodies MLflow's server refuses, refused here too,
    with our error and message and MLflow's error_code."""
    response = post(endpoint, body)
    assert response.status_code == status, response.text
    document = response.json()
    assert document["error_code"] == ("BAD_REQUEST" if status == 400 else "INVALID_PARAMETER_VALUE")
    assert document["error"] and document["message"]


def test_scoring_server_unsupported_type_and_empty_csv(endpoint: EndpointServer) -> None:
    """..._invalid_content_type_request_with_unsupported_content_type_code (415) and
    ..._invalid_csv_input_... (an empty CSV: 400 BAD_REQUEST)."""
    assert post(endpoint, "{}", "not_a_supported_content_type").status_code == 415
    empty = post(endpoint, "", "text/csv")
    assert empty.status_code == 400 and empty.json()["error_code"] == "BAD_REQUEST"


CLIENT = """
import json, sys
import numpy as np, pandas as pd
from mlflow.pyfunc.scoring_server.client import ScoringServerClient
host, port, path = sys.argv[1:]
client = ScoringServerClient(host, port)
client.wait_server_ready(timeout=30)
frame = pd.read_json(path, orient="split")
out = {"version": client.get_version()}
out["frame"] = client.invoke(frame).get_predictions().to_dict(orient="list")
features = frame.drop(columns=["id"]).dropna()
out["array"] = client.invoke(features.to_numpy(), params={"threshold": 0.5}).get_predictions().to_dict(orient="list")
out["array_index"] = features.index.tolist()
print(json.dumps(out))
"""


def test_mlflow_python_client(
    endpoint: EndpointServer, rows: pd.DataFrame, bundle, expected: np.ndarray, tmp_path
) -> None:
    """MLflow's ScoringServerClient: ping, get_version, invoke with a DataFrame (sent as
    dataframe_split) and with an ndarray and params (sent as {"inputs": [[...]],
    "params": {...}}), in MLflow's own venv."""
    python = tools.venv(tools.MLFLOW_REQUIREMENTS, "mlflow") / "python"
    path = tmp_path / "rows.json"
    rows[[bundle.id_column, *bundle.input_columns]].to_json(path, orient="split")
    done = subprocess.run(
        [str(python), "-c", CLIENT, "127.0.0.1", str(endpoint.port), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["version"] == __version__
    assert out["frame"]["id"] == rows[bundle.id_column].tolist()
    np.testing.assert_allclose(out["frame"]["activation"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        out["array"]["activation"], expected[out["array_index"]], rtol=0, atol=1e-12
    )
    assert "id" not in out["array"]
