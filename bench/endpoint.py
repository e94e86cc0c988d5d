"""Endpoint benchmark: our server, MLflow's scoring server and the in-process limit.

Per round, in a rotated order: wrk (one thread, keep-alive unless said) against
`python -m service serve` and `mlflow models serve`, for single-row and 1,000-row JSON
bodies (MLflow's `dataframe_split`) and 1,000-row parquet (ours only), at concurrency 1
and 16; MLflow also with `Connection: close`. Around each wrk run the server's CPU time
(its whole process tree, psutil) gives CPU milliseconds per request. In the same round the
bench process times the in-process limit on the same rows: the bare arithmetic the server
does (fill the means, a StandardScaler's two array operations, `predict_proba`; see
`InProcess.bare`) and our decode -> predict -> encode path.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sklearn.preprocessing import StandardScaler

from bench import datagen
from bench.processes import LOOPBACK, Managed, free_port, http_status
from bench.stats import DATA_DIR, Recorder
from localcloud.waiting import wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "post.lua"
BUNDLE = DATA_DIR / "bundle"
MLFLOW_VENV = DATA_DIR / "mlflow-venv"
MLFLOW_MODEL = DATA_DIR / "mlflow-model"
MLFLOW_VERSION = "3.17.2"
MLFLOW_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-mlflow.txt"
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"


@dataclass(frozen=True)
class Body:
    name: str
    path: Path
    content_type: str
    rows: int


@dataclass(frozen=True)
class Scenario:
    server: str  # "ours" | "mlflow" | a label of another source tree of ours
    body: Body
    connections: int
    keep_alive: bool = True

    @property
    def name(self) -> str:
        mode = "" if self.keep_alive else " close"
        return f"{self.server} {self.body.name} c{self.connections}{mode}"


# -- setup ------------------------------------------------------------------------------


def ensure_bundle() -> Path:
    if not (BUNDLE / "manifest.json").exists():
        script = REPO_ROOT / "scripts" / "train_example.py"
        subprocess.run([sys.executable, str(script), "--out", str(BUNDLE)], check=True)
    return BUNDLE


def ensure_mlflow() -> Path:
    """MLflow in its own virtual environment (its pins clash with ours), and the model."""
    python = MLFLOW_VENV / "bin" / "python"
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "-r", str(MLFLOW_REQUIREMENTS)],
            check=True,
        )
    if not (MLFLOW_MODEL / "MLmodel").exists():
        subprocess.run(
            [
                str(python),
                str(Path(__file__).resolve().parent / "mlflow_model.py"),
                "--bundle",
                str(BUNDLE),
                "--example",
                str(datagen.dataset("1k")),
                "--out",
                str(MLFLOW_MODEL),
            ],
            check=True,
        )
    return MLFLOW_MODEL


def split_json(frame: pd.DataFrame) -> bytes:
    """MLflow's `dataframe_split` (both servers accept it); missing values as null."""
    data = frame.astype(object).where(frame.notna(), None).to_numpy().tolist()
    return orjson.dumps({"dataframe_split": {"columns": list(frame.columns), "data": data}})


def write_bodies() -> dict[str, Body]:
    rows = pd.read_parquet(datagen.dataset("1k"))
    folder = DATA_DIR / "bodies"
    folder.mkdir(parents=True, exist_ok=True)
    complete = rows[rows.notna().all(axis=1)]
    single = complete.iloc[:1].reset_index(drop=True)  # the usual request: no value missing
    files = {
        "json-1": (folder / "1row.json", split_json(single), JSON, 1),
        "json-1000": (folder / "1000rows.json", split_json(rows), JSON, len(rows)),
        "parquet-1000": (folder / "1000rows.parquet", None, PARQUET, len(rows)),
    }
    bodies = {}
    for name, (path, content, media, count) in files.items():
        if content is None:
            rows.to_parquet(path, index=False)
        else:
            path.write_bytes(content)
        bodies[name] = Body(name, path, media, count)
    return bodies


# -- servers ----------------------------------------------------------------------------


