import hashlib
import json
import pickle
import shutil

import boto3
import pytest
from moto import mock_aws

from service.artifacts import ModelStore, load_bundle, write_bundle
from service.errors import HashMismatch, ManifestError, ModelError


def _copy(bundle_dir, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle_dir, target)
    return target


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def test_loads_the_example_bundle(bundle):
    assert (bundle.name, bundle.version) == ("example", "1")
    assert len(bundle.columns) == 30
    assert set(bundle.mean) == set(bundle.columns)
    assert bundle.scaler is not None
    assert hasattr(bundle.model, "predict_proba")


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"manifest\.json does not exist"):
        load_bundle(str(tmp_path))


def test_missing_file_is_named(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    (folder / "scaler.joblib").unlink()
    with pytest.raises(ModelError, match=r"scaler\.joblib does not exist"):
        load_bundle(str(folder))


def test_manifest_without_model_entry(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    manifest = _manifest(folder)
    del manifest["files"]["model"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="lists no model file"):
        load_bundle(str(folder))


def test_manifest_that_is_not_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_bundle(str(tmp_path))


def test_hash_mismatch_never_reaches_pickle(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    marker = tmp_path / "pwned"
    payload = (
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    )  # a pickle that runs `touch marker` when loaded
    (folder / "model.joblib").write_bytes(payload)
    manifest = _manifest(folder)
    manifest["files"]["model"]["format"] = "pickle"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HashMismatch, match="sha256"):
        load_bundle(str(folder))
    assert not marker.exists()


def test_matching_hash_does_load_pickle_format(bundle, tmp_path):
    files = {
        "model": ("model.pkl", pickle.dumps(bundle.model), "pickle"),
        "mean": ("mean.json", json.dumps(dict(bundle.mean)).encode(), None),
        "columns": ("columns.json", json.dumps(list(bundle.columns)).encode(), None),
    }
    write_bundle(str(tmp_path), files, "plain", "7")
    loaded = load_bundle(str(tmp_path))
    assert loaded.scaler is None
    assert loaded.version == "7"
    entry = _manifest(tmp_path)["files"]["model"]
    assert entry["sha256"] == hashlib.sha256((tmp_path / "model.pkl").read_bytes()).hexdigest()


def test_skops_format_loads_with_the_safe_loader(bundle, tmp_path):
    import skops.io

    files = {
        "model": ("model.skops", skops.io.dumps(bundle.model), "skops"),
        "scaler": ("scaler.skops", skops.io.dumps(bundle.scaler), "skops"),
        "mean": ("mean.json", json.dumps(dict(bundle.mean)).encode(), None),
        "columns": ("columns.json", json.dumps(list(bundle.columns)).encode(), None),
    }
    write_bundle(str(tmp_path), files, "skopsed", "1")
    loaded = load_bundle(str(tmp_path))
    assert type(loaded.model) is type(bundle.model)


def test_unreadable_file_is_reported(bundle_dir, tmp_path):
    folder = _copy(bundle_dir, tmp_path)
    garbage = b"not a joblib file"
    (folder / "model.joblib").write_bytes(garbage)
    manifest = _manifest(folder)
    manifest["files"]["model"]["sha256"] = hashlib.sha256(garbage).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"cannot deserialise model\.joblib"):
        load_bundle(str(folder))


@mock_aws
def test_loads_from_s3_and_reports_missing_prefix(bundle_dir, train_example):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    train_example.main(["--out", "s3://models/models/example/3/", "--version", "3"])
    loaded = load_bundle("s3://models/models/example/3/")
    assert loaded.version == "3"
    assert loaded.etag.startswith('"')
    with pytest.raises(ModelError, match="cannot read s3://models/models/none/"):
        load_bundle("s3://models/models/none/")


def test_store_swaps_only_on_a_good_new_manifest(bundle_dir, tmp_path, train_example):
    folder = _copy(bundle_dir, tmp_path)
    store = ModelStore(str(folder), poll_seconds=60)
    store.check_now()
    first = store.current
    assert first.version == "1"
    assert store.check_now() is False  # unchanged manifest: nothing reloaded

    manifest = _manifest(folder)
    manifest["version"] = "2"
    manifest["files"]["scaler"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert store.check_now() is False
    assert store.current is first
    assert "sha256" in store.last_error
    assert store.reload_failures == 1

    train_example.main(["--out", str(folder), "--version", "2"])
    assert store.check_now() is True
    assert store.current.version == "2"
    assert store.last_error is None
    assert store.reloads == 1


def test_store_without_any_bundle_records_why(tmp_path):
    store = ModelStore(str(tmp_path / "absent"), poll_seconds=60)
    store.check_now()
    assert store.current is None
    assert "does not exist" in store.last_error


def test_bundle_keeps_every_file_it_loads(bundle, tmp_path):
    files = {
        "model": ("model.pkl", pickle.dumps(bundle.model), "pickle"),
        "mean": ("mean.json", json.dumps(dict(bundle.mean)).encode(), None),
        "columns": ("columns.json", json.dumps(list(bundle.columns)).encode(), None),
        "thresholds": ("thresholds.json", json.dumps({"gold": 0.8}).encode(), None),
    }
    write_bundle(str(tmp_path), files, "extra", "1")
    loaded = load_bundle(str(tmp_path))
    assert loaded.files["thresholds"] == {"gold": 0.8}
    assert loaded.files["model"] is loaded.model
    assert loaded.manifest["name"] == "extra"


def _pipeline_bundle(folder, **manifest_fields):
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    model = LogisticRegression().fit(frame, [0, 0, 1, 1])
    schema = [{"name": "a", "type": "number"}, {"name": "b", "type": "number"}]
    fields = {"input_schema": schema, **manifest_fields}
    files = {"model": ("model.pkl", pickle.dumps(model), "pickle")}
    write_bundle(str(folder), files, "p", "1", fields=fields)
    return folder


def test_pipeline_bundle_needs_only_the_model_file(tmp_path):
    loaded = load_bundle(str(_pipeline_bundle(tmp_path)))
    assert loaded.input_columns == ("a", "b")
    assert loaded.mean == {} and loaded.scaler is None


def test_schema_that_disagrees_with_the_model_is_refused(tmp_path):
    schema = [{"name": "b", "type": "number"}, {"name": "a", "type": "number"}]
    with pytest.raises(ManifestError, match="fitted on"):
        load_bundle(str(_pipeline_bundle(tmp_path, input_schema=schema)))


def test_skops_trusted_must_be_a_list_of_names(tmp_path):
    import skops.io
    from sklearn.preprocessing import StandardScaler

    files = {"model": ("m.skops", skops.io.dumps(StandardScaler()), "skops")}
    write_bundle(
        str(tmp_path),
        files,
        "s",
        "1",
        fields={"input_schema": [{"name": "a", "type": "number"}]},
        file_fields={"model": {"trusted": "everything"}},
    )
    with pytest.raises(ManifestError, match="list of type names"):
        load_bundle(str(tmp_path))


def test_requirements_must_be_a_mapping(tmp_path):
    with pytest.raises(ManifestError, match="requirements must map"):
        load_bundle(str(_pipeline_bundle(tmp_path, requirements=["lightgbm"])))


def test_store_tells_its_hook_of_each_good_swap_only(bundle_dir, tmp_path, train_example):
    folder = _copy(bundle_dir, tmp_path)
    swapped = []
    store = ModelStore(str(folder), poll_seconds=60, on_swap=swapped.append)
    store.check_now()
    assert [b.version for b in swapped] == ["1"]
    manifest = _manifest(folder)
    manifest["version"] = "2"
    manifest["files"]["scaler"]["sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    store.check_now()
    assert [b.version for b in swapped] == ["1"]  # a refused bundle is no swap


def test_a_failing_swap_hook_leaves_the_new_bundle_serving(bundle_dir, tmp_path):
    def broken(_bundle):
        raise RuntimeError("hook failed")

    store = ModelStore(str(_copy(bundle_dir, tmp_path)), poll_seconds=60, on_swap=broken)
    assert store.check_now() is True
    assert store.current is not None and store.last_error is None
