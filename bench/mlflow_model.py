"""Save the example bundle as an MLflow model: the peer the endpoint is compared with.

Runs in MLflow's own virtual environment (bench/data/mlflow-venv), so it reads the bundle's
files with joblib and json only. The pipeline does the same arithmetic as our prepare +
predict: select the bundle's columns, fill missing values with the bundle's means, scale,
`predict_proba`. `bench.endpoint` checks that both servers answer the same numbers.

    bench/data/mlflow-venv/bin/python bench/mlflow_model.py --bundle DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import joblib
import mlflow.sklearn
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline


def build(bundle: Path, example: pd.DataFrame) -> Pipeline:
    columns = json.loads((bundle / "columns.json").read_text())
    means = json.loads((bundle / "mean.json").read_text())
    select = ColumnTransformer(
        [("features", "passthrough", columns)],
        remainder="drop",
        verbose_feature_names_out=False,
    ).fit(example)
    impute = SimpleImputer(strategy="mean").fit(np.array([[means[c] for c in columns]]))
    return Pipeline(
        [
            ("select", select),
            ("impute", impute),
            ("scale", joblib.load(bundle / "scaler.joblib")),
            ("model", joblib.load(bundle / "model.joblib")),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--example", type=Path, required=True, help="parquet rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    example = pd.read_parquet(args.example)
    pipeline = build(args.bundle, example)
    signature = infer_signature(example, pipeline.predict_proba(example))
    if args.out.exists():
        shutil.rmtree(args.out)
    mlflow.sklearn.save_model(
        pipeline,
        str(args.out),
        signature=signature,
        pyfunc_predict_fn="predict_proba",
        skops_trusted_types=["numpy.dtype"],
    )
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
