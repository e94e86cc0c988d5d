"""The Batcher with real threads and the real predict path: who shares a call, who runs
alone, and that a failing request never fails its neighbours."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest

from localcloud.waiting import wait_until
from service.batching import Batcher
from service.errors import InvalidData
from service.model import predict

SECONDS = 10.0


class GatedPredict:
    """The real predict, holding its first call until `release` so others queue behind it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, bundle, frame: pd.DataFrame) -> pd.DataFrame:
        with self.lock:
            first = not self.calls
            self.calls.append(len(frame))
        if first:
            assert self.gate.wait(SECONDS)
        return predict(bundle, frame)


def queued(batcher: Batcher) -> int:
    with batcher._lock:
        return len(batcher._queue)


def start_first(
    batcher: Batcher, bundle, first: pd.DataFrame, gate: GatedPredict, threads: int
) -> tuple[ThreadPoolExecutor, Future]:
    """A pool whose first task, predicting `first`, holds the batcher busy until released."""
    pool = ThreadPoolExecutor(threads)
    head = pool.submit(batcher.predict, bundle, first)
    wait_until(lambda: gate.calls, SECONDS, "the first prediction to start")
    return pool, head


def run_behind_first(
    batcher: Batcher, bundle, first: pd.DataFrame, frames: list[pd.DataFrame], gate: GatedPredict
) -> tuple[Future, list[Future]]:
    """`first` holds the batcher busy while `frames` arrive; then it is released."""
    pool, head = start_first(batcher, bundle, first, gate, len(frames) + 1)
    rest = [pool.submit(batcher.predict, bundle, frame) for frame in frames]
    wait_until(lambda: queued(batcher) == len(frames), SECONDS, "the others to queue")
    gate.gate.set()
    pool.shutdown(wait=True)
    return head, rest


def one_row(frame: pd.DataFrame, i: int) -> pd.DataFrame:
    return frame.iloc[[i]].reset_index(drop=True)


def assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns, dtypes, ids and labels; probabilities to 1e-12 relative (BLAS sums a
    matrix's rows in another order than one row's, so bit equality cannot hold)."""
    assert list(got.columns) == list(want.columns)
    assert list(got.dtypes) == list(want.dtypes)
    assert isinstance(got.index, pd.RangeIndex) and len(got) == len(want)
    for column in want.columns:
        if want[column].dtype.kind == "f":
            np.testing.assert_allclose(got[column], want[column], rtol=1e-12, atol=1e-15)
        else:
            assert np.array_equal(got[column].to_numpy(), want[column].to_numpy())


def test_a_request_alone_runs_at_once_in_its_own_thread(bundle, sample_frame):
    threads: list[int] = []
    sizes: list[int] = []

    def spy(bundle, frame):
        threads.append(threading.get_ident())
        return predict(bundle, frame)

    batcher = Batcher(64, wait_seconds=SECONDS, record=sizes.append, predict=spy)
    answer = batcher.predict(bundle, one_row(sample_frame, 0))
    assert threads == [threading.get_ident()] and sizes == [1]
    assert_same(answer, predict(bundle, one_row(sample_frame, 0)))
    assert not batcher._busy


def test_requests_arriving_during_a_call_share_the_next_one(bundle, sample_frame):
    gate, sizes = GatedPredict(), []
    batcher = Batcher(64, wait_seconds=SECONDS, record=sizes.append, predict=gate)
    frames = [one_row(sample_frame, i) for i in range(1, 9)]
    head, rest = run_behind_first(batcher, bundle, one_row(sample_frame, 0), frames, gate)
    assert gate.calls == [1, 8]
    assert sizes == [1, 8]
    for frame, future in zip(frames, rest, strict=True):
        assert_same(future.result(), predict(bundle, frame))
    assert_same(head.result(), predict(bundle, one_row(sample_frame, 0)))


def pairs(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[i : i + 2].reset_index(drop=True) for i in range(0, 10, 2)]


def unlike(frame: pd.DataFrame) -> list[pd.DataFrame]:
    """Same rows; another column order; another dtype; then one like the first."""
    plain = one_row(frame, 1)
    return [
        plain,
        plain[list(reversed(plain.columns))],
        plain.astype({"id": str}),
        one_row(frame, 2),
    ]


@pytest.mark.parametrize(
    ("cap", "make", "calls"),
    [(4, pairs, [1, 4, 4, 2]), (64, unlike, [1, 2, 1, 1])],
    ids=["the row cap splits the queue", "frames unlike the first wait for their own call"],
)
def test_who_shares_a_call(bundle, sample_frame, cap, make, calls):
    gate = GatedPredict()
    batcher = Batcher(cap, wait_seconds=SECONDS, predict=gate)
    frames = make(sample_frame)
    _, rest = run_behind_first(batcher, bundle, one_row(sample_frame, 0), frames, gate)
    assert gate.calls == calls
    for frame, future in zip(frames, rest, strict=True):
        assert_same(future.result(), predict(bundle, frame))


def test_a_frame_over_the_cap_runs_at_once_beside_the_call_in_flight(bundle, sample_frame):
    gate = GatedPredict()
    batcher = Batcher(64, wait_seconds=SECONDS, predict=gate)
    pool, head = start_first(batcher, bundle, one_row(sample_frame, 0), gate, 1)
    big = sample_frame.iloc[:100].reset_index(drop=True)
    assert_same(batcher.predict(bundle, big), predict(bundle, big))
    assert not head.done()
    gate.gate.set()
    pool.shutdown(wait=True)
    assert gate.calls == [1, 100]


def test_a_hot_reloaded_bundle_is_not_mixed_with_the_old_one(bundle_dir, sample_frame):
    from service.artifacts import load_bundle

    old, new = load_bundle(str(bundle_dir)), load_bundle(str(bundle_dir))
    gate = GatedPredict()
    batcher = Batcher(64, wait_seconds=SECONDS, predict=gate)
    pool, _ = start_first(batcher, old, one_row(sample_frame, 0), gate, 4)
    for count, bundle in enumerate((old, new, old), start=1):
        pool.submit(batcher.predict, bundle, one_row(sample_frame, 1))
        wait_until(lambda n=count: queued(batcher) == n, SECONDS, "the request to queue")
    gate.gate.set()
    pool.shutdown(wait=True)
    assert gate.calls == [1, 2, 1]


def test_a_failing_request_gets_its_own_error_and_its_neighbours_their_answers(
    bundle, sample_frame
):
    gate = GatedPredict()
    batcher = Batcher(64, wait_seconds=SECONDS, predict=gate)
    bad = one_row(sample_frame, 3).copy()
    bad.loc[0, bundle.input_columns[0]] = np.inf
    frames = [one_row(sample_frame, 1), bad, one_row(sample_frame, 2)]
    assert len({tuple(frame.dtypes) for frame in frames}) == 1
    _, rest = run_behind_first(batcher, bundle, one_row(sample_frame, 0), frames, gate)
    assert gate.calls == [1, 3, 1, 1, 1]
    assert_same(rest[0].result(), predict(bundle, frames[0]))
    assert_same(rest[2].result(), predict(bundle, frames[2]))
    with pytest.raises(InvalidData, match="infinite"):
        rest[1].result()


def test_a_queued_request_runs_alone_once_its_wait_is_over(bundle, sample_frame):
    gate = GatedPredict()
    batcher = Batcher(64, wait_seconds=0.01, predict=gate)
    pool, head = start_first(batcher, bundle, one_row(sample_frame, 0), gate, 2)
    late = pool.submit(batcher.predict, bundle, one_row(sample_frame, 1))
    answer = late.result(timeout=SECONDS)
    assert not head.done()
    gate.gate.set()
    pool.shutdown(wait=True)
    assert gate.calls == [1, 1]
    assert_same(answer, predict(bundle, one_row(sample_frame, 1)))
    assert not batcher._busy and not batcher._queue


def test_off_when_the_cap_is_zero(bundle, sample_frame):
    sizes: list[int] = []
    batcher = Batcher(0, wait_seconds=SECONDS, record=sizes.append)
    answer = batcher.predict(bundle, one_row(sample_frame, 0))
    assert_same(answer, predict(bundle, one_row(sample_frame, 0)))
    assert sizes == [1] and not batcher._busy


def test_metrics_render_the_batch_size_histogram():
    from service import metrics
    from tests.endpoint_fixtures import metric

    shared = metrics.Metrics(slots=2)
    for slot, size in ((0, 1), (0, 3), (1, 3), (1, 200)):
        shared.slot(slot).observe_batch(size)
    text = shared.render().decode()
    name = "endpoint_batch_requests"
    assert metric(text, f"{name}_bucket", le="1") == 1
    assert metric(text, f"{name}_bucket", le="2") == 1
    assert metric(text, f"{name}_bucket", le="4") == 3
    assert metric(text, f"{name}_bucket", le="128") == 3
    assert metric(text, f"{name}_bucket", le="+Inf") == 4
    assert metric(text, f"{name}_count") == 4
    assert metric(text, f"{name}_sum") == 207


# -- requests that are all here at once (the event loop's pass) --------------------------


class Recording:
    """The real predict, recording how many rows each call got."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, bundle, frame: pd.DataFrame) -> pd.DataFrame:
        self.calls.append(len(frame))
        return predict(bundle, frame)


