"""ModelWrap: the model's prediction step, and `predict`, the path everyone shares.

This is an extension point: override `ModelWrap.predict` for a model whose output
is not "probability of the positive class" (classifier) or "predict" (regressor).
The endpoint and the batch worker both call `predict`, so their results agree.
"""

import numpy as np
import pandas as pd

from service.artifacts import Bundle
from service.data import prepare_data, require_columns
from service.errors import InvalidData


class ModelWrap:
    """Wraps a loaded bundle with the prepare-then-predict steps."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def prepare(self, frame: pd.DataFrame) -> np.ndarray:
        return prepare_data(frame, self.bundle)

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One output row per input row: the id and the model's score."""
        bundle = self.bundle
        if len(frame) == 0:
            raise InvalidData("the input has no rows: send at least one row")
        require_columns(frame, (bundle.id_column, *bundle.columns))
        features = self.prepare(frame)
        model = bundle.model
        if hasattr(model, "predict_proba"):
            scores = model.predict_proba(features)[:, 1]
        else:
            scores = model.predict(features)
        ids = frame[bundle.id_column].to_numpy()
        return pd.DataFrame({bundle.id_column: ids, bundle.output_column: scores}, copy=False)


def predict(bundle: Bundle, frame: pd.DataFrame) -> pd.DataFrame:
    """Prepare and predict `frame` with `bundle`: the one path endpoint and worker call."""
    return ModelWrap(bundle).predict(frame)
