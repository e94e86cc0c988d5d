"""A pipeline bundle in the whole local cloud: published at the stack's ModelUri with the
scripts a user runs, then files through S3 -> Lambda -> SQS -> ECS worker and rows through
the endpoint, each answer equal to the estimator's own."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pandas as pd

from tests.e2e.batch_helpers import (
    load_served_bundle,
    read_parquet,
    train_to_model_uri,
    wait_reports,
)
from tests.e2e.cloud_process import LocalCloudProcess
from tests.model_kinds import assert_same_answer, encode_rows, expected_answer, kind_rows
from tests.support import wait_for

BATCH_SECONDS = 180
FILES = {"mixed/rows.csv": "text/csv", "mixed/rows.parquet": "application/vnd.apache.parquet"}


def ask(cloud: LocalCloudProcess, rows: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    request = urllib.request.Request(
        f"{cloud.endpoint}/invocations",
        data=encode_rows(rows, "application/json"),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
        return response.headers["X-Model-Version"], pd.DataFrame(body["predictions"])


def on_version_2(cloud: LocalCloudProcess, rows: pd.DataFrame) -> bool:
    """True once the endpoint answers with version 2 (version 1 refuses these rows: 422)."""
    try:
        return ask(cloud, rows)[0] == "2"
    except urllib.error.HTTPError as error:
        assert error.code == 422, error.read()
        return False


def test_pipeline_bundle_serves_endpoint_and_batch(local_cloud: LocalCloudProcess) -> None:
    train_to_model_uri(local_cloud, "--kind", "mixed", "--version", "2")
    bundle = load_served_bundle(local_cloud)
    rows = kind_rows("mixed", 120, seed=8)
    want = expected_answer(bundle.model, rows, dict(bundle.manifest))
    wait_for(
        lambda: all(on_version_2(local_cloud, rows.head(3)) for _ in range(10)),
        90,
        "every endpoint process on version 2",
    )
    assert_same_answer(ask(local_cloud, rows)[1], want)

    s3 = local_cloud.client("s3")
    for key, media in FILES.items():
        s3.put_object(
            Bucket=local_cloud.outputs["InputBucketName"], Key=key, Body=encode_rows(rows, media)
        )
    reports = wait_reports(local_cloud, list(FILES), BATCH_SECONDS)
    for report in reports.values():
        assert report["status"] == "succeeded", report
        assert report["model_version"] == "2"
        output = read_parquet(s3, local_cloud.outputs["OutputBucketName"], report["output_key"])
        assert_same_answer(output, want)
