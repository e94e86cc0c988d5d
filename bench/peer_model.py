"""Save the example bundle's arithmetic as a peer's model: the peers the endpoint is compared with.

Runs in the peer's own virtual environment (bench/data/<peer>-venv), so it reads the bundle's
files with joblib and json only. The pipeline does the same arithmetic as our prepare +
predict: fill missing values with the bundle's means, scale, `predict_proba`. MLflow takes a
DataFrame (`dataframe_split`), so its pipeline first selects the bundle's columns by name;
MLServer and BentoML take a float matrix whose columns are the bundle's, in its order (their
natural tensor input), so theirs starts at the fill. `bench.peers` checks that every server
answers the numbers ours does before anything is timed.

    bench/data/mlflow-venv/bin/python bench/peer_model.py --kind mlflow --bundle DIR --out DIR
    bench/data/mlserver-venv/bin/python bench/peer_model.py --kind joblib --bundle DIR --out FILE
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline


def build(bundle: Path, example: pd.DataFrame | None = None) -> Pipeline:
    """Fill, scale, classify; with `example` (a frame), a column selection by name first."""
    columns = json.loads((bundle / "columns.json").read_text())
    means = json.loads((bundle / "mean.json").read_text())
    impute = SimpleImputer(strategy="mean").fit(np.array([[means[c] for c in columns]]))
    steps = [
        ("impute", impute),
        ("scale", joblib.load(bundle / "scaler.joblib")),
        ("model", joblib.load(bundle / "model.joblib")),
    ]
    if example is not None:
        select = ColumnTransformer(
            [("features", "passthrough", columns)],
            remainder="drop",
            verbose_feature_names_out=False,
        ).fit(example)
        steps.insert(0, ("select", select))
    return Pipeline(steps)


def save_mlflow(bundle: Path, example: pd.DataFrame, out: Path) -> None:
    import mlflow.sklearn
    from mlflow.models import infer_signature

    pipeline = build(bundle, example)
    signature = infer_signature(example, pipeline.predict_proba(example))
    if out.exists():
        shutil.rmtree(out)
    mlflow.sklearn.save_model(
        pipeline,
        str(out),
        signature=signature,
        pyfunc_predict_fn="predict_proba",
        skops_trusted_types=["numpy.dtype"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("mlflow", "joblib"), required=True)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--example", type=Path, help="parquet rows (mlflow: the signature)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.kind == "mlflow":
        save_mlflow(args.bundle, pd.read_parquet(args.example), args.out)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(build(args.bundle), args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
