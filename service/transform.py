"""The pure per-file transform: an input file in, a predictions file out.

No cloud here: the worker hands in its S3 input and output as file objects (read as they
stream in, uploaded as they are written); tests and the bench hand in local paths.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import IO

import pandas as pd
from threadpoolctl import ThreadpoolController

from service.artifacts import Bundle
from service.batch import Aborted
from service.errors import InvalidData
from service.files import BatchWriter, FileFormat, Source, iter_batches
from service.model import predict
from service.threads import gil_switch, read_ahead

READ_AHEAD = 2  # row batches waiting between two stages of transform_file
GIL_SWITCH_SECONDS = 0.001  # see service.threads.gil_switch


@functools.cache
def _libraries() -> ThreadpoolController:
    """The native thread pools loaded (BLAS, OpenMP), found once: the scan takes ~3 ms, too
    much for every small file. The first file comes after the model's imports."""
    return ThreadpoolController()


def transform_file(
    source: Source,
    fmt: FileFormat,
    target: str | IO[bytes],
    bundle: Bundle,
    output_format: str,
    batch_rows: int,
    *,
    join_input: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Predict every row of a file into a file, batch by batch; rows written.

    Three stages overlap: reading the next batches, predicting, writing the previous ones,
    with at most READ_AHEAD batches waiting between two stages. BLAS runs single-threaded:
    the worker process is the unit of parallelism (MaxWorkers), and a second BLAS thread on
    the same cores costs CPU without saving time. The threads that fetch the input and
    send the output take the GIL back sooner (gil_switch).
    """
    rows = 0

    def predicted() -> Iterator[pd.DataFrame]:
        frames = iter_batches(source, fmt, batch_rows, bundle.numeric_columns)
        for frame in read_ahead(frames, READ_AHEAD):
            if should_stop():
                raise Aborted("stopped between batches")
            predictions = predict(bundle, frame)
            yield join_columns(frame, predictions, bundle) if join_input else predictions

    single_blas = _libraries().limit(limits=1, user_api="blas")
    with gil_switch(GIL_SWITCH_SECONDS), single_blas, BatchWriter(target, output_format) as writer:
        for frame in read_ahead(predicted(), READ_AHEAD):
            writer.write(frame)
            rows += len(frame)
    if rows == 0:
        raise InvalidData("the file has no data rows: it needs a header and at least one row")
    return rows


def join_columns(frame: pd.DataFrame, predictions: pd.DataFrame, bundle: Bundle) -> pd.DataFrame:
    """The input columns with every prediction column appended (SageMaker's
    JoinSource=Input); the id column is the input's own, so it is not repeated."""
    added = [c for c in predictions.columns if c != bundle.id_column]
    return frame.assign(**{c: predictions[c].to_numpy() for c in added})
