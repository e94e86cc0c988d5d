"""service.threads: read_ahead, the stage that overlaps reading the next row batches with
the work on this one (the worker's transform_file chains two of them), and gil_switch."""

import sys
import threading
import time

import pytest

from service import transform
from service.files import FileFormat
from service.threads import gil_switch, read_ahead
from tests.support import wait_for


def test_yields_every_item_in_order():
    assert list(read_ahead(iter(range(1000)), depth=2)) == list(range(1000))


def test_reads_at_most_depth_items_ahead_of_the_consumer():
    produced = []

    def source():
        for number in range(50):
            produced.append(number)
            yield number

    items = read_ahead(source(), depth=2)
    assert next(items) == 0
    wait_for(lambda: len(produced) >= 4, 5, "the producer to fill the queue", 0.01)
    time.sleep(0.1)  # a window in which the producer, blocked, must not go further
    # one handed out, two queued, one produced and waiting for room
    assert len(produced) <= 1 + 2 + 1
    items.close()


def test_an_error_of_the_source_is_raised_to_the_consumer_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise ValueError("bad row group")

    items = read_ahead(source())
    assert [next(items), next(items)] == [1, 2]
    with pytest.raises(ValueError, match="bad row group"):
        next(items)


def test_closing_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            yield from range(10_000)
        finally:
            closed.set()

    before = threading.active_count()
    items = read_ahead(source(), depth=2)
    assert next(items) == 0
    items.close()
    assert closed.wait(5), "the source was not closed"
    wait_for(lambda: threading.active_count() <= before, 5, "the read-ahead thread to end", 0.01)
    assert threading.active_count() == before


def test_gil_switch_sets_the_interval_for_the_block_and_restores_it():
    before = sys.getswitchinterval()
    with gil_switch(0.0007):
        assert sys.getswitchinterval() == pytest.approx(0.0007)
    assert sys.getswitchinterval() == before
    with pytest.raises(RuntimeError), gil_switch(0.0007):
        raise RuntimeError("the block failed")
    assert sys.getswitchinterval() == before


def test_a_file_is_transformed_with_the_short_switch_interval(
    monkeypatch, bundle, train_example, tmp_path
):
    before, seen = sys.getswitchinterval(), []

    def predict(*args):
        seen.append(sys.getswitchinterval())
        return real(*args)

    real = transform.predict
    monkeypatch.setattr(transform, "predict", predict)
    source = tmp_path / "rows.parquet"
    train_example.sample_rows(50).to_parquet(source, index=False)
    target = str(tmp_path / "out.parquet")
    transform.transform_file(str(source), FileFormat("parquet"), target, bundle, "parquet", 20)
    assert seen == [pytest.approx(transform.GIL_SWITCH_SECONDS)] * 3
    assert sys.getswitchinterval() == before
