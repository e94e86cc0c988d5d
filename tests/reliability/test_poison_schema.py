"""The schema part of the poison catalogue against a pipeline bundle (the mixed example):
through the real endpoint (a 422 naming the column and value, or a documented success) and
through ONE real worker against moto (a `failed` report saying the same), never a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd
import pytest

from tests import worker_fixtures
from tests.model_kinds import kind_rows, write_kind_bundle
from tests.reliability.poison.catalogue import SCHEMA_CATALOGUE, Poison
from tests.reliability.test_poison_endpoint import post
from tests.worker_fixtures import Stack, WorkerProcess

pytestmark = pytest.mark.reliability
WORKER_DEADLINE = 120


@pytest.fixture(scope="module")
def mixed_rows() -> pd.DataFrame:
    return kind_rows("mixed", 20, seed=11)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kind_bundle("mixed", tmp_path_factory.mktemp("mixed") / "bundle")


@pytest.fixture(scope="module")
def mixed_endpoint(start_endpoint, mixed_dir):
    return start_endpoint(model_uri=mixed_dir, workers=1)


@pytest.mark.parametrize("poison", SCHEMA_CATALOGUE, ids=lambda p: p.name)
def test_schema_poison_at_the_endpoint(mixed_endpoint, mixed_rows, poison: Poison) -> None:
    status, body = post(
        mixed_endpoint, poison.make(mixed_rows), {"Content-Type": poison.content_type}
    )
    document = orjson.loads(body)
    expect = poison.endpoint
    assert status == expect.status, document
    if expect.code is None:
        assert len(document["predictions"]) == expect.rows
        return
    assert expect.accepts(document["error"]), document
    assert expect.missing_words(document["message"]) == [], document["message"]


@pytest.fixture(scope="module")
def batch_run(cloud, mixed_dir, mixed_rows, tmp_path_factory) -> Iterator[Stack]:
    bucket = f"models-{worker_fixtures.uuid.uuid4().hex[:10]}"
    cloud.s3.create_bucket(Bucket=bucket)
    for path in mixed_dir.iterdir():
        cloud.s3.put_object(Bucket=bucket, Key=f"m/{path.name}", Body=path.read_bytes())
    stack = Stack(cloud, f"s3://{bucket}/m/").create()
    for poison in SCHEMA_CATALOGUE:
        stack.put(poison.key, poison.make(mixed_rows))
        stack.send(poison.key)
    folder = tmp_path_factory.mktemp("schema-batch")
    worker = WorkerProcess(stack.worker_env(IDLE_SECONDS=2), folder / "worker.log")
    try:
        assert worker.wait(WORKER_DEADLINE) == 0, worker.log_text()[-3000:]
        yield stack
    finally:
        worker.stop()


@pytest.mark.parametrize("poison", SCHEMA_CATALOGUE, ids=lambda p: p.name)
def test_schema_poison_in_batch(batch_run: Stack, poison: Poison) -> None:
    report = batch_run.report(poison.key)
    expect = poison.batch
    assert report is not None, poison.key
    if expect.code is None:
        assert report["status"] == "succeeded", report
        assert report["rows"] == expect.rows
        return
    assert report["status"] == "failed", report
    assert expect.accepts(report.get("error")), report["message"]
    assert expect.missing_words(report["message"]) == [], report["message"]
