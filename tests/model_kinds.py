"""The pipeline examples (scripts/examples.py) as test material: bundles, rows, and the
answer the estimator itself gives for those rows, which the service must reproduce."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.conftest import load_script

KINDS = ("mixed", "multiclass", "regression")
TOLERANCE = 1e-9


def write_kind_bundle(kind: str, out: Path, version: str = "1", name: str = "example") -> Path:
    load_script("train_example").main(
        ["--kind", kind, "--out", str(out), "--version", version, "--name", name]
    )
    return out


def kind_rows(kind: str, rows: int = 40, seed: int = 3) -> pd.DataFrame:
    """Rows with ids; the mixed ones include missing values and an unseen category."""
    frame = load_script("examples").sample_rows(kind, rows, seed)
    if kind == "mixed":
        frame.loc[1, "region"] = "atlantis"
        frame.loc[2, ["amount", "plan"]] = [np.nan, None]
    return frame


def expected_answer(model: Any, rows: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    """What the estimator's own predict_proba / predict say, in the service's columns."""
    features = rows[[entry["name"] for entry in manifest["input_schema"]]]
    answer: dict[str, Any] = {"id": rows["id"].to_numpy()}
    output = manifest.get("output_column", "activation")
    if not hasattr(model, "predict_proba"):
        answer[output] = model.predict(features)
        return pd.DataFrame(answer)
    proba = model.predict_proba(features)
    if len(model.classes_) == 2:
        answer[output] = proba[:, 1]
    else:
        answer.update({str(c): proba[:, i] for i, c in enumerate(model.classes_)})
    label = manifest.get("label_column") or ("label" if len(model.classes_) > 2 else None)
    if label:
        answer[label] = model.predict(features)
    return pd.DataFrame(answer)


def assert_same_answer(
    got: pd.DataFrame, want: pd.DataFrame, where: str = "", bits: bool = False
) -> None:
    """Same columns in the same order, ids and labels exact, numbers within 1e-9 (bit for bit
    with ``bits``)."""
    assert list(got.columns) == list(want.columns)
    for column in want.columns:
        values, wanted = got[column].to_numpy(), want[column].to_numpy()
        if wanted.dtype.kind != "f":
            assert values.tolist() == wanted.tolist(), f"{where}: {column}"
        elif bits:
            differ = np.flatnonzero(values.view(np.int64) != wanted.view(np.int64))
            assert differ.size == 0, f"{where}: {column} differs in rows {differ.tolist()}"
        else:
            np.testing.assert_allclose(values.astype(np.float64), wanted, rtol=0, atol=TOLERANCE)


def assert_bit_equal(got: pd.DataFrame, want: pd.DataFrame, where: str = "") -> None:
    """Same columns in the same order, every value equal bit for bit."""
    assert_same_answer(got, want, where, bits=True)


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def read_answer(body: bytes, media: str) -> pd.DataFrame:
    """A response body as a frame, read by the real parsers of each format."""
    if media == "application/json":
        return pd.DataFrame(json.loads(body)["predictions"])
    if media == "text/csv":
        return pd.read_csv(io.BytesIO(body))
    if media == "application/jsonlines":
        return pd.read_json(io.BytesIO(body), lines=True)
    return pd.read_parquet(io.BytesIO(body))


def encode_rows(rows: pd.DataFrame, media: str) -> bytes:
    """Request bodies as clients write them: floats in full (repr), dates in ISO 8601,
    missing values as null (JSON) or empty (CSV)."""
    if media == "text/csv":
        return rows.to_csv(index=False).encode()
    if media == "application/vnd.apache.parquet":
        buffer = io.BytesIO()
        rows.to_parquet(buffer, index=False)
        return buffer.getvalue()
    plain = rows.astype(object).where(rows.notna(), None)
    data = [[_plain(v) for v in row] for row in plain.to_numpy().tolist()]
    if media == "application/json":
        split = {"columns": list(plain.columns), "data": data}
        return json.dumps({"dataframe_split": split}).encode()
    lines = [json.dumps(dict(zip(plain.columns, row, strict=True))) for row in data]
    return ("\n".join(lines) + "\n").encode()


def _plain(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value.item() if isinstance(value, np.generic) else value


MEDIA = ("application/json", "text/csv", "application/jsonlines", "application/vnd.apache.parquet")