def start_ours(
    port: int,
    workers: int,
    threads: int | None = None,
    source: Path = REPO_ROOT,
    name: str = "ours",
) -> Managed:
    """`python -m service serve` as the image runs it; `source` may be another checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        MODEL_URI=str(BUNDLE),
        HOST=LOOPBACK,
        PORT=str(port),
        WORKERS=str(workers),
        NO_COLOR="1",
        PYTHONPATH=str(source),
    )
    if threads is not None:
        env["THREADS"] = str(threads)
    server = Managed(
        [sys.executable, "-m", "service", "serve"],
        name=name,
        log=DATA_DIR / "logs" / f"{name}.log",
        env=env,
        cwd=source,
    )
    _wait_ping(server, port)
    return server


def start_mlflow(port: int, workers: int) -> Managed:
    venv_bin = MLFLOW_VENV / "bin"
    env = dict(os.environ)
    # `mlflow models serve` execs `uvicorn` from PATH.
    env.update(
        PATH=f"{venv_bin}:{env.get('PATH', '')}",
        VIRTUAL_ENV=str(MLFLOW_VENV),
        MLFLOW_TRACKING_URI=(DATA_DIR / "mlruns").as_uri(),
    )
    server = Managed(
        [
            str(venv_bin / "mlflow"),
            "models",
            "serve",
            "-m",
            str(MLFLOW_MODEL),
            "--env-manager",
            "local",
            "-w",
            str(workers),
            "-h",
            LOOPBACK,
            "-p",
            str(port),
        ],
        name="mlflow",
        log=DATA_DIR / "logs" / "mlflow.log",
        env=env,
        cwd=DATA_DIR,
    )
    _wait_ping(server, port)
    return server


def _wait_ping(server: Managed, port: int) -> None:
    def ready() -> bool:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited:\n{server.describe()}")
        return http_status(f"http://{LOOPBACK}:{port}/ping") == 200

    wait_until(ready, 180, f"{server.name} /ping")


def post(url: str, body: Body) -> bytes:
    request = urllib.request.Request(
        url,
        data=body.path.read_bytes(),
        headers={"Content-Type": body.content_type, "Accept": JSON},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def check_same_answers(ours: str, mlflow: str, body: Body) -> float:
    """Both servers score the rows alike: the largest absolute difference."""
    mine = [row["activation"] for row in orjson.loads(post(ours, body))["predictions"]]
    theirs = [row[1] for row in orjson.loads(post(mlflow, body))["predictions"]]
    difference = float(np.max(np.abs(np.array(mine) - np.array(theirs))))
    if difference > 1e-9:
        raise RuntimeError(f"ours and MLflow disagree by {difference}")
    return difference


# -- wrk --------------------------------------------------------------------------------


def run_wrk(url: str, body: Body, connections: int, seconds: float, keep_alive: bool) -> dict:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    if not keep_alive:
        command += ["-H", "Connection: close"]
    command += ["-s", str(LUA), url]
    env = dict(os.environ, BENCH_BODY=str(body.path), BENCH_TYPE=body.content_type)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            result = json.loads(line[6:])
            errors = sum(
                result[k]
                for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")
            )
            result["errors"] = errors
            return result
    raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")


# -- in-process limit -------------------------------------------------------------------


def per_call(function: Callable[[], Any], calls: int, blocks: int = 15) -> tuple[float, float]:
    """Median over blocks of the wall and CPU seconds per call."""
    for _ in range(max(10, calls // 10)):
        function()
    walls, cpus = [], []
    for _ in range(blocks):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            function()
        walls.append((time.perf_counter() - wall) / calls)
        cpus.append((time.process_time() - cpu) / calls)
    return statistics.median(walls), statistics.median(cpus)


def scaled_like_the_server(matrix: np.ndarray, means: np.ndarray, scaler: Any) -> np.ndarray:
    """prepare_data's arithmetic on a float matrix: means where values are missing (only
    then), and a plain StandardScaler's two array operations instead of its transform."""
    missing = np.isnan(matrix)
    filled = np.where(missing, means, matrix) if missing.any() else matrix
    scaled = filled - scaler.mean_
    scaled /= scaler.scale_
    return scaled


