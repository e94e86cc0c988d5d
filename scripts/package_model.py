"""Package a fitted model into a bundle: a whole estimator/Pipeline, or the four pickles.

    python scripts/package_model.py --pipeline model.joblib --sample train.parquet \
        --name churn --version 3 --out s3://my-model-bucket/models/churn/3/ [--tar]

    python scripts/package_model.py --model model.pkl --scaler scaler.pkl \
        --mean mean.pkl --columns columns.pkl --name churn --version 3 --out bundles/churn/3/

`--pipeline` takes one fitted estimator or Pipeline (joblib, pickle or skops) that was
fitted on a pandas DataFrame. The input schema (each column's name and type, the
categories of string columns) comes from the estimator's `feature_names_in_` and
the `--sample` rows of the training data (parquet keeps dtypes best; CSV and JSON
Lines work too). The packages the model's classes come from, beyond scikit-learn,
are recorded (`requirements`); a skops file's non-default types are listed as
trusted (review them: printed). `--tar` also writes `model.tar.gz` (the bundle's
files at the archive root) for SageMaker's `ModelDataUrl`.

The four pickles are copied byte for byte (their sha256 goes into the manifest); the
columns and means become JSON. Only package files you trust: loading a pickle runs code.
"""

import argparse
import importlib.metadata
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.artifacts import MANIFEST, open_source, write_bundle, write_file
from service.schema import conform, infer_schema
from service.tasks import MAX_ROW_BLOCK

# Packages every image has (requirements.txt) and the standard library: never recorded.
BASE_PACKAGES = frozenset({"scikit-learn", "numpy", "scipy", "pandas", "joblib", "skops"})
CHECK_ROWS = 200


def read_columns(data: bytes) -> list[str]:
    columns = pickle.loads(data)  # noqa: S301 - the user's own file, packaged on their request  # nosec B301
    names = [str(c) for c in (columns.tolist() if hasattr(columns, "tolist") else list(columns))]
    if not names:
        raise SystemExit("the columns pickle holds no column names")
    return names


def read_means(data: bytes, columns: list[str]) -> dict[str, float]:
    """Means as the original kept them: a dict/Series by name, or an array in column order."""
    means: Any = pickle.loads(data)  # noqa: S301 - the user's own file  # nosec B301
    if hasattr(means, "to_dict"):
        means = means.to_dict()
    if isinstance(means, dict):
        missing = [c for c in columns if c not in means]
        if missing:
            raise SystemExit(f"the means pickle has no value for: {', '.join(missing)}")
        return {c: float(means[c]) for c in columns}
    values = np.asarray(means, dtype=np.float64).ravel()
    if len(values) != len(columns):
        raise SystemExit(f"the means pickle holds {len(values)} values for {len(columns)} columns")
    return dict(zip(columns, values.tolist(), strict=True))


def load_estimator(path: Path) -> Any:
    """The user's fitted estimator. A skops file is loaded trusting its own types: the
    packager is its author (the types are printed and recorded for the service)."""
    if path.suffix.lower() == ".skops":
        import skops.io

        data = path.read_bytes()
        return skops.io.loads(data, trusted=skops.io.get_untrusted_types(data=data))
    return joblib.load(path)


def read_sample(path: Path) -> pd.DataFrame:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return pd.read_csv(path)
    if name.endswith((".jsonl", ".json")):
        return pd.read_json(path, lines=name.endswith(".jsonl"))
    return pd.read_parquet(path)


def required_packages(estimator: Any) -> dict[str, str]:
    """{distribution: installed version} for the classes in the estimator, beyond the base."""
    found: dict[str, str] = {}
    owners = importlib.metadata.packages_distributions()
    for obj in _parts(estimator):
        top = type(obj).__module__.split(".")[0]
        if top in sys.stdlib_module_names:
            continue
        for dist in owners.get(top, []):
            if dist not in BASE_PACKAGES:
                found[dist] = importlib.metadata.version(dist)
    return dict(sorted(found.items()))


def _parts(estimator: Any) -> list[Any]:
    """The estimator and every estimator-like object inside it (pipeline steps, ...)."""
    parts, pending = [], [estimator]
    while pending:
        obj = pending.pop()
        parts.append(obj)
        if hasattr(obj, "get_params"):
            pending.extend(v for v in obj.get_params(deep=False).values() if _is_object(v))
        if isinstance(obj, list | tuple):
            pending.extend(v for v in obj if _is_object(v))
    return parts


def _is_object(value: Any) -> bool:
    return hasattr(value, "get_params") or isinstance(value, list | tuple)


def model_file(estimator: Any, fmt: str) -> tuple[tuple[str, bytes, str], dict[str, Any]]:
    """The model file's (path, bytes, format) and its manifest entry's extra keys."""
    if fmt == "skops":
        import skops.io

        data = skops.io.dumps(estimator)
        trusted = skops.io.get_untrusted_types(data=data)
        if trusted:
            print(f"trusted skops types (review them): {', '.join(trusted)}")
        return ("model.skops", data, "skops"), {"trusted": trusted}
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return ("model.joblib", buffer.getvalue(), "joblib"), {}


