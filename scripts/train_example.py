"""Train an example model and write its bundle to a folder or an S3 prefix.

    python scripts/train_example.py --out bundles/example/1/
    python scripts/train_example.py --out s3://my-model-bucket/models/example/1/ --version 1
    python scripts/train_example.py --kind mixed --out bundles/mixed/1/ --sample rows.parquet

The default is a logistic regression on scikit-learn's bundled breast-cancer data,
with the original template's four artifacts: model, scaler, column means, columns.
`--kind` trains a whole scikit-learn Pipeline instead (see `examples.py`: `mixed`,
a binary classifier on string categories, a boolean, a datetime and missing values;
`multiclass`, three wine cultivars with string labels; `regression`, the diabetes
data) and packages it as `package_model.py --pipeline` does. `--sample FILE` also
writes some rows (with an `id` column and a few missing values) to try the
endpoint and the batch transform with.
"""

import argparse
import io
import json
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from service.artifacts import write_bundle


def feature_frame() -> tuple[pd.DataFrame, np.ndarray]:
    """The data set with snake_case column names (easier in CSV headers and curl)."""
    data = load_breast_cancer(as_frame=True)
    frame = data.data.rename(columns=lambda name: name.replace(" ", "_"))
    return frame, data.target.to_numpy()


def train(seed: int = 0, regularisation: float = 1.0) -> dict[str, object]:
    frame, target = feature_frame()
    columns = list(frame.columns)
    values = frame.to_numpy(dtype=np.float64)
    scaler = StandardScaler().fit(values)
    model = LogisticRegression(C=regularisation, max_iter=5000, random_state=seed)
    model.fit(scaler.transform(values), target)
    means = {column: float(frame[column].mean()) for column in columns}
    return {"model": model, "scaler": scaler, "mean": means, "columns": columns}


def bundle_files(artifacts: dict[str, object]) -> dict[str, tuple[str, bytes, str | None]]:
    def dumped(obj: object) -> bytes:
        buffer = io.BytesIO()
        joblib.dump(obj, buffer)
        return buffer.getvalue()

    return {
        "model": ("model.joblib", dumped(artifacts["model"]), "joblib"),
        "scaler": ("scaler.joblib", dumped(artifacts["scaler"]), "joblib"),
        "mean": ("mean.json", json.dumps(artifacts["mean"], indent=1).encode(), None),
        "columns": ("columns.json", json.dumps(artifacts["columns"], indent=1).encode(), None),
    }


def sample_rows(rows: int = 100, seed: int = 1, missing: float = 0.02) -> pd.DataFrame:
    """Rows of the data set with ids and a few missing values, in a shuffled column order."""
    frame, _ = feature_frame()
    rng = np.random.default_rng(seed)
    picked = frame.iloc[rng.choice(len(frame), size=rows, replace=rows > len(frame))]
    picked = picked.reset_index(drop=True).mask(rng.random(picked.shape) < missing)
    picked.insert(0, "id", np.arange(1, rows + 1))
    return picked[["id", *rng.permutation(list(frame.columns))]]


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.kind != "breast-cancer":
        return train_kind(args)
    artifacts = train(regularisation=args.regularisation)
    write_bundle(args.out, bundle_files(artifacts), name=args.name, version=args.version)
    print(f"bundle {args.name} version {args.version} written to {args.out}")
    if args.sample:
        write_sample(sample_rows(args.sample_rows), args.sample)
        print(f"{args.sample_rows} sample rows written to {args.sample}")
    return 0


def train_kind(args: argparse.Namespace) -> int:
    """Train and package one of the pipeline examples (examples.py)."""
    import examples
    import package_model

    estimator, training = examples.train(args.kind)
    options = package_model.parser().parse_args(
        ["--name", args.name, "--version", args.version, "--out", args.out]
        + (["--label-column", "label"] if args.kind == "mixed" else [])
        + (["--output-column", "prediction"] if args.kind == "regression" else [])
    )
    options.format = "joblib"
    package_model.package_pipeline(estimator, training, options)
    print(f"bundle {args.name} version {args.version} ({args.kind}) written to {args.out}")
    if args.sample:
        write_sample(examples.sample_rows(args.kind, args.sample_rows), args.sample)
        print(f"{args.sample_rows} sample rows written to {args.sample}")
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder or s3://bucket/prefix/ for the bundle")
    parser.add_argument("--name", default="example")
    parser.add_argument("--version", default="1")
    parser.add_argument("--regularisation", type=float, default=1.0, help="C of the regression")
    parser.add_argument("--sample", help="also write sample rows to this .parquet/.csv/.jsonl")
    parser.add_argument("--sample-rows", type=int, default=100)
    parser.add_argument(
        "--kind",
        choices=("breast-cancer", "mixed", "multiclass", "regression"),
        default="breast-cancer",
        help="the example: the four-artifact default, or a whole Pipeline of that kind",
    )
    return parser


def write_sample(frame: pd.DataFrame, path: str) -> None:
    if path.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif path.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        frame.to_parquet(path, index=False)


if __name__ == "__main__":
    sys.exit(main())
