"""Pipeline bundles' speed, paired within each round (the machine is shared: medians, ratios).

    python -m bench.models [--rounds 5] [--rows 200000] [--requests 400] [--before REF]

1. **batch**: the mixed example pipeline (scripts/examples.py: strings, a boolean, a
   datetime, missing values) over one parquet file: the worker's own file transform
   (`service.worker.transform_file`: read, schema check, predict, write) against the
   estimator alone in this process (read the file, `predict_proba`, write id + score), A
   and B alternating; the ratio of rates per round.
2. **endpoint**: single-row JSON requests to `python -m service serve` (one process, keep-
   alive, one at a time), each followed by `predict_proba` on the same row in the client's
   process; the overhead (median of the per-pair differences) per round, with a minimal
   raw-socket client and, beside it, with http.client; and wrk (one connection) against
   the same server, minus `predict_proba` back to back. Every round has a new server and a
   new client process.
3. **numeric**: the four-artifact example bundle's `service.model.predict` on 1 and 1,000
   rows, this tree against `--before` (a git ref, default `main`: its `service/` exported
   to a temporary folder), each in its own subprocess, alternating; the ratio per round.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.endpoint import per_call
from bench.load import run_wrk
from bench.processes import Managed, free_port, http_status, install_cleanup, stop_all
from bench.stats import Recorder
from localcloud.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
WRK_SECONDS = 5.0
sys.path.insert(0, str(REPO / "scripts"))


def mixed_bundle(folder: Path) -> Path:
    import train_example

    train_example.main(["--kind", "mixed", "--out", str(folder / "mixed")])
    return folder / "mixed"


def mixed_file(folder: Path, rows: int) -> Path:
    import examples

    path = folder / "mixed.parquet"
    examples.sample_rows("mixed", rows, seed=2).to_parquet(path, index=False)
    return path


def worker_seconds(source: Path, target: Path, bundle: Any) -> float:
    from service.files import FileFormat
    from service.settings import WorkerSettings
    from service.transform import transform_file

    rows = int(WorkerSettings.model_fields["batch_rows"].default)
    started = time.perf_counter()
    transform_file(str(source), FileFormat("parquet"), str(target), bundle, "parquet", rows)
    return time.perf_counter() - started


def estimator_seconds(source: Path, target: Path, bundle: Any) -> float:
    """The estimator alone: the whole file read, predict_proba, id + score written."""
    started = time.perf_counter()
    frame = pd.read_parquet(source)
    scores = bundle.model.predict_proba(frame[list(bundle.input_columns)])[:, 1]
    pd.DataFrame({"id": frame["id"], "activation": scores}).to_parquet(target, index=False)
    return time.perf_counter() - started


def batch_round(source: Path, bundle: Any, rows: int, first_worker: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "out.parquet"
        order = [worker_seconds, estimator_seconds]
        timed = {f.__name__: 0.0 for f in order}
        for function in order if first_worker else order[::-1]:
            timed[function.__name__] = function(source, target, bundle)
    worker_rate, estimator_rate = rows / timed["worker_seconds"], rows / timed["estimator_seconds"]
    return {
        "worker": worker_rate,
        "estimator": estimator_rate,
        "ratio": worker_rate / estimator_rate,
    }


def one_row_body(row: pd.DataFrame) -> bytes:
    record = row.iloc[0].to_dict()
    plain = {k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in record.items()}
    plain = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in plain.items()}
    return json.dumps(
        [{k: (v.item() if hasattr(v, "item") else v) for k, v in plain.items()}]
    ).encode()


class RawClient:
    """A minimal keep-alive HTTP/1.1 client: the request's bytes built once, the response
    read up to its Content-Length. Python's http.client spends 0.2-0.3 ms per request on
    its own (header building, the email parser for the response's headers): the endpoint's
    overhead is measured with this one, as wrk measures the numeric bundle's."""

    def __init__(self, port: int, body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (
            "POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.request = head.encode() + body

    def post(self) -> bytes:
        self.sock.sendall(self.request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"the endpoint answered {head.splitlines()[0]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += self._recv()
        return body

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("the endpoint closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


def paired_latencies(port: int, body: bytes, bundle: Any, row: pd.DataFrame, requests: int) -> dict:
    """Each endpoint request followed by one in-process predict_proba of the same row: the
    per-pair difference tracks the machine's load as closely as two timings can. Each
    round of the loop sends one request with the raw client and one with http.client
    (which first alternates), each paired with its own predict_proba. Also the CPU
    seconds of both sides (less sensitive to other tenants than wall time)."""
    features = row[list(bundle.input_columns)]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    raw = RawClient(port, body)
    headers = {"Content-Type": "application/json"}

    def library() -> None:
        connection.request("POST", "/invocations", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the endpoint answered {response.status}")

    clients = [("served", "alone", raw.post), ("served_http_client", "alone_http_client", library)]
    times: dict[str, list[float]] = {name: [] for client in clients for name in client[:2]}
    own_cpu = 0.0
    try:
        for i in range(requests):
            for served, alone, send in clients if i % 2 == 0 else reversed(clients):
                started = time.perf_counter()
                send()
                times[served].append(time.perf_counter() - started)
                cpu, started = time.thread_time(), time.perf_counter()
                bundle.model.predict_proba(features)
                times[alone].append(time.perf_counter() - started)
                own_cpu += time.thread_time() - cpu
    finally:
        connection.close()
        raw.close()
    return {**times, "alone_cpu": own_cpu / (2 * requests)}


def service_path_seconds(
    bundle: Any, body: bytes, row: pd.DataFrame, calls: int
) -> dict[str, float]:
    """In this process, no HTTP: decode + predict + encode against predict_proba alone."""
    from service import codecs
    from service.model import predict

    features = row[list(bundle.input_columns)]
    ours, alone = [], []
    for _ in range(calls):
        started = time.perf_counter()
        codecs.encode(predict(bundle, codecs.decode(body, "application/json")), codecs.JSON)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        bundle.model.predict_proba(features)
        alone.append(time.perf_counter() - started)
    return {"ours": statistics.median(ours), "alone": statistics.median(alone)}


def start_endpoint(bundle_dir: Path, logs: Path) -> tuple[Managed, int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MODEL_URI": str(bundle_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
    }
    server = Managed(
        [sys.executable, "-m", "service", "serve"],
        name="endpoint",
        log=logs / "endpoint.log",
        env=env,
    )
    url = f"http://127.0.0.1:{port}/ping"
    wait_until(lambda: http_status(url) == 200, 90, "the endpoint to serve the mixed bundle")
    return server, port


NUMERIC_CHILD = """
import json, sys, time, numpy as np, pandas as pd
sys.path.insert(0, sys.argv[1])
from service.artifacts import load_bundle
from service.model import predict
bundle = load_bundle(sys.argv[2])
rows = pd.read_parquet(sys.argv[3])
one = pd.DataFrame([rows.iloc[0].to_dict()])
many = rows.head(1000)
out = {}
for name, frame, calls in (("1 row", one, int(sys.argv[4])), ("1000 rows", many, 200)):
    predict(bundle, frame)
    times = []
    for _ in range(calls):
        started = time.perf_counter(); predict(bundle, frame); times.append(time.perf_counter() - started)
    out[name] = float(np.median(times))
print(json.dumps(out))
"""


def numeric_run(tree: Path, bundle_dir: Path, rows: Path, calls: int) -> dict[str, float]:
    command = [
        sys.executable,
        "-c",
        NUMERIC_CHILD,
        str(tree),
        str(bundle_dir),
        str(rows),
        str(calls),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_tree(ref: str, folder: Path) -> Path:
    """`service/` as it is at `ref`, in its own folder (the "before" of the A/B)."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", ref, "service"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def numeric_setup(folder: Path) -> tuple[Path, Path]:
    import train_example

    bundle_dir = folder / "numeric"
    train_example.main(["--out", str(bundle_dir)])
    rows = folder / "numeric.parquet"
    train_example.sample_rows(1000, seed=3).to_parquet(rows, index=False)
    return bundle_dir, rows


def measure_batch(recorder: Recorder, folder: Path, bundle: Any, rows: int, rounds: int) -> None:
    source = mixed_file(folder, rows)
    for i in range(rounds):
        result = batch_round(source, bundle, rows, first_worker=i % 2 == 0)
        recorder.add("mixed batch: worker transform rate", "rows/s", result["worker"])
        recorder.add("mixed batch: estimator in-process rate", "rows/s", result["estimator"])
        recorder.add("mixed batch: worker / estimator (paired)", "x", result["ratio"])


def endpoint_round(port: int, bundle_dir: str, requests: int, server_pids: list[int]) -> dict:
    """One round's client, run in a fresh process (`measure_endpoint`): warm-up, then the
    paired requests, then the no-HTTP path; times in seconds."""
    import examples
    import psutil

    from service.artifacts import load_bundle

    bundle = load_bundle(bundle_dir)
    row = examples.sample_rows("mixed", 1, seed=4)
    body = one_row_body(row)
    paired_latencies(port, body, bundle, row, 50)  # warm-up
    server = [psutil.Process(pid) for pid in server_pids]
    cpu = sum(sum(p.cpu_times()[:2]) for p in server)
    pairs = paired_latencies(port, body, bundle, row, requests)
    server_cpu = (sum(sum(p.cpu_times()[:2]) for p in server) - cpu) / (2 * requests)
    path = service_path_seconds(bundle, body, row, requests)
    features = row[list(bundle.input_columns)]
    hot, _ = per_call(lambda: bundle.model.predict_proba(features), 100, blocks=5)
    return {
        "mixed endpoint: single-row latency (median)": statistics.median(pairs["served"]),
        "mixed in-process predict_proba, one row (median)": statistics.median(pairs["alone"]),
        "mixed endpoint: overhead, median of per-request gaps": _median_gap(
            pairs["served"], pairs["alone"]
        ),
        "mixed endpoint: overhead with http.client as the client": _median_gap(
            pairs["served_http_client"], pairs["alone_http_client"]
        ),
        "mixed endpoint: server CPU per request": server_cpu,
        "mixed in-process predict_proba CPU per call": pairs["alone_cpu"],
        "mixed endpoint: CPU overhead (server - in-process)": server_cpu - pairs["alone_cpu"],
        "mixed no-HTTP decode+predict+encode minus predict_proba": path["ours"] - path["alone"],
        "mixed in-process predict_proba, one row, back to back": hot,
    }


def _median_gap(served: list[float], alone: list[float]) -> float:
    return statistics.median(a - b for a, b in zip(served, alone, strict=True))


ENDPOINT_CHILD = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/scripts"]
from bench.models import endpoint_round
pids = [int(pid) for pid in sys.argv[5].split(",")]
print(json.dumps(endpoint_round(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), pids)))
"""


def measure_endpoint(
    recorder: Recorder, folder: Path, bundle_dir: Path, requests: int, rounds: int
) -> None:
    """Each round starts a new server and a new client process. The overhead differs more
    between one pair of processes and the next (0.72-1.2 ms here) than between rounds of
    the same pair (~0.1 ms), so a new pair per round makes the median over rounds one
    over processes too, not the luck of a single pair.

    Besides the paired figure, wrk (one connection, as for the numeric bundle) against the
    same server, minus `predict_proba` called back to back in the client's process: the
    Python client spends ~0.15 ms of CPU per request of its own, which wrk does not."""
    import examples

    body = folder / "mixed-row.json"
    body.write_bytes(one_row_body(examples.sample_rows("mixed", 1, seed=4)))
    for _ in range(rounds):
        server, port = start_endpoint(bundle_dir, folder)
        try:
            pids = ",".join(str(process.pid) for process in server.tree())
            command = [sys.executable, "-c", ENDPOINT_CHILD, str(REPO), str(port)]
            command += [str(bundle_dir), str(requests), pids]
            child = subprocess.run(command, capture_output=True, text=True)
            url = f"http://127.0.0.1:{port}/invocations"
            wrk = run_wrk(url, body, "application/json", 1, WRK_SECONDS, keep_alive=True)
        finally:
            server.stop()
        if child.returncode != 0:
            raise RuntimeError(f"the endpoint round's client failed:\n{child.stderr[-2000:]}")
        figures = json.loads(child.stdout.splitlines()[-1])
        figures["mixed endpoint: wrk c1 p50"] = wrk["p50_raw_us"] / 1e6
        figures["mixed endpoint: overhead, wrk c1 p50 minus predict_proba back to back"] = (
            wrk["p50_raw_us"] / 1e6
            - figures["mixed in-process predict_proba, one row, back to back"]
        )
        for name, seconds in figures.items():
            recorder.add(name, "ms", seconds * 1e3)


def measure_numeric(recorder: Recorder, folder: Path, before: str, rounds: int) -> None:
    bundle_dir, rows = numeric_setup(folder)
    trees = {"after": REPO, "before": export_tree(before, folder / "before")}
    for i in range(rounds):
        order = ["after", "before"] if i % 2 == 0 else ["before", "after"]
        timed = {label: numeric_run(trees[label], bundle_dir, rows, 3000) for label in order}
        for size in ("1 row", "1000 rows"):
            for label in ("before", "after"):
                recorder.add(f"numeric predict {size}: {label}", "us", timed[label][size] * 1e6)
            ratio = timed["after"][size] / timed["before"][size]
            recorder.add(f"numeric predict {size}: after / before (paired)", "x", ratio)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--before", default="main", help="git ref of the numeric A/B's before")
    parser.add_argument("--parts", default="batch,endpoint,numeric")
    args = parser.parse_args(argv)
    install_cleanup()
    from service.artifacts import load_bundle

    recorder = Recorder("models")
    parts = args.parts.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        bundle_dir = mixed_bundle(folder)
        bundle = load_bundle(str(bundle_dir))
        try:
            if "batch" in parts:
                measure_batch(recorder, folder, bundle, args.rows, args.rounds)
            if "endpoint" in parts:
                measure_endpoint(recorder, folder, bundle_dir, args.requests, args.rounds)
            if "numeric" in parts:
                measure_numeric(recorder, folder, args.before, args.rounds)
        finally:
            stop_all()
    recorder.print_table()
    print(f"results: {recorder.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
