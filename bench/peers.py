"""The peers the endpoint is compared with: MLflow, MLServer and BentoML scoring the same rows.

Each peer runs from its own virtual environment under bench/data/ (their pins clash with ours
and with each other), created on first use from a fully pinned requirements file
(bench/requirements-<peer>.txt, a `pip freeze`) and re-synced when that file changes. Each
serves the bundle's arithmetic (bench/peer_model.py) with its own server, as its
documentation starts it, on a free loopback port; `bench.endpoint` checks that every one
answers the probabilities ours does before anything is timed. A peer has configurations
(`Peer`): batching off and on, and for MLflow the event loop uvicorn runs on.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pandas as pd

from bench import datagen
from bench.processes import LOOPBACK, Managed, free_port, wait_ready
from bench.stats import DATA_DIR

BENCH = Path(__file__).resolve().parent
BUNDLE = DATA_DIR / "bundle"
VERSIONS = {"mlflow": "3.17.2", "mlserver": "1.7.1", "bentoml": "1.4.40"}
MAX_BATCH_SIZE = 16  # requests, MLServer's unit
LARGEST_BODY_ROWS = 1000  # BentoML's max_batch_size counts rows: 16 of our largest requests
MAX_BATCH_SECONDS = 0.002  # MLServer's max_batch_time


@dataclass(frozen=True)
class Peer:
    """One server configuration of a peer (`family`: its venv, its request format)."""

    label: str
    family: str
    path: str  # where rows are POSTed
    ready: str  # a GET answering 200 once the model is loaded
    batching: bool = False
    env: tuple[tuple[str, str], ...] = ()
    close_too: bool = False  # also measured with a new connection per request


PEERS = {
    peer.label: peer
    for peer in (
        # uvicorn picks uvloop and httptools when installed (uvicorn[standard]): the peer's best
        Peer("mlflow", "mlflow", "/invocations", "/ping", close_too=True),
        # what `pip install mlflow` alone runs: asyncio + h11 (see bench/README.md, MLflow)
        Peer(
            "mlflow-asyncio",
            "mlflow",
            "/invocations",
            "/ping",
            env=(("UVICORN_LOOP", "asyncio"), ("UVICORN_HTTP", "h11")),
            close_too=True,
        ),
        Peer("mlserver", "mlserver", "/v2/models/scorer/infer", "/v2/models/scorer/ready"),
        Peer(
            "mlserver-batch",
            "mlserver",
            "/v2/models/scorer/infer",
            "/v2/models/scorer/ready",
            batching=True,
        ),
        Peer("bentoml", "bentoml", "/predict", "/readyz"),
        Peer("bentoml-batch", "bentoml", "/predict", "/readyz", batching=True),
    )
}


# -- virtual environments and models ------------------------------------------------------


def venv(family: str) -> Path:
    return DATA_DIR / f"{family}-venv"


def ensure_venv(family: str) -> Path:
    """The family's venv, (re)installed from its pinned requirements when they changed."""
    folder, requirements = venv(family), BENCH / f"requirements-{family}.txt"
    python = folder / "bin" / "python"
    stamp = folder / "bench-requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return folder
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    install = [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)]
    subprocess.run(install, check=True)
    stamp.write_text(digest)
    return folder


def model_path(family: str) -> Path:
    return DATA_DIR / "peer-models" / (f"{family}-model" if family == "mlflow" else family)


def ensure_model(family: str) -> Path:
    """The bundle saved for the family (rebuilt when the bundle's manifest changed)."""
    out = model_path(family)
    source = out.parent / f"{family}.manifest.json"
    manifest = (BUNDLE / "manifest.json").read_bytes()
    if source.exists() and source.read_bytes() == manifest:
        return out
    target = out if family == "mlflow" else out / "model.joblib"
    command = [
        str(venv(family) / "bin" / "python"),
        str(BENCH / "peer_model.py"),
        "--kind",
        "mlflow" if family == "mlflow" else "joblib",
        "--bundle",
        str(BUNDLE),
        "--example",
        str(datagen.dataset("1k")),
        "--out",
        str(target),
    ]
    subprocess.run(command, check=True)
    source.write_bytes(manifest)
    return out


def prepare(labels: list[str]) -> None:
    for family in sorted({PEERS[label].family for label in labels}):
        ensure_venv(family)
        ensure_model(family)


# -- servers ------------------------------------------------------------------------------


