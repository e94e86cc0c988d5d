"""Turn the original template's four pickle files into a model bundle.

    python scripts/package_model.py --model model.pkl --scaler scaler.pkl \
        --mean mean.pkl --columns columns.pkl --name churn --version 3 \
        --out s3://my-model-bucket/models/churn/3/

The model and scaler pickles are copied byte for byte (their sha256 goes into the
manifest); the columns and means become JSON. Only package pickles you trust:
loading a pickle runs code.
"""

import argparse
import json
import pickle
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.artifacts import write_bundle


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--scaler", type=Path, help="omit when the model needs no scaler")
    parser.add_argument("--mean", required=True, type=Path)
    parser.add_argument("--columns", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--out", required=True, help="folder or s3://bucket/prefix/")
    parser.add_argument("--id-column", default="id")
    parser.add_argument("--output-column", default="activation")
    parser.add_argument(
        "--tar",
        type=Path,
        help="also write the bundle as this model.tar.gz (SageMaker's ModelDataUrl: it "
        "unpacks it into /opt/ml/model, which the server reads when MODEL_URI is unset)",
    )
    args = parser.parse_args(argv)
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
    write_bundle(args.out, files, args.name, args.version, args.id_column, args.output_column)
    print(f"bundle {args.name} version {args.version} written to {args.out}")
    if args.tar:
        write_tar(Path(args.out), args.tar)
        print(f"{args.tar} holds it at the archive's root (upload it as ModelDataUrl)")
    return 0


def write_tar(folder: Path, tar_path: Path) -> None:
    """The bundle folder's files at the root of a gzipped tar, as SageMaker expects."""
    if not (folder / "manifest.json").is_file():
        raise SystemExit(f"--tar needs --out to be a local folder holding the bundle: {folder}")
    with tarfile.open(tar_path, "w:gz") as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)


if __name__ == "__main__":
    sys.exit(main())
