"""prepare_data: turn input rows into what the model was trained on.

This is an extension point: change it to match how your model's training data was
prepared (outlier clipping, derived features, ...). The endpoint and the batch
worker both call it, so a change here applies to both. The columns are already
checked to be there when it runs.
"""

from typing import Any

import pandas as pd

from service.artifacts import Bundle
from service.features import numeric_features
from service.schema import conform


def prepare_data(frame: pd.DataFrame, bundle: Bundle) -> Any:
    """A pipeline bundle: the schema's columns, each checked and read as its type (a
    DataFrame; the pipeline's own steps do the rest). A four-artifact bundle: its
    columns in model order as a float matrix, missing values filled with the bundle's
    means, then its scaler. Extra columns are ignored."""
    if bundle.schema:
        return conform(frame, bundle.schema)
    return numeric_features(frame, bundle)
