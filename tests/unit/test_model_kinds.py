"""Pipeline bundles of each kind, packaged by the real scripts: the service's answer is the
estimator's own, through every request format's decoder."""

import importlib.metadata
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io
from lightgbm import LGBMClassifier

from service import codecs
from service.artifacts import load_bundle
from service.errors import InvalidData, ModelError
from service.model import predict, wrap
from tests.conftest import load_script
from tests.model_kinds import (
    KINDS,
    MEDIA,
    assert_same_answer,
    encode_rows,
    expected_answer,
    kind_rows,
    manifest_of,
    write_kind_bundle,
)
from tests.support import extract_flat_tar


@pytest.fixture(scope="module")
def kind_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    return {kind: write_kind_bundle(kind, root / kind) for kind in KINDS}


@pytest.mark.parametrize("media", MEDIA)
@pytest.mark.parametrize("kind", KINDS)
def test_answer_is_the_estimators_own(kind_dirs, kind, media):
    bundle = load_bundle(str(kind_dirs[kind]))
    rows = kind_rows(kind)
    frame = codecs.decode(encode_rows(rows, media), media)
    want = expected_answer(bundle.model, rows, manifest_of(kind_dirs[kind]))
    assert_same_answer(predict(bundle, frame), want)


def test_answer_columns_by_task(kind_dirs):
    answers = {k: predict(load_bundle(str(d)), kind_rows(k, 3)) for k, d in kind_dirs.items()}
    assert list(answers["mixed"].columns) == ["id", "activation", "label"]
    assert list(answers["multiclass"].columns) == [
        "id",
        "cultivar_0",
        "cultivar_1",
        "cultivar_2",
        "label",
    ]
    assert answers["multiclass"]["label"].tolist()[0].startswith("cultivar_")
    assert list(answers["regression"].columns) == ["id", "prediction"]


def test_input_columns_are_the_schema_order(kind_dirs):
    bundle = load_bundle(str(kind_dirs["mixed"]))
    assert bundle.input_columns == ("amount", "tenure", "plan", "region", "active", "signup")
    assert bundle.columns == ("amount", "tenure")  # read as float64 from files


def test_positional_columns_follow_input_columns(kind_dirs):
    bundle = load_bundle(str(kind_dirs["mixed"]))
    rows = kind_rows("mixed", 5)
    by_position = rows[["id", *bundle.input_columns]]
    assert_same_answer(predict(bundle, by_position), predict(bundle, rows))


def test_model_is_wrapped_once_per_bundle(kind_dirs):
    first = load_bundle(str(kind_dirs["mixed"]))
    assert wrap(first) is wrap(first)
    second = load_bundle(str(kind_dirs["mixed"]))
    assert wrap(second) is not wrap(first)


@pytest.mark.parametrize(
    ("column", "value", "named"),
    [
        ("amount", "lots", "'lots'"),
        ("tenure", 2.5, "2.5"),
        ("active", "maybe", "'maybe'"),
        ("signup", "last tuesday", "'last tuesday'"),
    ],
)
def test_schema_violation_names_column_and_value(kind_dirs, column, value, named):
    bundle = load_bundle(str(kind_dirs["mixed"]))
    rows = kind_rows("mixed", 3).astype({column: object})
    rows.loc[1, column] = value
    with pytest.raises(InvalidData, match=f"column '{column}'.*{named}"):
        predict(bundle, rows)


def test_missing_schema_column_is_named(kind_dirs):
    bundle = load_bundle(str(kind_dirs["mixed"]))
    with pytest.raises(InvalidData, match="missing columns: signup"):
        predict(bundle, kind_rows("mixed", 3).drop(columns="signup"))


def package(tmp_path, estimator, sample, *extra, out=None, version="1"):
    """package_model.py --pipeline on a fitted estimator and its sample rows; the bundle's
    destination (a folder under tmp_path unless `out` names one or an S3 prefix)."""
    model_file = tmp_path / "model.joblib"
    import joblib

    joblib.dump(estimator, model_file)
    sample_file = tmp_path / "sample.parquet"
    sample.to_parquet(sample_file)
    out = out or tmp_path / "bundle"
    load_script("package_model").main(
        [
            "--pipeline",
            str(model_file),
            "--sample",
            str(sample_file),
            "--name",
            "m",
            "--version",
            version,
            "--out",
            str(out),
            *extra,
        ]
    )
    return out


@pytest.fixture(scope="module")
def lightgbm_model():
    frame, target = load_script("examples").mixed_frame(400, seed=0)
    frame = frame[["amount", "tenure", "active"]].astype({"active": np.float64})
    model = LGBMClassifier(n_estimators=20, verbose=-1, random_state=0).fit(frame, target)
    return model, frame


def test_lightgbm_bundle_records_its_package(tmp_path, lightgbm_model):
    model, frame = lightgbm_model
    out = package(tmp_path, model, frame, "--format", "skops", "--label-column", "label")
    manifest = manifest_of(out)
    assert manifest["requirements"] == {"lightgbm": importlib.metadata.version("lightgbm")}
    assert "lightgbm.sklearn.LGBMClassifier" in manifest["files"]["model"]["trusted"]
    rows = frame.head(30).assign(id=range(30))
    assert_same_answer(predict(load_bundle(str(out)), rows), expected_answer(model, rows, manifest))


def test_bundle_naming_a_missing_package_is_refused_before_loading(tmp_path, lightgbm_model):
    out = package(tmp_path, *lightgbm_model)
    manifest = manifest_of(out)
    manifest["requirements"]["no-such-model-package"] = "9.9"
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"needs no-such-model-package==9\.9, not installed"):
        load_bundle(str(out))


