"""What a model's answer looks like, by task, decided once when its bundle loads.

- binary classifier: the positive class's probability in `output_column`, and the
  predicted label in `label_column` when the manifest names one;
- multi-class classifier: one probability column per class (named after the class,
  in `classes_` order), then the predicted label (`label_column`, default `label`);
- regressor: the prediction in `output_column`, or one column per target for a
  multi-output model (`target_columns` in the manifest, else `<output_column>_<i>`).

The label is the class of highest probability, which is what scikit-learn's
classifiers (and LightGBM's) `predict` returns, without a second pass over the rows.

The model is called on a whole number of blocks of `row_block` rows (the last row
repeated, its copies' answers dropped). BLAS works through a matrix in blocks of rows and
sums a row that ends a ragged call in another order, so without the padding a row's last
bits depend on how many rows share its call; with it, a row gets the same answer bit for
bit alone, in a request, in a shared call and in a batch file.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from service.errors import InvalidData, ManifestError
from service.frames import column_index, frame_of

DEFAULT_LABEL_COLUMN = "label"
# Whole blocks for every BLAS kernel measured (OpenBLAS' Haswell, Sandybridge, Nehalem and
# Katmai kernels: 8 rows suffice), with room to spare. Its AVX-512 kernels take another path
# for a big call whatever the block, so a CPU with AVX-512 runs the AVX2 ones (service.blas).
DEFAULT_ROW_BLOCK = 16
MAX_ROW_BLOCK = 1024


@dataclass(frozen=True, eq=False)
class Task:
    """How to turn a model's output into answer columns."""

    kind: str  # "binary", "multiclass" or "regression"
    output_column: str
    label_column: str | None = None
    classes: np.ndarray | None = None
    target_columns: tuple[str, ...] = ()
    row_block: int = DEFAULT_ROW_BLOCK

    @property
    def probability_columns(self) -> tuple[str, ...]:
        if self.kind != "multiclass" or self.classes is None:
            return ()
        return tuple(str(c) for c in self.classes)


def task_of(model: Any, manifest: Mapping[str, Any], uri: str) -> Task:
    """The task of `model`, with the answer's column names from the manifest."""
    output = str(manifest.get("output_column", "activation"))
    label = manifest.get("label_column")
    targets = tuple(str(t) for t in manifest.get("target_columns") or ())
    block = _row_block(manifest, uri)
    if not hasattr(model, "predict_proba"):
        return Task("regression", output, target_columns=targets, row_block=block)
    classes = getattr(model, "classes_", None)
    if classes is None or len(classes) <= 2:
        known = None if classes is None else np.asarray(classes)
        return Task("binary", output, label, known, row_block=block)
    task = Task(
        "multiclass", output, label or DEFAULT_LABEL_COLUMN, np.asarray(classes), row_block=block
    )
    names = [*task.probability_columns, task.label_column]
    id_column = manifest.get("id_column", "id")
    if len(set(names)) != len(names) or id_column in names:
        raise ManifestError(
            f"manifest at {uri}: the answer's columns {names} (one per class, then the label) "
            f"repeat a name or the id column {id_column!r}: set a different label_column"
        )
    return task


def _row_block(manifest: Mapping[str, Any], uri: str) -> int:
    block = manifest.get("row_block", DEFAULT_ROW_BLOCK)
    if type(block) is not int or not 1 <= block <= MAX_ROW_BLOCK:
        raise ManifestError(
            f"manifest at {uri}: row_block is {block!r}: give a whole number of rows from 1 "
            f"to {MAX_ROW_BLOCK} (default {DEFAULT_ROW_BLOCK}; 1 calls the model on the rows "
            "as sent)"
        )
    return block


def answer(task: Task, model: Any, features: Any, ids: np.ndarray, id_column: str) -> pd.DataFrame:
    """The answer frame: the ids, then the task's columns, one row per input row."""
    if task.kind == "regression":
        return _regression(task, _call(model.predict, features, task.row_block), ids, id_column)
    proba = _call(model.predict_proba, features, task.row_block)
    if task.kind == "binary":
        columns = {id_column: ids, task.output_column: proba[:, 1]}
    else:
        columns = {id_column: ids}
        columns.update(zip(task.probability_columns, proba.T, strict=True))
    if task.label_column is not None and task.classes is not None:
        columns[task.label_column] = task.classes.take(proba.argmax(axis=1))
    return _frame(columns)


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    """The answer's columns as a frame (see service/frames.py for why not pd.DataFrame)."""
    names = column_index(tuple(columns))
    built = frame_of(
        names, list(columns.values()), pd.RangeIndex(len(next(iter(columns.values()))))
    )
    return pd.DataFrame(columns, copy=False) if built is None else built


def _call(method: Any, features: Any, row_block: int) -> Any:
    """The model's answer to `features` (padded to whole row blocks when they are an array
    or a DataFrame), padding dropped. The model's own refusal of rows that passed our
    checks (a missing value where its pipeline has no imputer, say) is the client's to
    fix: a 422 with the model's reason."""
    rows = features.shape[0] if isinstance(features, np.ndarray | pd.DataFrame) else 0
    extra = -rows % row_block
    padded = _padded(features, rows, extra) if rows else features
    try:
        result = method(padded)
    except (ValueError, TypeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidData(f"the model cannot predict these rows: {reason}") from None
    return np.asarray(result)[:rows] if extra else result


def _padded(features: np.ndarray | pd.DataFrame, rows: int, extra: int) -> Any:
    """`features` with its last row repeated `extra` times; an array C-ordered either way
    (BLAS sums a row of another layout in another order)."""
    if isinstance(features, pd.DataFrame):
        if not extra:
            return features
        return features.take(np.r_[np.arange(rows), np.full(extra, rows - 1)])
    features = np.ascontiguousarray(features)
    if not extra:
        return features
    return np.concatenate((features, np.repeat(features[-1:], extra, axis=0)))


def _regression(task: Task, predicted: Any, ids: np.ndarray, id_column: str) -> pd.DataFrame:
    values = np.asarray(predicted)
    if values.ndim == 1:
        return _frame({id_column: ids, task.output_column: values})
    names = task.target_columns or tuple(
        f"{task.output_column}_{i}" for i in range(values.shape[1])
    )
    if len(names) != values.shape[1]:
        raise ManifestError(
            f"the model predicts {values.shape[1]} targets but target_columns names {len(names)}"
        )
    return _frame({id_column: ids, **dict(zip(names, values.T, strict=True))})