class InProcess:
    """The limit on the same rows, in this process, with the same bundle."""

    def __init__(self, bodies: dict[str, Body]) -> None:
        from service import codecs
        from service.artifacts import load_bundle
        from service.data import prepare_data
        from service.model import predict

        self.bundle = load_bundle(str(BUNDLE))
        self.codecs = codecs
        self.predict = predict
        self.bodies = bodies
        self.raw = {name: body.path.read_bytes() for name, body in bodies.items()}
        columns = list(self.bundle.columns)
        self.means = np.array([self.bundle.mean[c] for c in columns])
        self.matrices = {
            name: codecs.decode(self.raw[name], body.content_type)[columns].to_numpy(
                dtype=np.float64
            )
            for name, body in bodies.items()
        }
        self.check_bare(prepare_data)

    def bare(self, name: str) -> Callable[[], Any]:
        """The arithmetic the server does on a ready float matrix, and only that: the means
        filled in where values are missing (only then, as prepare_data), a StandardScaler's
        two array operations (prepare_data skips ``transform`` and its input checks), and
        ``predict_proba`` (input checks included: the server calls it too). Not in it:
        decoding, column selection, the finite checks, encoding, HTTP."""
        matrix, means = self.matrices[name], self.means
        model, scaler = self.bundle.model, self.bundle.scaler

        def call() -> Any:
            return model.predict_proba(scaled_like_the_server(matrix, means, scaler))[:, 1]

        return call

    def check_bare(self, prepare_data: Callable[..., np.ndarray]) -> None:
        """Fail before measuring if the baseline's matrix is not the server's, bit for bit
        (a changed scaler or prepare_data would otherwise change what the figure means)."""
        scaler = self.bundle.scaler
        if type(scaler) is not StandardScaler or not (scaler.with_mean and scaler.with_std):
            raise RuntimeError(f"the bare baseline assumes a plain StandardScaler: {scaler!r}")
        for name, body in self.bodies.items():
            ours = scaled_like_the_server(self.matrices[name], self.means, scaler)
            frame = self.codecs.decode(self.raw[name], body.content_type)
            if not np.array_equal(ours, prepare_data(frame, self.bundle)):
                raise RuntimeError(
                    f"the bare baseline's matrix differs from prepare_data's ({name})"
                )

    def path(self, name: str) -> Callable[[], bytes]:
        """Our decode -> predict -> encode, without HTTP."""
        body, raw = self.bodies[name], self.raw[name]
        codecs, predict, bundle = self.codecs, self.predict, self.bundle

        def call() -> bytes:
            frame = codecs.decode(raw, body.content_type)
            return codecs.encode(predict(bundle, frame), JSON)

        return call

    def measure(self, recorder: Recorder, fast: bool) -> dict[str, float]:
        now = {}
        for name in self.bodies:
            calls = 20 if name.endswith("1000") else 200
            calls = max(2, calls // 4) if fast else calls
            if name != "parquet-1000":
                wall, _ = per_call(self.bare(name), calls)
                now[f"bare {name}"] = wall
                recorder.add(f"in-process bare predict_proba {name}", "ms", wall * 1e3)
            wall, cpu = per_call(self.path(name), calls)
            now[f"path {name}"] = wall
            now[f"path cpu {name}"] = cpu
            recorder.add(f"in-process decode+predict+encode {name}", "ms", wall * 1e3)
            recorder.add(f"in-process decode+predict+encode {name} CPU", "ms", cpu * 1e3)
        return now


# -- the benchmark ----------------------------------------------------------------------


def scenarios(bodies: dict[str, Body], with_mlflow: bool, others: list[str]) -> list[Scenario]:
    found = []
    for connections in (1, 16):
        for name in ("json-1", "json-1000", "parquet-1000"):
            found.append(Scenario("ours", bodies[name], connections))
            found.extend(Scenario(label, bodies[name], connections) for label in others)
            if with_mlflow and name.startswith("json"):
                found.append(Scenario("mlflow", bodies[name], connections, keep_alive=True))
                found.append(Scenario("mlflow", bodies[name], connections, keep_alive=False))
    return found


def run(
    rounds: int = 5,
    seconds: float = 8.0,
    workers: int | None = None,
    with_mlflow: bool = True,
    threads: int | None = None,
    fast: bool = False,
    compare: dict[str, Path] | None = None,
) -> Recorder:
    """`compare`: label -> a source tree with another `service/`, run side by side with ours
    (e.g. the code before an optimisation)."""
    workers = workers or os.cpu_count() or 1
    compare = compare or {}
    recorder = Recorder("endpoint")
    recorder.notes.update(workers=workers, threads=threads, seconds=seconds, rounds=rounds)
    recorder.notes["compare"] = {label: str(path) for label, path in compare.items()}
    ensure_bundle()
    bodies = write_bodies()
    if with_mlflow:
        ensure_mlflow()
        recorder.notes["mlflow"] = MLFLOW_VERSION
    ports = {name: free_port() for name in ("ours", "mlflow", *compare)}
    servers = {"ours": start_ours(ports["ours"], workers, threads)}
    try:
        for label, source in compare.items():
            servers[label] = start_ours(ports[label], workers, threads, source, label)
        if with_mlflow:
            servers["mlflow"] = start_mlflow(ports["mlflow"], workers)
        urls = {name: f"http://{LOOPBACK}:{port}/invocations" for name, port in ports.items()}
        if with_mlflow:
            recorder.notes["max_abs_difference_vs_mlflow"] = check_same_answers(
                urls["ours"], urls["mlflow"], bodies["json-1000"]
            )
        limit = InProcess(bodies)
        plan = scenarios(bodies, with_mlflow, list(compare))
        for scenario in plan:  # warm-up: first requests load lazily imported code
            run_wrk(urls[scenario.server], scenario.body, scenario.connections, 1, True)
        for number in range(rounds):
            shift = number * 3 % len(plan)
            order = plan[shift:] + plan[:shift]
            print(f"round {number + 1}/{rounds}", flush=True)
            now = limit.measure(recorder, fast)
            results = {}
            for scenario in order:
                server = servers[scenario.server]
                cpu = server.cpu_seconds()
                result = run_wrk(
                    urls[scenario.server],
                    scenario.body,
                    scenario.connections,
                    seconds,
                    scenario.keep_alive,
                )
                result["cpu_ms_per_request"] = (
                    (server.cpu_seconds() - cpu) * 1e3 / max(1, result["requests"])
                )
                results[scenario.name] = result
                record_scenario(recorder, scenario, result)
            record_ratios(recorder, results, now, with_mlflow)
            for label in compare:
                record_other(recorder, results, label)
        return recorder
    finally:
        for server in servers.values():
            server.stop(grace=20)


def record_scenario(recorder: Recorder, scenario: Scenario, result: dict) -> None:
    name = scenario.name
    rps = result["requests"] / result["seconds"]
    recorder.add(f"{name} requests/s", "req/s", rps)
    recorder.add(f"{name} p50", "ms", result["p50_us"] / 1e3)
    recorder.add(f"{name} p99", "ms", result["p99_us"] / 1e3)
    recorder.add(f"{name} server CPU per request", "ms", result["cpu_ms_per_request"])
    if result["errors"]:
        recorder.add(f"{name} errors", "count", result["errors"])
    print(
        f"  {name:<34} {rps:8.1f} req/s  p50 {result['p50_us'] / 1e3:7.2f} ms  "
        f"p99 {result['p99_us'] / 1e3:7.2f} ms  cpu {result['cpu_ms_per_request']:6.2f} ms/req"
        + (f"  errors {result['errors']}" if result["errors"] else ""),
        flush=True,
    )


def record_ratios(
    recorder: Recorder, results: dict[str, dict], now: dict[str, float], with_mlflow: bool
) -> None:
    def rps(name: str) -> float:
        return results[name]["requests"] / results[name]["seconds"]

    for connections in (1, 16):
        ours = f"ours json-1 c{connections}"
        if with_mlflow:
            peers = [f"mlflow json-1 c{connections}", f"mlflow json-1 c{connections} close"]
            best_rps = max(rps(p) for p in peers)
            best_p99 = min(results[p]["p99_us"] for p in peers)
            recorder.add(
                f"ratio c{connections} single-row req/s ours / MLflow best",
                "x",
                rps(ours) / best_rps,
            )
            recorder.add(
                f"ratio c{connections} single-row p99 ours / MLflow best",
                "x",
                results[ours]["p99_us"] / best_p99,
            )
        path_cpu_ms = now["path cpu json-1"] * 1e3
        recorder.add(
            f"ratio c{connections} single-row server CPU / in-process path CPU",
            "x",
            results[ours]["cpu_ms_per_request"] / path_cpu_ms,
        )
    overhead = results["ours json-1 c1"]["p50_us"] / 1e3 - now["bare json-1"] * 1e3
    recorder.add("overhead c1 single-row: ours p50 - bare predict_proba", "ms", overhead)
    path_overhead = results["ours json-1 c1"]["p50_us"] / 1e3 - now["path json-1"] * 1e3
    recorder.add("overhead c1 single-row: ours p50 - in-process path", "ms", path_overhead)


def record_other(recorder: Recorder, results: dict[str, dict], label: str) -> None:
    """Another tree of ours against ours, scenario by scenario, within one round."""
    for name, result in results.items():
        if not name.startswith("ours "):
            continue
        other = results[name.replace("ours ", f"{label} ", 1)]
        scenario = name.removeprefix("ours ")
        rps = result["requests"] / result["seconds"]
        recorder.add(
            f"ratio {scenario} req/s {label} / ours",
            "x",
            (other["requests"] / other["seconds"]) / rps,
        )
        recorder.add(
            f"ratio {scenario} CPU per request {label} / ours",
            "x",
            other["cpu_ms_per_request"] / result["cpu_ms_per_request"],
        )
        recorder.add(
            f"ratio {scenario} p50 {label} / ours", "x", other["p50_us"] / result["p50_us"]
        )
