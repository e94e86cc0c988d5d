"""A row's answer does not depend on the rows that share its model call: alone, in a
request of any size, in a shared (batched) call or in a batch file, it is the same bit
for bit, for the four-artifact bundle and every pipeline kind."""

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.artifacts import load_bundle
from service.errors import ManifestError
from service.files import FileFormat
from service.model import predict
from service.tasks import Task, answer, task_of
from service.transform import transform_file
from tests.conftest import load_script
from tests.model_kinds import KINDS, assert_bit_equal, kind_rows, write_kind_bundle

ROWS = 45
SIZES = (2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 33, ROWS)


@pytest.fixture(scope="module")
def cases(tmp_path_factory, bundle, train_example):
    root = tmp_path_factory.mktemp("blocks")
    found = {"four-artifact": (bundle, train_example.sample_rows(ROWS))}
    for kind in KINDS:
        found[kind] = (
            load_bundle(str(write_kind_bundle(kind, root / kind))),
            kind_rows(kind, ROWS),
        )
    return found


def answers_alone(bundle, rows: pd.DataFrame) -> pd.DataFrame:
    """Each row predicted on its own, in order."""
    return pd.concat([predict(bundle, rows.iloc[[i]]) for i in range(len(rows))], ignore_index=True)


@pytest.mark.parametrize("name", ["four-artifact", *KINDS])
def test_each_row_is_answered_alike_alone_and_in_calls_of_any_size(cases, name):
    bundle, rows = cases[name]
    alone = answers_alone(bundle, rows)
    for size in SIZES:
        for start in (0, 1, ROWS - size):
            if start + size > ROWS:
                continue
            shared = predict(bundle, rows.iloc[start : start + size]).reset_index(drop=True)
            expected = alone.iloc[start : start + size].reset_index(drop=True)
            assert_bit_equal(shared, expected, f"{size} rows from row {start}")


@pytest.mark.parametrize("name", ["four-artifact", "mixed"])
def test_a_batch_file_answers_each_row_as_the_endpoint_does_alone(cases, name, tmp_path: Path):
    bundle, rows = cases[name]
    source = tmp_path / "rows.parquet"
    rows.to_parquet(source, index=False)
    target = tmp_path / "out.parquet"
    written = transform_file(str(source), FileFormat("parquet"), str(target), bundle, "parquet", 10)
    assert written == ROWS
    assert_bit_equal(pd.read_parquet(target), answers_alone(bundle, rows), "batch file")


WIDE_ROWS = 1200


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A four-artifact bundle over 100 features with a 3-class linear model (SGD): OpenBLAS'
    AVX-512 kernels compute its matrix product another way in a call of 1,200 rows than
    for 16, and 1,140 of the rows got other bits in one call than alone (service.blas)."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    columns = [f"f{i}" for i in range(100)]
    frame = pd.DataFrame(rng.normal(size=(WIDE_ROWS, 100)), columns=columns)
    classes = (frame["f0"] + frame["f1"] > 0).astype(int) + (frame["f2"] > 0.5)
    scaler = StandardScaler().fit(frame.to_numpy())
    model = SGDClassifier(loss="log_loss", random_state=0)
    model.fit(scaler.transform(frame.to_numpy()), classes)
    root = tmp_path_factory.mktemp("wide")
    files = {"model": model, "scaler": scaler, "mean": frame.mean(), "columns": columns}
    for name, value in files.items():
        (root / f"{name}.pkl").write_bytes(pickle.dumps(value))
    arguments = [a for name in files for a in (f"--{name}", str(root / f"{name}.pkl"))]
    out = root / "bundle"
    load_script("package_model").main(
        [*arguments, "--name", "w", "--version", "1", "--out", str(out)]
    )
    return load_bundle(str(out)), frame.assign(id=range(WIDE_ROWS))


def test_a_wide_model_answers_each_row_alike_alone_in_a_big_call_and_in_a_file(wide, tmp_path):
    bundle, rows = wide
    alone = answers_alone(bundle, rows)
    assert_bit_equal(predict(bundle, rows), alone, f"one call of {WIDE_ROWS} rows")
    source, target = tmp_path / "rows.parquet", tmp_path / "out.parquet"
    rows.to_parquet(source, index=False)
    transform_file(str(source), FileFormat("parquet"), str(target), bundle, "parquet", WIDE_ROWS)
    assert_bit_equal(pd.read_parquet(target), alone, "batch file")


@pytest.mark.parametrize("value", [0, -1, 2048, "16", 1.5, True, None])
def test_a_row_block_that_is_not_a_whole_number_of_rows_is_refused(bundle, value):
    with pytest.raises(ManifestError, match="row_block"):
        task_of(bundle.model, {"row_block": value}, "s3://models/x/1/")


def test_row_block_one_calls_the_model_on_the_rows_as_sent(bundle):
    assert task_of(bundle.model, {"row_block": 1}, "here").row_block == 1
    assert task_of(bundle.model, {}, "here").row_block == 16


class Recorder:
    """A regressor that records what it is given and answers each row's first value."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def predict(self, features: Any) -> Any:
        self.seen.append(features)
        return [float(row[0]) for row in np.asarray(features, dtype=object)]


@pytest.mark.parametrize(
    "features",
    [np.asfortranarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), pd.DataFrame({"a": [1, 3, 5]})],
)
def test_the_model_sees_whole_blocks_and_the_answer_only_the_rows_sent(features):
    model = Recorder()
    out = answer(Task("regression", "out", row_block=16), model, features, np.arange(3), "id")
    (seen,) = model.seen
    assert len(seen) == 16
    assert np.asarray(seen)[3:].tolist() == [np.asarray(seen)[2].tolist()] * 13
    if isinstance(seen, np.ndarray):
        assert seen.flags.c_contiguous
    assert out["out"].tolist() == [1.0, 3.0, 5.0]


def test_features_of_another_kind_reach_the_model_as_they_are():
    model, rows = Recorder(), [[1.0, 2.0], [3.0, 4.0, 5.0]]
    out = answer(Task("regression", "out"), model, rows, np.arange(2), "id")
    assert model.seen == [rows]
    assert out["out"].tolist() == [1.0, 3.0]
