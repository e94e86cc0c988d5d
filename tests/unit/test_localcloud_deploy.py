"""The local cloud's deploy step reports every failure of CreateStack as a DeployError
(`up` prints it and exits 1), never as a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from botocore.parsers import ResponseParserError

from localcloud.deploy import DeployError, deploy_stack


class FailingCloudFormation:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_stack(self, **_: Any) -> None:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        ClientError({"Error": {"Code": "AlreadyExistsException", "Message": "exists"}}, "Create"),
        ResponseParserError("Unable to parse response, invalid XML received"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
    ],
    ids=["refused", "unparseable answer", "no server"],
)
def test_a_failed_create_stack_is_a_deploy_error_naming_the_stack(error: Exception) -> None:
    with pytest.raises(DeployError, match=r"stack model-endpoint-local: .+") as raised:
        deploy_stack(FailingCloudFormation(error), "model-endpoint-local", "{}", {}, 1.0)
    assert raised.value.__cause__ is error


# ---------------------------------------------------------------- kept state, bundles, updates


def test_the_state_keeps_objects_with_their_etag_version_time_and_metadata(tmp_path):
    import boto3
    from moto import mock_aws
    from moto.core import DEFAULT_ACCOUNT_ID

    from localcloud.state import StateStore

    store = StateStore(tmp_path / "cloud", DEFAULT_ACCOUNT_ID)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="inputs")
        s3.put_bucket_versioning(Bucket="inputs", VersioningConfiguration={"Status": "Enabled"})
        s3.put_object(Bucket="inputs", Key="a/b.csv", Body=b"id,x\n1,2\n", Metadata={"k": "v"})
        s3.put_object(Bucket="inputs", Key="gone.csv", Body=b"x")
        s3.delete_object(Bucket="inputs", Key="gone.csv")
        before = s3.head_object(Bucket="inputs", Key="a/b.csv")
        saved = store.save_s3()
    assert (saved.buckets, saved.objects, saved.written) == (1, 1, 1)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="inputs")
        s3.put_object(Bucket="inputs", Key="newer.csv", Body=b"written since the start")
        restored = store.restore_s3()
        after = s3.head_object(Bucket="inputs", Key="a/b.csv")
        body = s3.get_object(Bucket="inputs", Key="a/b.csv")["Body"].read()
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="inputs")["Contents"])
    assert restored.objects == 1
    assert body == b"id,x\n1,2\n"
    for field in ("ETag", "VersionId", "LastModified", "Metadata"):
        assert after[field] == before[field], field
    assert keys == ["a/b.csv", "newer.csv"]


def test_a_bundle_folder_goes_to_models_name_version_manifest_last(tmp_path):
    import json

    from localcloud.bundles import BundleError, bundle_prefix, upload_bundle

    (tmp_path / "manifest.json").write_text(json.dumps({"name": "churn", "version": "3"}))
    (tmp_path / "model.joblib").write_bytes(b"m")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "extra.json").write_text("{}")
    puts = []

    class Recorder:
        def put_object(self, **kwargs):
            puts.append((kwargs["Bucket"], kwargs["Key"]))

    assert bundle_prefix(Recorder(), str(tmp_path)) == "models/churn/3/"
    assert upload_bundle(Recorder(), str(tmp_path), "s3://models/models/churn/3/") == 3
    assert puts[-1] == ("models", "models/churn/3/manifest.json")
    assert sorted(puts[:-1]) == [
        ("models", "models/churn/3/model.joblib"),
        ("models", "models/churn/3/sub/extra.json"),
    ]
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match="needs a name and a version"):
        bundle_prefix(Recorder(), str(tmp_path))


def test_template_references_include_sub_variables_and_dependents_come_after():
    from localcloud.stack_updates import _dependency_order, references

    function = {
        "Properties": {
            "Environment": {"Variables": {"MAX": {"Fn::Sub": "${MaxWorkers}"},
                                          "TASK": {"Ref": "TaskDef"},
                                          "LIT": {"Fn::Sub": "${!Literal}"}}},
            "Role": {"Fn::GetAtt": ["Role", "Arn"]},
        }
    }  # fmt: skip
    assert references(function) == {"MaxWorkers", "TaskDef", "Role"}
    resources = {"Function": function, "TaskDef": {"Properties": {"X": {"Ref": "ModelUri"}}}}
    assert _dependency_order(["Function", "TaskDef"], resources) == ["TaskDef", "Function"]


def test_localcloud_deploy_keeps_previous_values_but_the_files():
    from localcloud.redeploy import update_parameters

    declared = {"MaxWorkers": {}, "VpcId": {}, "EndpointUrlWhenNoLoadBalancer": {}, "New": {}}
    current = {"MaxWorkers": "2", "VpcId": "vpc-1", "EndpointUrlWhenNoLoadBalancer": "http://x"}
    given = {"MaxWorkers": "3", "VpcId": "auto", "EndpointUrlWhenNoLoadBalancer": "http://y"}
    assert update_parameters(declared, current, given) == [
        {"ParameterKey": "MaxWorkers", "ParameterValue": "3"},
        {"ParameterKey": "VpcId", "UsePreviousValue": True},
        {"ParameterKey": "EndpointUrlWhenNoLoadBalancer", "UsePreviousValue": True},
    ]


def test_watch_sorts_changed_paths_by_area(tmp_path):
    from localcloud.watch import changed_areas

    paths = [str(tmp_path / "service" / "web.py"), str(tmp_path / "infra" / "stack.yaml"),
             str(tmp_path / "tests" / "x.py"), "/elsewhere/lambda/handler.py"]  # fmt: skip
    assert changed_areas(tmp_path, paths) == {"service", "infra"}


def test_a_bundle_under_an_s3_prefix_is_copied_manifest_last():
    import json

    import boto3
    from moto import mock_aws

    from localcloud.bundles import bundle_prefix, upload_bundle

    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in ("staging", "models"):
            s3.create_bucket(Bucket=bucket)
        manifest = json.dumps({"name": "churn", "version": "4"}).encode()
        s3.put_object(Bucket="staging", Key="b/manifest.json", Body=manifest)
        s3.put_object(Bucket="staging", Key="b/model.joblib", Body=b"m")
        prefix = bundle_prefix(s3, "s3://staging/b")
        assert prefix == "models/churn/4/"
        assert upload_bundle(s3, "s3://staging/b", f"s3://models/{prefix}") == 2
        copied = s3.list_objects_v2(Bucket="models")["Contents"]
        assert sorted(o["Key"] for o in copied) == [
            prefix + "manifest.json",
            prefix + "model.joblib",
        ]
        assert s3.get_object(Bucket="models", Key=prefix + "model.joblib")["Body"].read() == b"m"
