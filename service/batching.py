"""Adaptive batching: small requests that arrive while a prediction runs share the next call.

A model call has a fixed cost per call (scikit-learn's input validation, building the
answer's DataFrame) that a one-row request pays in full. `Batcher.predict` runs the
first request of an idle batcher at once, so a request alone never waits; requests
that arrive while a prediction is in flight queue up, and when it ends the oldest of
them runs the queued frames that can share a call (same bundle, same columns and
dtypes) as one, and hands each its own rows back. A queued request waits at most
`wait_seconds` for its turn, then runs on its own. Nothing waits on the thread that
receives requests: a request handled on waitress's event loop only waits for a
prediction already running on another thread.

`Batcher.predict_ready` is the same sharing for requests that are all here at once:
the small requests the event loop read in one pass, or that a request thread found
queued behind its own (see service/waitress_hooks.py). They share calls without
waiting for anything.

A failed batch is retried one request at a time, so each request gets its own answer
or its own error, never a neighbour's.
"""

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import pandas as pd

from service.artifacts import Bundle
from service.model import predict as predict_frame

Predict = Callable[[Bundle, pd.DataFrame], pd.DataFrame]
Answer = pd.DataFrame | Exception
E = TypeVar("E", bound="_Entry")


class _Entry:
    """One request's frame, and what the call that took it gave back."""

    __slots__ = ("_dtypes", "bundle", "error", "frame", "result")

    def __init__(self, bundle: Bundle, frame: pd.DataFrame) -> None:
        self.bundle = bundle
        self.frame = frame
        self.result: pd.DataFrame | None = None
        self.error: Exception | None = None
        self._dtypes: tuple[object, ...] | None = None

    @property
    def dtypes(self) -> tuple[object, ...]:
        """The frame's dtypes, read when first compared (~30 us: a request alone never is)."""
        if self._dtypes is None:
            self._dtypes = tuple(self.frame.dtypes)
        return self._dtypes


class _Queued(_Entry):
    """One request waiting on a thread for its turn."""

    __slots__ = ("batch", "done")

    def __init__(self, bundle: Bundle, frame: pd.DataFrame) -> None:
        super().__init__(bundle, frame)
        self.done = threading.Event()
        self.batch: list[_Queued] | None = None  # set when this request is to run a batch


class Batcher:
    """Gathers the small requests of one server process into shared prediction calls.

    `max_rows` caps the rows of one call (0 turns batching off); a request with more
    rows runs alone. `record(requests)` is told how many requests each call served.
    """

    def __init__(
        self,
        max_rows: int,
        wait_seconds: float,
        record: Callable[[int], None] | None = None,
        predict: Predict = predict_frame,
    ) -> None:
        self.max_rows = max_rows
        self.wait_seconds = wait_seconds
        self.record = record or (lambda requests: None)
        self._predict = predict
        self._lock = threading.Lock()
        self._busy = False
        self._queue: list[_Queued] = []

    def predict(self, bundle: Bundle, frame: pd.DataFrame) -> pd.DataFrame:
        """`predict(bundle, frame)`, in a call shared with concurrent requests when it can."""
        if len(frame) > self.max_rows or len(frame) == 0:
            return self._alone(bundle, frame)
        with self._lock:
            leading = not self._busy
            if leading:
                self._busy = True
            else:
                entry = _Queued(bundle, frame)
                self._queue.append(entry)
        if leading:
            try:
                return self._alone(bundle, frame)
            finally:
                self._hand_over()
        return self._await(entry)

    def predict_ready(self, calls: list[tuple[Bundle, pd.DataFrame]]) -> list[Answer]:
        """Each (bundle, frame)'s answer, or the exception its prediction raised; frames
        that can share a call (as in `predict`) share one. Nothing waits: the requests
        are all here."""
        entries = [_Entry(bundle, frame) for bundle, frame in calls]
        waiting = []
        for entry in entries:
            if 0 < len(entry.frame) <= self.max_rows:
                waiting.append(entry)
            else:
                self._shared([entry])
        while waiting:
            batch, waiting = _fitting(waiting, self.max_rows)
            self._shared(batch)
        return [entry.result if entry.error is None else entry.error for entry in entries]

    def _alone(self, bundle: Bundle, frame: pd.DataFrame) -> pd.DataFrame:
        self.record(1)
        return self._predict(bundle, frame)

    def _await(self, entry: _Queued) -> pd.DataFrame:
        if not entry.done.wait(self.wait_seconds):
            with self._lock:
                gave_up = entry in self._queue
                if gave_up:
                    self._queue.remove(entry)
            if gave_up:
                return self._alone(entry.bundle, entry.frame)
            entry.done.wait()
        if entry.batch is not None:
            try:
                self._run(entry.batch)
            finally:
                self._hand_over()
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result

    def _hand_over(self) -> None:
        """The call in flight ended: the oldest queued request runs the next batch."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            batch = self._take()
        batch[0].batch = batch
        batch[0].done.set()

    def _take(self) -> list[_Queued]:
        """The oldest queued request and those after it that fit in its call (lock held)."""
        batch, self._queue = _fitting(self._queue, self.max_rows)
        return batch

    def _run(self, batch: list[_Queued]) -> None:
        self._shared(batch)
        for entry in batch:
            _finish(entry)

    def _shared(self, batch: Sequence[_Entry]) -> None:
        """Predict the batch in one call and split the answer; one by one if that fails."""
        if len(batch) > 1:
            try:
                self.record(len(batch))
                frame = pd.concat([entry.frame for entry in batch], ignore_index=True)
                result = self._predict(batch[0].bundle, frame)
            except Exception:
                result = None
            if result is not None and len(result) == len(frame):
                start = 0
                for entry in batch:
                    stop = start + len(entry.frame)
                    # its index keeps the rows' places in the call: encoders ignore it
                    entry.result = result.iloc[start:stop]
                    start = stop
                return
        for entry in batch:
            try:
                entry.result = self._alone(entry.bundle, entry.frame)
            except Exception as exc:
                entry.error = exc


def _fitting(entries: list[E], max_rows: int) -> tuple[list[E], list[E]]:
    """The first entry and those after it that can share its call; then the others."""
    first = entries[0]
    batch, rest, rows = [first], [], len(first.frame)
    for entry in entries[1:]:
        if _alike(entry, first) and rows + len(entry.frame) <= max_rows:
            batch.append(entry)
            rows += len(entry.frame)
        else:
            rest.append(entry)
    return batch, rest


def _finish(entry: _Queued) -> None:
    if entry.batch is None:
        entry.done.set()


def _alike(one: _Entry, other: _Entry) -> bool:
    """Frames share a call only with the same bundle object (a hot reload makes a new
    one), the same columns in the same order and the same dtypes."""
    columns = one.frame.columns
    return (
        one.bundle is other.bundle
        and (columns is other.frame.columns or columns.equals(other.frame.columns))
        and one.dtypes == other.dtypes
    )
