"""Input files for the benchmarks: rows drawn around the example model's training data.

Each row is a random row of scikit-learn's breast-cancer data plus gaussian noise of a tenth
of its column's standard deviation, rounded to the precision the column has in the data set
(so the files compress like real measurements), with 1 % of the values missing (the mean-fill
path runs) and an `id`. Big files are written in chunks with one ParquetWriter, so memory
stays bounded; each chunk is one row group of CHUNK_ROWS rows, the row-group size pandas and
pyarrow write by default.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bench.stats import DATA_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
CHUNK_ROWS = 1 << 20
NOISE = 0.1
MISSING = 0.01


@functools.cache
def training_frame() -> pd.DataFrame:
    """The example model's training data, with the column names the bundle uses."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        from train_example import feature_frame
    finally:
        sys.path.pop(0)
    frame, _ = feature_frame()
    return frame


def _decimals(column: pd.Series) -> int:
    for places in range(9):
        if np.allclose(column.round(places), column, rtol=0, atol=1e-12):
            return places
    return 9


def rows(count: int, seed: int, first_id: int = 1) -> pd.DataFrame:
    """`count` rows around the training data, ids from `first_id`."""
    source = training_frame()
    rng = np.random.default_rng(seed)
    values = source.to_numpy(dtype=np.float64)
    picked = values[rng.integers(0, len(values), size=count)]
    spread = source.std().to_numpy() * NOISE
    noisy = np.abs(picked + rng.standard_normal(picked.shape) * spread)
    for position, column in enumerate(source.columns):
        noisy[:, position] = np.round(noisy[:, position], _decimals(source[column]))
    noisy[rng.random(noisy.shape) < MISSING] = np.nan
    frame = pd.DataFrame(noisy, columns=source.columns)
    frame.insert(0, "id", np.arange(first_id, first_id + count, dtype=np.int64))
    return frame


def write_parquet(path: Path, count: int, seed: int = 7) -> Path:
    """A parquet file of `count` rows, built CHUNK_ROWS at a time; kept if already there."""
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == count:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    writer = None
    try:
        for number, start in enumerate(range(0, count, CHUNK_ROWS)):
            size = min(CHUNK_ROWS, count - start)
            table = pa.Table.from_pandas(
                rows(size, seed + number, first_id=start + 1), preserve_index=False
            )
            if writer is None:
                writer = pq.ParquetWriter(partial, table.schema)
            writer.write_table(table, row_group_size=CHUNK_ROWS)
    finally:
        if writer is not None:
            writer.close()
    partial.rename(path)
    return path


def dataset(name: str) -> Path:
    """The named benchmark file, generated on first use."""
    counts = {"1m": 1_000_000, "10m": 10_000_000, "1k": 1_000, "500k": 500_000}
    return write_parquet(DATA_DIR / f"rows-{name}.parquet", counts[name])


def main() -> int:
    for name in ("1k", "500k", "1m", "10m"):
        path = dataset(name)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