def pipeline_manifest(estimator: Any, sample: pd.DataFrame, args: argparse.Namespace) -> dict:
    """The manifest keys of a pipeline bundle, after checking the schema works with the model."""
    names = getattr(estimator, "feature_names_in_", None)
    if names is None:
        raise SystemExit(
            "the estimator has no feature_names_in_: fit it on a pandas DataFrame (column names)"
        )
    schema = infer_schema(sample, [str(n) for n in names])
    rows = conform(sample.head(CHECK_ROWS), schema)
    try:
        estimator.predict(rows)
    except Exception as exc:
        raise SystemExit(
            f"the model cannot predict the sample rows read by the schema: {exc}"
        ) from None
    fields: dict[str, Any] = {"input_schema": [f.to_json() for f in schema]}
    requirements = {**required_packages(estimator), **_pins(args.requires)}
    if requirements:
        fields["requirements"] = requirements
    if args.label_column:
        fields["label_column"] = args.label_column
    if args.target_columns:
        fields["target_columns"] = args.target_columns.split(",")
    return {**fields, **block_field(args)}


def row_block(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_ROW_BLOCK:
        raise argparse.ArgumentTypeError(f"give a whole number of rows from 1 to {MAX_ROW_BLOCK}")
    return int(text)


def block_field(args: argparse.Namespace) -> dict[str, int]:
    return {} if args.row_block is None else {"row_block": args.row_block}


def _pins(names: list[str]) -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in names}


def package_pipeline(estimator: Any, sample: pd.DataFrame, args: argparse.Namespace) -> dict:
    """Write the pipeline bundle described by `args`; return its manifest."""
    fields = pipeline_manifest(estimator, sample, args)
    file, extra = model_file(estimator, args.format)
    return write_bundle(
        args.out,
        {"model": file},
        args.name,
        args.version,
        args.id_column,
        args.output_column,
        fields=fields,
        file_fields={"model": extra},
    )


def four_artifact_files(args: argparse.Namespace) -> dict[str, tuple[str, bytes, str | None]]:
    missing = [f"--{k}" for k in ("model", "mean", "columns") if getattr(args, k) is None]
    if missing:
        raise SystemExit(f"give --pipeline FILE --sample ROWS, or {', '.join(missing)}")
    columns = read_columns(args.columns.read_bytes())
    files: dict[str, tuple[str, bytes, str | None]] = {
        "model": ("model.pkl", args.model.read_bytes(), "pickle"),
        "mean": (
            "mean.json",
            json.dumps(read_means(args.mean.read_bytes(), columns)).encode(),
            None,
        ),
        "columns": ("columns.json", json.dumps(columns).encode(), None),
    }
    if args.scaler:
        files["scaler"] = ("scaler.pkl", args.scaler.read_bytes(), "pickle")
    return files


def write_tar(out: str, manifest: dict[str, Any]) -> str:
    """model.tar.gz beside the bundle: the manifest and its files at the archive root."""
    source = open_source(out)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in [entry["path"] for entry in manifest["files"].values()] + [MANIFEST]:
            data, _ = source.read(name)
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    write_file(out, "model.tar.gz", buffer.getvalue())
    return out.rstrip("/") + "/model.tar.gz"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline", type=Path, help="a fitted estimator or Pipeline file")
    p.add_argument("--sample", type=Path, help="training rows (parquet, CSV, JSON Lines)")
    p.add_argument("--format", choices=("joblib", "skops"), help="model file format")
    p.add_argument("--requires", action="append", default=[], help="an extra package to pin")
    p.add_argument("--label-column", help="also answer the predicted label in this column")
    p.add_argument("--target-columns", help="a multi-output regressor's column names, a,b,...")
    p.add_argument(
        "--row-block",
        type=row_block,
        help="call the model on whole blocks of this many rows (default 16; 1 for a model "
        "whose cost per row is high)",
    )
    p.add_argument("--model", type=Path)
    p.add_argument("--scaler", type=Path, help="omit when the model needs no scaler")
    p.add_argument("--mean", type=Path)
    p.add_argument("--columns", type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--out", required=True, help="folder or s3://bucket/prefix/")
    p.add_argument("--id-column", default="id")
    p.add_argument("--output-column", default="activation")
    p.add_argument("--tar", action="store_true", help="also write model.tar.gz (SageMaker)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.pipeline:
        if args.sample is None:
            raise SystemExit("--pipeline needs --sample ROWS (training rows, for the schema)")
        args.format = args.format or ("skops" if args.pipeline.suffix == ".skops" else "joblib")
        estimator = load_estimator(args.pipeline)
        manifest = package_pipeline(estimator, read_sample(args.sample), args)
    else:
        files = four_artifact_files(args)
        manifest = write_bundle(
            args.out,
            files,
            args.name,
            args.version,
            args.id_column,
            args.output_column,
            fields=block_field(args),
        )
    print(f"bundle {args.name} version {args.version} written to {args.out}")
    if args.tar:
        print(f"SageMaker archive written to {write_tar(args.out, manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
