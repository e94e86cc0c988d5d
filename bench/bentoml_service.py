"""The BentoML peer: the bundle's arithmetic (bench/peer_model.py's pipeline) as a BentoML service.

Runs in BentoML's own virtual environment (bench/data/bentoml-venv), started by `bench.peers`
as `bentoml serve bentoml_service:Scorer` with the model file, the number of worker processes
and whether the API is `batchable` (BentoML's adaptive batching) in environment variables.
The request is `{"rows": [[...], ...]}`, a float matrix in the bundle's column order (missing
values as null); the answer is the positive class's probability per row.
"""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np

MODEL = os.environ.get("BENCH_MODEL", "model.joblib")
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
BATCHABLE = os.environ.get("BENCH_BATCHABLE") == "1"
MAX_BATCH_SIZE = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "16000"))  # rows, not requests


@bentoml.service(workers=WORKERS, logging={"access": {"enabled": False}})
class Scorer:
    def __init__(self) -> None:
        self.pipeline = joblib.load(MODEL)

    @bentoml.api(batchable=BATCHABLE, max_batch_size=MAX_BATCH_SIZE)
    def predict(self, rows: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(rows.astype(np.float64))[:, 1]