def start(peer: Peer, port: int, workers: int) -> Managed:
    """Start one peer configuration and wait until its model answers `ready`."""
    starters: dict[str, Callable[[Peer, int, int], tuple[list[str], dict[str, str], Path]]] = {
        "mlflow": _mlflow,
        "mlserver": _mlserver,
        "bentoml": _bentoml,
    }
    argv, extra, cwd = starters[peer.family](peer, port, workers)
    env = {**os.environ, "PATH": f"{venv(peer.family) / 'bin'}:{os.environ.get('PATH', '')}"}
    env.update(VIRTUAL_ENV=str(venv(peer.family)), **dict(peer.env), **extra)
    log = DATA_DIR / "logs" / f"{peer.label}.log"
    server = Managed(argv, name=peer.label, log=log, env=env, cwd=cwd)
    wait_ready(server, f"http://{LOOPBACK}:{port}{peer.ready}")
    return server


def _mlflow(peer: Peer, port: int, workers: int) -> tuple[list[str], dict[str, str], Path]:
    # `mlflow models serve` execs `uvicorn --workers N` from PATH
    argv = [str(venv("mlflow") / "bin" / "mlflow"), "models", "serve"]
    argv += ["-m", str(model_path("mlflow")), "--env-manager", "local"]
    argv += ["-w", str(workers), "-h", LOOPBACK, "-p", str(port)]
    env = {
        "MLFLOW_TRACKING_URI": (DATA_DIR / "mlruns").as_uri(),
        "UVICORN_ACCESS_LOG": "false",  # uvicorn's --no-access-log: no log line per request
    }
    return argv, env, DATA_DIR


def _mlserver(peer: Peer, port: int, workers: int) -> tuple[list[str], dict[str, str], Path]:
    """`mlserver start FOLDER`: settings.json (server) and model-settings.json (the model)."""
    folder = DATA_DIR / "peer-models" / f"{peer.label}-settings"
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": LOOPBACK,
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": workers,
        "debug": False,  # True (the default) logs every request
    }
    model: dict = {
        "name": "scorer",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {
            "uri": str(model_path("mlserver") / "model.joblib"),
            "extra": {"predict_fn": "predict_proba"},
        },
    }
    if peer.batching:
        model.update(max_batch_size=MAX_BATCH_SIZE, max_batch_time=MAX_BATCH_SECONDS)
    (folder / "settings.json").write_text(json.dumps(settings, indent=1))
    (folder / "model-settings.json").write_text(json.dumps(model, indent=1))
    return [str(venv("mlserver") / "bin" / "mlserver"), "start", str(folder)], {}, folder


def _bentoml(peer: Peer, port: int, workers: int) -> tuple[list[str], dict[str, str], Path]:
    argv = [str(venv("bentoml") / "bin" / "bentoml"), "serve", "bentoml_service:Scorer"]
    argv += ["--host", LOOPBACK, "--port", str(port)]
    env = {
        "BENCH_MODEL": str(model_path("bentoml") / "model.joblib"),
        "BENCH_WORKERS": str(workers),
        "BENCH_BATCHABLE": "1" if peer.batching else "0",
        "BENCH_MAX_BATCH_SIZE": str(MAX_BATCH_SIZE * LARGEST_BODY_ROWS),
        "BENTOML_HOME": str(DATA_DIR / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    return argv, env, BENCH


# -- request bodies and answers ------------------------------------------------------------


def split_json(frame: pd.DataFrame) -> bytes:
    """MLflow's `dataframe_split` (ours accepts it too); missing values as null."""
    data = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    return orjson.dumps({"dataframe_split": {"columns": list(frame.columns), "data": data}})


def _matrix(frame: pd.DataFrame, columns: list[str]) -> list[list[float | None]]:
    features = frame[columns]
    return features.astype(object).where(features.notna(), None).to_numpy().tolist()


def body(family: str, frame: pd.DataFrame, columns: list[str]) -> bytes:
    """The rows as the family's server takes them: MLServer's V2 tensor (FP64, rows x columns,
    row-major; null for a missing value), BentoML's `{"rows": matrix}`, MLflow's frame."""
    if family == "mlflow":
        return split_json(frame)
    rows = _matrix(frame, columns)
    if family == "bentoml":
        return orjson.dumps({"rows": rows})
    tensor = {
        "name": "rows",
        "shape": [len(rows), len(columns)],
        "datatype": "FP64",
        "data": [value for row in rows for value in row],
    }
    return orjson.dumps({"inputs": [tensor]})


def answers(family: str, raw: bytes) -> list[float]:
    """The positive class's probability per row from the family's answer."""
    document = orjson.loads(raw)
    if family == "mlflow":
        return [row[1] for row in document["predictions"]]
    if family == "mlserver":
        return document["outputs"][0]["data"][1::2]  # predict_proba, rows x 2, row-major
    return list(document)
