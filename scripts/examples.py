"""The pipeline examples `train_example.py --kind` trains: generated or bundled data only.

- `mixed`: a churn-like binary classifier on a number and an integer with missing
  values, two string categories (one with missing values), a boolean and a signup
  date (with missing values), through a ColumnTransformer (imputers, one-hot encoding, scaling);
- `multiclass`: scikit-learn's wine data plus a pandas `category` column, three
  cultivars with string labels, HistGradientBoosting with `categorical_features="from_dtype"`;
- `regression`: scikit-learn's diabetes data, a ridge regression behind a scaler.
"""

from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_wine
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

PLANS = ["basic", "plus", "pro"]
REGIONS = ["north", "south", "east", "west"]
CELLARS = ["old", "new", "hill"]
NAT_AS_FLOAT = float(np.iinfo(np.int64).min)


def mixed_frame(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, rows),
            "tenure": rng.integers(0, 120, rows),
            "plan": rng.choice(PLANS, rows),
            "region": rng.choice(REGIONS, rows),
            "active": rng.random(rows) < 0.6,
            "signup": pd.Timestamp("2020-01-01")
            + pd.to_timedelta(rng.integers(0, 5 * 365 * 86400, rows), unit="s"),
        }
    )
    score = (
        -0.01 * frame["amount"]
        + 0.02 * frame["tenure"]
        + frame["plan"].map({"basic": -1.0, "plus": 0.0, "pro": 1.0})
        + 0.8 * frame["active"]
        - 0.3 * (frame["signup"].dt.year - 2022)
    )
    target = (score + rng.normal(0, 0.5, rows) > 0.3).astype(np.int64).to_numpy()
    frame["amount"] = frame["amount"].mask(rng.random(rows) < 0.05)
    frame["plan"] = frame["plan"].mask(rng.random(rows) < 0.05)
    frame["signup"] = frame["signup"].mask(rng.random(rows) < 0.03)
    return frame, target


def mixed_pipeline() -> Pipeline:
    """Named columns in, as people write them: each type through its own steps."""
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    flags = make_pipeline(
        FunctionTransformer(np.asarray, kw_args={"dtype": "float64"}),
        SimpleImputer(strategy="most_frequent"),
    )
    # A missing date arrives as NaT, which int64 reads as its smallest value: impute that.
    epoch = make_pipeline(
        FunctionTransformer(np.asarray, kw_args={"dtype": "float64"}),
        SimpleImputer(missing_values=NAT_AS_FLOAT, strategy="median"),
        StandardScaler(),
    )
    columns = ColumnTransformer(
        [
            (
                "numbers",
                make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                ["amount", "tenure"],
            ),
            ("categories", categorical, ["plan", "region"]),
            ("flags", flags, ["active"]),
            ("dates", epoch, ["signup"]),
        ]
    )
    return Pipeline([("columns", columns), ("model", LogisticRegression(max_iter=2000))])


def wine_frame(rows: int | None, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    data = load_wine(as_frame=True)
    frame = data.data.rename(columns=lambda name: name.replace("/", "_"))
    rng = np.random.default_rng(seed)
    frame["cellar"] = pd.Categorical(rng.choice(CELLARS, len(frame)), categories=CELLARS)
    labels = np.array([f"cultivar_{i}" for i in data.target], dtype=object)
    if rows is not None:
        picked = rng.choice(len(frame), size=rows, replace=rows > len(frame))
        frame, labels = frame.iloc[picked].reset_index(drop=True), labels[picked]
    return frame, labels


def diabetes_frame(rows: int | None, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    data = load_diabetes(as_frame=True)
    frame, target = data.data, data.target.to_numpy()
    if rows is not None:
        picked = np.random.default_rng(seed).choice(
            len(frame), size=rows, replace=rows > len(frame)
        )
        frame, target = frame.iloc[picked].reset_index(drop=True), target[picked]
    return frame, target


def train(kind: str) -> tuple[Any, pd.DataFrame]:
    """The fitted estimator of `kind` and its training rows (for the input schema)."""
    if kind == "mixed":
        frame, target = mixed_frame(2000, seed=0)
        return mixed_pipeline().fit(frame, target), frame
    if kind == "multiclass":
        frame, labels = wine_frame(None, seed=0)
        model = HistGradientBoostingClassifier(
            categorical_features="from_dtype", max_iter=50, random_state=0
        )
        return model.fit(frame, labels), frame
    if kind == "regression":
        frame, target = diabetes_frame(None, seed=0)
        return make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(frame, target), frame
    raise ValueError(f"unknown example kind {kind!r}")


def sample_rows(kind: str, rows: int = 100, seed: int = 1) -> pd.DataFrame:
    """Rows to try the bundle with: an `id` column first, then the features."""
    makers = {"mixed": mixed_frame, "multiclass": wine_frame, "regression": diabetes_frame}
    frame, _ = makers[kind](rows, seed)
    frame = frame.reset_index(drop=True)
    frame.insert(0, "id", np.arange(1, len(frame) + 1))
    return frame
