"""Pipeline bundles of each kind through the real endpoint (waitress, `python -m service
serve`) and the real batch worker (against moto's server): every content type in and out,
every input file format, the answer equal to the estimator's own predict_proba / predict."""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest
import requests

from service.artifacts import load_bundle
from tests import worker_fixtures
from tests.endpoint_fixtures import EndpointServer
from tests.model_kinds import (
    KINDS,
    MEDIA,
    assert_same_answer,
    encode_rows,
    expected_answer,
    kind_rows,
    manifest_of,
    read_answer,
    write_kind_bundle,
)
from tests.worker_fixtures import Stack

cloud = worker_fixtures.cloud
start_worker = worker_fixtures.start_worker

FILE_MEDIA = {
    "parquet": "application/vnd.apache.parquet",
    "csv": "text/csv",
    "jsonl": "application/jsonlines",
}
WORKER_SECONDS = 60


@pytest.fixture(scope="module")
def kind_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    return {kind: write_kind_bundle(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def servers(kind_dirs, tmp_path_factory):
    started: dict[str, EndpointServer] = {}
    try:
        for kind, folder in kind_dirs.items():
            log = tmp_path_factory.mktemp("logs") / f"{kind}.log"
            started[kind] = EndpointServer(log, model_uri=folder, workers=1).launch()
        for server in started.values():
            server.until_ready()
        yield started
    finally:
        for server in started.values():
            server.kill()


def expected_for(kind_dirs: dict[str, Path], kind: str, rows: pd.DataFrame) -> pd.DataFrame:
    bundle = load_bundle(str(kind_dirs[kind]))
    return expected_answer(bundle.model, rows, manifest_of(kind_dirs[kind]))


@pytest.mark.parametrize("kind", KINDS)
def test_endpoint_every_content_type_in_and_out(servers, kind_dirs, kind):
    rows = kind_rows(kind)
    want = expected_for(kind_dirs, kind, rows)
    with requests.Session() as session:
        for sent, accepted in itertools.product(MEDIA, MEDIA):
            response = session.post(
                f"{servers[kind].url}/invocations",
                data=encode_rows(rows, sent),
                headers={"Content-Type": sent, "Accept": accepted},
            )
            assert response.status_code == 200, (sent, accepted, response.text)
            assert response.headers["Content-Type"] == accepted
            assert_same_answer(read_answer(response.content, accepted), want)


@pytest.mark.parametrize(
    ("column", "value"),
    [("amount", "lots"), ("tenure", "2.5"), ("active", "maybe"), ("signup", "2024-13-45")],
)
def test_endpoint_schema_violation_is_a_422_naming_column_and_value(servers, column, value):
    rows = kind_rows("mixed", 3).astype({column: object})
    rows.loc[1, column] = value
    response = requests.post(
        f"{servers['mixed'].url}/invocations",
        data=encode_rows(rows, "text/csv"),
        headers={"Content-Type": "text/csv"},
    )
    assert response.status_code == 422, response.text
    message = response.json()["message"]
    assert repr(column) in message and value in message, message


@pytest.fixture(scope="module")
def kind_uris(cloud, kind_dirs) -> dict[str, str]:
    """Each kind's bundle, uploaded to the moto server as an operator would."""
    uris = {}
    for kind, folder in kind_dirs.items():
        bucket = f"models-{kind}-{worker_fixtures.uuid.uuid4().hex[:8]}"
        cloud.s3.create_bucket(Bucket=bucket)
        for path in folder.iterdir():
            cloud.s3.put_object(Bucket=bucket, Key=f"m/{path.name}", Body=path.read_bytes())
        uris[kind] = f"s3://{bucket}/m/"
    return uris


@pytest.mark.parametrize("kind", KINDS)
def test_worker_every_input_format(cloud, kind_uris, kind_dirs, start_worker, kind):
    rows = kind_rows(kind, 300, seed=5)
    want = expected_for(kind_dirs, kind, rows)
    run = Stack(cloud, kind_uris[kind]).create()
    keys = [f"in/rows.{ext}" for ext in FILE_MEDIA]
    for key in keys:
        run.put(key, encode_rows(rows, FILE_MEDIA[key.rsplit(".", 1)[1]]))
        run.send(key)
    worker = start_worker(run.worker_env(IDLE_SECONDS=1, BATCH_ROWS=128, OUTPUT_FORMAT="parquet"))
    assert worker.wait(WORKER_SECONDS) == 0, worker.log_text()
    for key in keys:
        report = run.report(key)
        assert report is not None and report["status"] == "succeeded", (key, report)
        output = run.read_output(run.output_key(key), "parquet").sort_values("id")
        assert_same_answer(output.reset_index(drop=True), want)


@pytest.mark.parametrize("output_format", ["csv", "jsonl"])
def test_worker_joined_answer_in_text_formats(
    cloud, kind_uris, kind_dirs, start_worker, output_format
):
    rows = kind_rows("multiclass", 200, seed=6)
    want = expected_for(kind_dirs, "multiclass", rows)
    run = Stack(cloud, kind_uris["multiclass"]).create()
    run.put("in/rows.parquet", encode_rows(rows, FILE_MEDIA["parquet"]))
    run.send("in/rows.parquet")
    env = run.worker_env(IDLE_SECONDS=1, OUTPUT_FORMAT=output_format, JOIN_INPUT="true")
    worker = start_worker(env)
    assert worker.wait(WORKER_SECONDS) == 0, worker.log_text()
    output = run.read_output(run.output_key("in/rows.parquet", output_format), output_format)
    assert list(output.columns) == [*rows.columns, *want.columns[1:]]
    assert_same_answer(output[list(want.columns)].sort_values("id").reset_index(drop=True), want)


def test_worker_schema_violation_is_a_failed_report(cloud, kind_uris, start_worker):
    rows = kind_rows("mixed", 20).astype({"signup": object})
    rows.loc[4, "signup"] = "not a date"
    run = Stack(cloud, kind_uris["mixed"]).create()
    run.put("bad/rows.jsonl", encode_rows(rows, FILE_MEDIA["jsonl"]))
    run.send("bad/rows.jsonl")
    worker = start_worker(run.worker_env(IDLE_SECONDS=1))
    assert worker.wait(WORKER_SECONDS) == 0, worker.log_text()
    report = run.report("bad/rows.jsonl")
    assert report is not None and report["status"] == "failed", report
    assert "'signup'" in report["message"] and "not a date" in report["message"], report