def test_requests_here_at_once_share_calls_by_kind_and_cap(bundle, sample_frame):
    spy, sizes = Recording(), []
    batcher = Batcher(4, wait_seconds=SECONDS, record=sizes.append, predict=spy)
    frames = [one_row(sample_frame, i) for i in range(6)]
    reordered = frames[1][list(reversed(frames[1].columns))]
    big = sample_frame.iloc[10:15].reset_index(drop=True)
    frames[2:2] = [reordered, big]
    answers = batcher.predict_ready([(bundle, frame) for frame in frames])
    # the frame over the cap first, alone; then the first four alike; then the odd one;
    # then the rest
    assert spy.calls == [5, 4, 1, 2]
    assert sizes == [1, 4, 1, 2]
    for frame, answer in zip(frames, answers, strict=True):
        assert_same(answer, predict(bundle, frame))
    assert not batcher._busy


def test_a_failing_request_here_at_once_gets_its_own_error(bundle, sample_frame):
    spy = Recording()
    batcher = Batcher(64, wait_seconds=SECONDS, predict=spy)
    bad = one_row(sample_frame, 3).copy()
    bad.loc[0, bundle.input_columns[0]] = np.inf
    frames = [one_row(sample_frame, 1), bad, one_row(sample_frame, 2)]
    answers = batcher.predict_ready([(bundle, frame) for frame in frames])
    assert spy.calls == [3, 1, 1, 1]
    assert_same(answers[0], predict(bundle, frames[0]))
    assert_same(answers[2], predict(bundle, frames[2]))
    assert isinstance(answers[1], InvalidData) and "infinite" in answers[1].message


def test_requests_here_at_once_never_mix_bundles(bundle_dir, sample_frame):
    from service.artifacts import load_bundle

    old, new = load_bundle(str(bundle_dir)), load_bundle(str(bundle_dir))
    spy = Recording()
    batcher = Batcher(64, wait_seconds=SECONDS, predict=spy)
    row = one_row(sample_frame, 1)
    answers = batcher.predict_ready([(old, row), (new, row), (old, row)])
    assert spy.calls == [2, 1]
    for answer in answers:
        assert_same(answer, predict(old, row))