def test_skops_type_missing_from_trusted_list_is_refused_by_name(tmp_path, lightgbm_model):
    out = package(tmp_path, *lightgbm_model, "--format", "skops")
    manifest = manifest_of(out)
    manifest["files"]["model"]["trusted"].remove("lightgbm.basic.Booster")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"does not trust: lightgbm\.basic\.Booster"):
        load_bundle(str(out))


def test_skops_trusted_types_are_what_skops_reports(tmp_path, lightgbm_model):
    out = package(tmp_path, *lightgbm_model, "--format", "skops")
    data = (out / "model.skops").read_bytes()
    trusted = manifest_of(out)["files"]["model"]["trusted"]
    assert sorted(trusted) == sorted(skops.io.get_untrusted_types(data=data))


def test_multi_output_regressor_answers_one_column_per_target(tmp_path):
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.random(50), "b": rng.random(50)})
    targets = np.column_stack([frame["a"] * 2, frame["b"] - 1])
    model = LinearRegression().fit(frame, targets)
    out = package(tmp_path, model, frame, "--target-columns", "low,high")
    answer = predict(load_bundle(str(out)), frame.assign(id=range(50)))
    assert list(answer.columns) == ["id", "low", "high"]
    np.testing.assert_allclose(answer[["low", "high"]], model.predict(frame), rtol=0, atol=1e-9)


def test_tar_holds_the_bundle_at_the_archive_root(tmp_path, lightgbm_model):
    out = package(tmp_path, *lightgbm_model, "--tar")
    extracted = tmp_path / "extracted"
    names = sorted(extract_flat_tar(out / "model.tar.gz", extracted))
    assert names == ["manifest.json", "model.joblib"]
    rows = lightgbm_model[1].head(5).assign(id=range(5))
    assert_same_answer(
        predict(load_bundle(str(extracted)), rows), predict(load_bundle(str(out)), rows)
    )


def test_estimator_without_feature_names_is_refused(tmp_path):
    from sklearn.linear_model import LinearRegression

    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    model = LinearRegression().fit(frame.to_numpy(), [1.0, 2.0, 3.0])
    with pytest.raises(SystemExit, match="feature_names_in_"):
        package(tmp_path, model, frame)


def test_csv_sample_gives_the_same_schema_as_parquet(tmp_path):
    examples = load_script("examples")
    frame, _ = examples.mixed_frame(200, seed=0)
    from service.schema import infer_schema

    from_csv = infer_schema(pd.read_csv(io.StringIO(frame.to_csv(index=False))), list(frame))
    from_frame = infer_schema(frame, list(frame))
    assert [f.type for f in from_csv] == [f.type for f in from_frame]
    assert [f.categories for f in from_csv] == [f.categories for f in from_frame]


def test_model_requirements_are_pinned_and_installed_everywhere():
    root = Path(__file__).resolve().parents[2]
    pins = [
        line
        for line in (root / "requirements-model.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", p) for p in pins), pins
    constraints = set((root / "constraints.txt").read_text().splitlines())
    assert set(pins) <= constraints
    for name, version in (p.split("==") for p in pins):
        assert importlib.metadata.version(name) == version
    dockerfile = (root / "Dockerfile").read_text()
    assert "-r /tmp/deps/requirements-model.txt" in dockerfile
    assert "-r requirements-model.txt" in (root / "requirements-local.txt").read_text()


def test_rows_the_model_itself_refuses_are_invalid_data_not_a_crash(kind_dirs):
    bundle = load_bundle(str(kind_dirs["regression"]))
    rows = kind_rows("regression", 3).assign(bmi=None)  # the example has no imputer
    with pytest.raises(
        InvalidData, match="the model cannot predict these rows: Input X contains NaN"
    ):
        predict(bundle, rows)


def test_package_to_s3_with_tar(tmp_path, lightgbm_model):
    import boto3
    from moto import mock_aws

    model, frame = lightgbm_model
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        package(tmp_path, model, frame, "--tar", out="s3://models/m/2/", version="2")
        archive = s3.get_object(Bucket="models", Key="m/2/model.tar.gz")["Body"].read()
        loaded = load_bundle("s3://models/m/2/")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "model.joblib"]
    assert loaded.version == "2" and loaded.input_columns == tuple(frame.columns)


def test_missing_boolean_and_date_reach_the_pipelines_imputers(kind_dirs):
    """JSON nulls in the mixed example's boolean and date columns are imputed by its own
    steps: the answer is the estimator's own on the same missing values, not a refusal."""
    bundle = load_bundle(str(kind_dirs["mixed"]))
    rows = kind_rows("mixed", 4)
    sent = rows.astype({"active": object, "signup": object})
    sent.loc[[0, 2], "active"] = None
    sent.loc[[1, 2], "signup"] = None
    frame = codecs.decode(encode_rows(sent, codecs.JSON), codecs.JSON)
    truth = rows.assign(active=rows["active"].astype(np.float64))
    truth.loc[[0, 2], "active"] = np.nan
    truth.loc[[1, 2], "signup"] = pd.NaT
    want = expected_answer(bundle.model, truth, manifest_of(kind_dirs["mixed"]))
    assert_same_answer(predict(bundle, frame), want)


def test_the_packager_writes_row_block_and_refuses_a_bad_one(tmp_path, lightgbm_model, capsys):
    model, frame = lightgbm_model
    out = package(tmp_path, model, frame, "--row-block", "1")
    assert json.loads((out / "manifest.json").read_text())["row_block"] == 1
    assert wrap(load_bundle(str(out))).task.row_block == 1
    with pytest.raises(SystemExit):
        package(tmp_path, model, frame, "--row-block", "0", out=tmp_path / "bad")
    assert "--row-block: give a whole number of rows from 1 to 1024" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
