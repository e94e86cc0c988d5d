"""ModelWrap: the model's prediction step, and `predict`, the path everyone shares.

This is an extension point: override `ModelWrap.prepare` or `ModelWrap.predict` for a
model whose answer is not what `service.tasks` gives by task (a classifier's
probabilities and label, a regressor's prediction). A wrap is built once per loaded
bundle, so work done in `__init__` is done once per model version. The endpoint and
the batch worker both call `predict`, so their results agree.
"""

from typing import Any

import pandas as pd

from service.artifacts import Bundle
from service.data import prepare_data
from service.errors import InvalidData
from service.features import require_columns
from service.tasks import answer, task_of


class ModelWrap:
    """Wraps a loaded bundle with the prepare-then-predict steps."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        names = {"id_column": bundle.id_column, "output_column": bundle.output_column}
        self.task = task_of(bundle.model, {**bundle.manifest, **names}, bundle.name)
        self.required = (bundle.id_column, *bundle.input_columns)

    def prepare(self, frame: pd.DataFrame) -> Any:
        return prepare_data(frame, self.bundle)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One output row per input row: the id and the model's answer by task."""
        if len(frame) == 0:
            raise InvalidData("the input has no rows: send at least one row")
        require_columns(frame, self.required)
        features = self.prepare(frame)
        ids = frame[self.bundle.id_column].to_numpy()
        return answer(self.task, self.bundle.model, features, ids, self.bundle.id_column)


_wrapped: tuple[Bundle, ModelWrap] | None = None


def wrap(bundle: Bundle) -> ModelWrap:
    """The bundle's ModelWrap, built once per loaded bundle (a hot reload builds the next)."""
    global _wrapped
    last = _wrapped
    if last is not None and last[0] is bundle:
        return last[1]
    wrapped = ModelWrap(bundle)
    _wrapped = (bundle, wrapped)
    return wrapped


def predict(bundle: Bundle, frame: pd.DataFrame) -> pd.DataFrame:
    """Prepare and predict `frame` with `bundle`: the one path endpoint and worker call."""
    return wrap(bundle).predict(frame)
