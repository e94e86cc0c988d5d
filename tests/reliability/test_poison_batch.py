"""The whole poison catalogue, then one good file, through ONE worker subprocess against a
real moto server: every poison ends in a `failed` report whose message names the problem
(or a documented success), the worker never crashes, and the good file after them is done."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pytest

from tests.reliability.poison.catalogue import CATALOGUE, Poison
from tests.worker_fixtures import Cloud, Stack, WorkerProcess, encode_frame

pytestmark = pytest.mark.reliability

GOOD_KEY = "after/good.parquet"
WORKER_DEADLINE = 180


@dataclass
class Run:
    stack: Stack
    worker: WorkerProcess
    exit_code: int


@pytest.fixture(scope="module")
def run(
    cloud: Cloud, model_uri: str, good_rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """Queue the catalogue and a good file last, run one worker until it goes idle."""
    stack = Stack(cloud, model_uri).create()
    for poison in CATALOGUE:
        stack.put(poison.key, poison.make(good_rows))
        stack.send(poison.key)
    stack.put(GOOD_KEY, encode_frame(good_rows, GOOD_KEY))
    stack.send(GOOD_KEY)
    folder = tmp_path_factory.mktemp("poison-batch")
    scratch = folder / "scratch"
    scratch.mkdir()
    worker = WorkerProcess(stack.worker_env(IDLE_SECONDS=3, TMPDIR=scratch), folder / "worker.log")
    try:
        exit_code = worker.wait(WORKER_DEADLINE)
        assert list(scratch.iterdir()) == [], "temp files left behind"
        yield Run(stack, worker, exit_code)
    finally:
        worker.stop()


AWAITING_FIX = {p.key for p in CATALOGUE if "batch" in p.pending}


def unstructured_lines(worker: WorkerProcess) -> list[str]:
    """Log lines that are not the worker's JSON: what an unhandled crash would print."""
    return [line for line in worker.log_text().splitlines() if not line.startswith("{")]


def cases() -> list[Any]:
    return [
        pytest.param(
            poison,
            id=poison.name,
            marks=[pytest.mark.xfail(strict=True, reason=poison.pending["batch"])]
            if "batch" in poison.pending
            else [],
        )
        for poison in CATALOGUE
    ]


def test_one_worker_goes_through_the_whole_catalogue_and_the_good_file(run: Run) -> None:
    worker, stack = run.worker, run.stack
    assert run.exit_code == 0, worker.log_text()[-3000:]
    assert worker.events("worker_idle"), "the worker did not stop by going idle"
    files = worker.files()
    keys = [f["key"] for f in files]
    assert set(keys) == {p.key for p in CATALOGUE} | {GOOD_KEY}
    crashed = {f["key"] for f in files if f["status"] not in ("failed", "succeeded")}
    assert crashed <= AWAITING_FIX, "an unexpected error: the message would go to the DLQ"
    assert [key for key in keys if keys.count(key) > 1 and key not in crashed] == []
    dead = {body["key"] for body in stack.dlq_bodies()}
    assert dead <= crashed
    left = sum(stack.cloud.queue_attributes(stack.queue_url).values())
    assert left + len(dead) == len(crashed), "only unexpected errors may be retried"
    assert [e for e in worker.events() if "traceback" in e and e.get("key") not in crashed] == []
    assert "Traceback" not in "".join(unstructured_lines(worker)), "the worker crashed"
    report = stack.report(GOOD_KEY)
    assert report is not None and report["status"] == "succeeded", report
    assert report["rows"] == 20
    output = stack.read_output(stack.output_key(GOOD_KEY), "parquet")
    assert len(output) == 20 and list(output.columns) == ["id", "activation"]


@pytest.mark.parametrize("poison", cases())
def test_poison_has_a_report_naming_the_problem(run: Run, poison: Poison) -> None:
    expect = poison.batch
    report = run.stack.report(poison.key)
    assert report is not None, f"no report for {poison.key}"
    if expect.code is None:
        assert report["status"] == "succeeded", report
        assert report["rows"] == expect.rows
        return
    assert report["status"] == "failed", report
    assert expect.accepts(report["error"]), report
    message = report["message"] or ""
    assert poison.key in message, message
    explanation = message.replace(f"s3://{run.stack.input_bucket}/{poison.key}", "")
    assert expect.missing_words(explanation) == [], message
    assert report["output_key"] is None


def test_no_output_for_any_failed_poison(run: Run) -> None:
    stack = run.stack
    written = set(stack.cloud.keys(stack.output_bucket, f"{stack.prefix}/model="))
    succeeded = {p.key for p in CATALOGUE if p.batch.code is None} - AWAITING_FIX
    awaiting_fix = {stack.output_key(key) for key in AWAITING_FIX}
    expected = {stack.output_key(key) for key in succeeded | {GOOD_KEY}}
    assert written - awaiting_fix == expected
