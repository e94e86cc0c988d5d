"""bench.peers' request bodies and answers, and bench.cpu's per-process CPU split.

The answers are the bytes the peers' servers sent in the bench (MLServer 1.7.1's V2
response of mlserver_sklearn.SKLearnModel with predict_fn predict_proba; BentoML 1.4.40's
JSON for an API returning a numpy array; MLflow 3.17.2's scoring server).
"""

import math
import subprocess
import sys

import orjson
import pandas as pd
import psutil
import pytest

from bench.cpu import ProcessCpu
from bench.peers import answers, body
from tests.support import wait_for

FRAME = pd.DataFrame({"id": [1, 2], "b": [0.5, math.nan], "a": [1.25, 2.0]})
COLUMNS = ["a", "b"]  # the bundle's order, not the frame's


def test_mlserver_body_is_a_v2_fp64_tensor_in_the_bundle_s_column_order():
    document = orjson.loads(body("mlserver", FRAME, COLUMNS))
    (tensor,) = document["inputs"]
    assert tensor["shape"] == [2, 2] and tensor["datatype"] == "FP64"
    assert tensor["data"] == [1.25, 0.5, 2.0, None]  # row-major; missing as null


def test_bentoml_body_is_the_matrix_of_rows():
    assert orjson.loads(body("bentoml", FRAME, COLUMNS)) == {"rows": [[1.25, 0.5], [2.0, None]]}


def test_mlflow_body_is_dataframe_split_of_every_column():
    split = orjson.loads(body("mlflow", FRAME, COLUMNS))["dataframe_split"]
    assert split == {"columns": ["id", "b", "a"], "data": [[1, 0.5, 1.25], [2, None, 2.0]]}


@pytest.mark.parametrize(
    ("family", "raw"),
    [
        (
            "mlserver",
            b'{"model_name":"scorer","id":"488b655d-36e0-44d4-a912-6176af167de0",'
            b'"parameters":{},"outputs":[{"name":"predict_proba","shape":[2,2],'
            b'"datatype":"FP64","parameters":{"content_type":"np"},"data":[0.75,0.25,0.1,0.9]}]}',
        ),
        ("bentoml", b"[0.25, 0.9]"),
        ("mlflow", b'{"predictions": [[0.75, 0.25], [0.1, 0.9]]}'),
    ],
)
def test_answers_are_the_positive_class_probability_per_row(family, raw):
    assert answers(family, raw) == [0.25, 0.9]


def _child(code: str) -> psutil.Process:
    process = subprocess.Popen([sys.executable, "-c", code])
    return psutil.Process(process.pid)


def test_process_cpu_splits_a_tree_busiest_first():
    busy = _child("while True: pass")
    idle = _child("import time; time.sleep(60)")
    try:
        with ProcessCpu(lambda: [idle, busy]) as cpu:
            start = sum(busy.cpu_times()[:2])
            wait_for(lambda: sum(busy.cpu_times()[:2]) - start >= 0.3, 30, "0.3 s of CPU")
        first, second = cpu.shares
        assert first.pid == busy.pid and first.seconds >= 0.3
        assert second.pid == idle.pid and second.seconds < 0.05
        assert cpu.total == pytest.approx(first.seconds + second.seconds)
    finally:
        for process in (busy, idle):
            process.kill()
            process.wait(10)
