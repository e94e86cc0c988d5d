"""Endpoint benchmark: our server, its peers (MLflow, MLServer, BentoML) and the in-process limit.

Per round, in a rotated order that is reversed every other round: wrk (one thread,
keep-alive unless said) against `python -m service serve` and every peer configuration
(`bench.peers`: MLflow on uvloop and on asyncio, MLServer and BentoML with batching off and
on), for single-row and 1,000-row JSON bodies (each server's own format for the same rows)
and 1,000-row parquet (ours only), at concurrency 1 and 16; MLflow also with
`Connection: close`. Around each wrk run: each server process's CPU time (psutil), wrk's own
and the whole machine's busy and stolen time, and wrk's latency histogram, from which the
percentiles are given with and without wrk's coordinated-omission correction
(`bench.latency`). In the same round the bench process times the in-process limit on the same
rows: the bare arithmetic the server does (fill the means, a StandardScaler's two array
operations, `predict_proba`; see `InProcess.bare`) and our decode -> predict -> encode path.
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

from bench import datagen, peers
from bench.cpu import MachineCpu, ProcessCpu
from bench.load import run_wrk
from bench.processes import LOOPBACK, Managed, free_port, wait_ready
from bench.stats import DATA_DIR, Recorder

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLE = peers.BUNDLE
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
CONNECTIONS = {"json-1": (1, 16), "json-1000": (1, 4, 16), "parquet-1000": (1, 4, 16)}
BODIES = ("json-1", "json-1000", "parquet-1000")
WARM_UP_SECONDS = 3.0  # per scenario, before the first round
SAME_ANSWERS = 1e-9  # largest absolute difference of probabilities allowed between servers


@dataclass(frozen=True)
class Body:
    name: str
    path: Path
    content_type: str
    rows: int


@dataclass(frozen=True)
class Target:
    """A server scenarios run against: ours, another tree of ours, or a peer configuration."""

    label: str
    url: str
    family: str  # whose request format it takes: "ours" or a peer family
    server: Managed
    close_too: bool = False


@dataclass(frozen=True)
class Scenario:
    target: str
    body: str
    connections: int
    keep_alive: bool = True

    @property
    def name(self) -> str:
        mode = "" if self.keep_alive else " close"
        return f"{self.target} {self.body} c{self.connections}{mode}"


# -- setup ------------------------------------------------------------------------------


def ensure_bundle() -> Path:
    if not (BUNDLE / "manifest.json").exists():
        script = REPO_ROOT / "scripts" / "train_example.py"
        subprocess.run([sys.executable, str(script), "--out", str(BUNDLE)], check=True)
    return BUNDLE


def write_bodies(families: set[str]) -> dict[str, dict[str, Body]]:
    """family -> body name -> the same rows in that family's request format."""
    rows = pd.read_parquet(datagen.dataset("1k"))
    columns = json.loads((BUNDLE / "columns.json").read_text())
    folder = DATA_DIR / "bodies"
    folder.mkdir(parents=True, exist_ok=True)
    complete = rows[rows.notna().all(axis=1)]
    single = complete.iloc[:1].reset_index(drop=True)  # the usual request: no value missing
    parquet = folder / "1000rows.parquet"
    rows.to_parquet(parquet, index=False)
    found: dict[str, dict[str, Body]] = {}
    for family in families | {"ours"}:
        encode = "mlflow" if family == "ours" else family  # ours takes dataframe_split
        prefix = "" if encode == "mlflow" else f"{family}-"
        found[family] = {}
        for name, frame in (("json-1", single), ("json-1000", rows)):
            path = folder / f"{prefix}{len(frame)}row{'s' if len(frame) > 1 else ''}.json"
            path.write_bytes(peers.body(encode, frame, columns))
            found[family][name] = Body(name, path, JSON, len(frame))
    found["ours"]["parquet-1000"] = Body("parquet-1000", parquet, PARQUET, len(rows))
    return found


# -- servers ----------------------------------------------------------------------------


def start_ours(
    port: int,
    workers: int,
    threads: int | None = None,
    source: Path = REPO_ROOT,
    name: str = "ours",
    batch_rows: int | None = None,
) -> Managed:
    """`python -m service serve` as the image runs it; `source` may be another checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BATCH_"))}
    if batch_rows is not None:
        env["BATCH_MAX_ROWS"] = str(batch_rows)
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
    wait_ready(server, f"http://{LOOPBACK}:{port}/ping")
    return server


def post(url: str, body: Body) -> bytes:
    request = urllib.request.Request(
        url,
        data=body.path.read_bytes(),
        headers={"Content-Type": body.content_type, "Accept": JSON},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read()


def check_same_answers(ours: Target, peer: Target, bodies: dict[str, dict[str, Body]]) -> float:
    """The peer scores the rows as ours does (one row, and 1,000 with missing values): the
    largest absolute difference of the probabilities."""
    worst = 0.0
    for name in ("json-1", "json-1000"):
        mine = [
            row["activation"]
            for row in orjson.loads(post(ours.url, bodies["ours"][name]))["predictions"]
        ]
        theirs = peers.answers(peer.family, post(peer.url, bodies[peer.family][name]))
        if len(mine) != len(theirs):
            raise RuntimeError(f"{peer.label} answered {len(theirs)} rows for {len(mine)}")
        worst = max(worst, float(np.max(np.abs(np.array(mine) - np.array(theirs)))))
    if worst > SAME_ANSWERS:
        raise RuntimeError(f"ours and {peer.label} disagree by {worst}")
    return worst


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


def scenarios(targets: dict[str, Target], bodies: dict[str, dict[str, Body]]) -> list[Scenario]:
    found = []
    for connections in sorted({c for counts in CONNECTIONS.values() for c in counts}):
        for name in BODIES:
            for target in targets.values():
                if name not in bodies[target.family] or connections not in CONNECTIONS[name]:
                    continue
                found.append(Scenario(target.label, name, connections))
                if target.close_too:
                    found.append(Scenario(target.label, name, connections, keep_alive=False))
    return found


def start_targets(
    workers: int,
    threads: int | None,
    compare: dict[str, Path],
    labels: list[str],
    batch_rows: int | None = None,
) -> dict[str, Target]:
    """Ours, the other trees of ours, then every peer configuration, each on a free port."""
    targets: dict[str, Target] = {}
    try:
        for label, source in {"ours": REPO_ROOT, **compare}.items():
            port = free_port()
            rows = batch_rows if label == "ours" else None
            server = start_ours(port, workers, threads, source, label, rows)
            url = f"http://{LOOPBACK}:{port}/invocations"
            targets[label] = Target(label, url, "ours", server)
        for label in labels:
            peer, port = peers.PEERS[label], free_port()
            server = peers.start(peer, port, workers)
            url = f"http://{LOOPBACK}:{port}{peer.path}"
            targets[label] = Target(label, url, peer.family, server, peer.close_too)
    except BaseException:
        for target in targets.values():
            target.server.stop(grace=20)
        raise
    return targets


def run(
    rounds: int = 5,
    seconds: float = 8.0,
    workers: int | None = None,
    peer_labels: list[str] | None = None,
    threads: int | None = None,
    fast: bool = False,
    compare: dict[str, Path] | None = None,
    batch_rows: int | None = None,
) -> Recorder:
    """`compare`: label -> a source tree with another `service/`, run side by side with ours
    (e.g. the code before an optimisation). `peer_labels`: keys of `peers.PEERS` (all).
    `batch_rows`: our server's BATCH_MAX_ROWS (None: its default; the compared trees
    keep their own)."""
    workers = workers or os.cpu_count() or 1
    compare = compare or {}
    labels = list(peers.PEERS) if peer_labels is None else peer_labels
    recorder = Recorder("endpoint")
    recorder.notes.update(
        workers=workers, threads=threads, seconds=seconds, rounds=rounds, batch_rows=batch_rows
    )
    recorder.notes["compare"] = {label: str(path) for label, path in compare.items()}
    recorder.notes["peers"] = {
        label: {"version": peers.VERSIONS[peers.PEERS[label].family], **vars(peers.PEERS[label])}
        for label in labels
    }
    ensure_bundle()
    peers.prepare(labels)
    bodies = write_bodies({peers.PEERS[label].family for label in labels})
    targets = start_targets(workers, threads, compare, labels, batch_rows)
    try:
        recorder.notes["max_abs_difference"] = {
            label: check_same_answers(targets["ours"], targets[label], bodies) for label in labels
        }
        limit = InProcess(bodies["ours"])
        plan = scenarios(targets, bodies)
        for scenario in plan:  # warm-up: lazily imported code; BentoML's batcher learns
            body = bodies[targets[scenario.target].family][scenario.body]
            warm = min(WARM_UP_SECONDS, seconds)
            url = targets[scenario.target].url
            run_wrk(url, body.path, body.content_type, scenario.connections, warm, True)
        for number in range(rounds):
            shift = number * 3 % len(plan)
            order = plan[shift:] + plan[:shift]
            print(f"round {number + 1}/{rounds}", flush=True)
            now = limit.measure(recorder, fast)
            order = order if number % 2 == 0 else order[::-1]
            results = run_round(recorder, number, order, targets, bodies, seconds)
            record_ratios(recorder, results, now, labels)
            for label in compare:
                record_other(recorder, results, label)
        return recorder
    finally:
        for target in targets.values():
            target.server.stop(grace=20)


def run_round(
    recorder: Recorder,
    number: int,
    order: list[Scenario],
    targets: dict[str, Target],
    bodies: dict[str, dict[str, Body]],
    seconds: float,
) -> dict[str, dict]:
    """Every scenario once, in `order`; each run's raw figures also go to `notes.runs`."""
    runs = recorder.notes.setdefault("runs", [])
    results = {}
    with MachineCpu() as machine:
        started = time.perf_counter()
        for scenario in order:
            target = targets[scenario.target]
            result = measure(target, bodies[target.family][scenario.body], scenario, seconds)
            results[scenario.name] = result
            record_scenario(recorder, scenario, result)
            runs.append({"round": number + 1, "scenario": scenario.name, **result})
        wall = time.perf_counter() - started
    recorder.add("machine busy cores over the round", "cores", machine.busy / wall)
    recorder.add("machine stolen cores over the round", "cores", machine.steal / wall)
    return results


def measure(target: Target, body: Body, scenario: Scenario, seconds: float) -> dict:
    """One wrk run with the server's CPU split by process and the machine's CPU around it."""
    with ProcessCpu(target.server.tree) as server, MachineCpu() as machine:
        result = run_wrk(
            target.url,
            body.path,
            body.content_type,
            scenario.connections,
            seconds,
            scenario.keep_alive,
        )
    wall = result["seconds"]
    result["cpu_ms_per_request"] = server.total * 1e3 / max(1, result["requests"])
    result["server_cores"] = server.total / wall
    result["server_cores_split"] = server.text(wall)
    result["server_processes"] = [(s.label, round(s.seconds, 3)) for s in server.shares]
    result["machine_busy_cores"] = machine.busy / wall
    result["machine_stolen_cores"] = machine.steal / wall
    result["others_cores"] = (machine.busy - server.total - result["wrk_cpu_seconds"]) / wall
    return result


def record_scenario(recorder: Recorder, scenario: Scenario, result: dict) -> None:
    name = scenario.name
    rps = result["requests"] / result["seconds"]
    recorder.add(f"{name} requests/s", "req/s", rps)
    recorder.add(f"{name} p50", "ms", result["p50_us"] / 1e3)
    recorder.add(f"{name} p99", "ms", result["p99_us"] / 1e3)
    if "p99_raw_us" in result:
        recorder.add(f"{name} p99 uncorrected", "ms", result["p99_raw_us"] / 1e3)
    recorder.add(f"{name} server CPU per request", "ms", result["cpu_ms_per_request"])
    recorder.add(f"{name} server cores busy", "cores", result["server_cores"])
    if result["errors"]:
        recorder.add(f"{name} errors", "count", result["errors"])
    raw = result.get("p99_raw_us")
    print(
        f"  {name:<36} {rps:8.1f} req/s  p50 {result['p50_us'] / 1e3:7.2f}  "
        f"p99 {result['p99_us'] / 1e3:7.2f} (uncorrected {raw / 1e3 if raw else float('nan'):.2f}) ms  "
        f"cpu {result['cpu_ms_per_request']:5.2f} ms/req  cores [{result['server_cores_split']}]  "
        f"others {result['others_cores']:.2f}"
        + (f"  errors {result['errors']}" if result["errors"] else ""),
        flush=True,
    )


def best_of(results: dict[str, dict], prefix: str, labels: list[str]) -> str | None:
    """The scenario with the most requests/s among the labels' runs of `prefix` (body, c)."""
    runs = [
        name
        for name in results
        if any(name in (f"{label} {prefix}", f"{label} {prefix} close") for label in labels)
    ]
    return max(runs, key=lambda n: results[n]["requests"] / results[n]["seconds"], default=None)


def record_ratios(
    recorder: Recorder, results: dict[str, dict], now: dict[str, float], labels: list[str]
) -> None:
    """Ours against each peer configuration, each peer at its best configuration of the
    round, and the best of all; ours against the in-process limit."""
    families: dict[str, list[str]] = {}
    for label in labels:
        families.setdefault(peers.PEERS[label].family, []).append(label)
    groups = [(label, [label]) for label in labels]  # each configuration, its best mode
    groups += [(f"{family} best", members) for family, members in families.items()]
    groups += [("best peer", labels)] if labels else []
    for body in BODIES:
        for connections in CONNECTIONS[body]:
            for group, members in groups:
                # no peer takes parquet: ours' parquet is set against their JSON of the rows
                theirs = f"json-1000 c{connections}" if body == "parquet-1000" else None
                prefix = f"{body} c{connections}"
                record_against(recorder, results, prefix, group, members, theirs)
    for connections in CONNECTIONS["json-1"]:
        ours = results[f"ours json-1 c{connections}"]
        recorder.add(
            f"ratio c{connections} single-row server CPU / in-process path CPU",
            "x",
            ours["cpu_ms_per_request"] / (now["path cpu json-1"] * 1e3),
        )
    overhead = results["ours json-1 c1"]["p50_us"] / 1e3 - now["bare json-1"] * 1e3
    recorder.add("overhead c1 single-row: ours p50 - bare predict_proba", "ms", overhead)
    path_overhead = results["ours json-1 c1"]["p50_us"] / 1e3 - now["path json-1"] * 1e3
    recorder.add("overhead c1 single-row: ours p50 - in-process path", "ms", path_overhead)


def record_against(
    recorder: Recorder,
    results: dict[str, dict],
    prefix: str,
    group: str,
    members: list[str],
    their_prefix: str | None = None,
) -> None:
    """Ours / the group's run with the most requests/s for `prefix` (body, connections),
    or for `their_prefix` when the peers take the rows in another body."""
    peer = best_of(results, their_prefix or prefix, members)
    if peer is None:
        return
    ours, theirs = results[f"ours {prefix}"], results[peer]
    if not (ours["requests"] and theirs["requests"]):  # no ratio of a run nothing answered
        recorder.notes.setdefault("unanswered runs", []).append([prefix, peer])
        return
    what = f"ratio {prefix} ours / {group}"
    rps = (ours["requests"] / ours["seconds"]) / (theirs["requests"] / theirs["seconds"])
    recorder.add(f"{what} req/s", "x", rps)
    recorder.add(f"{what} p99", "x", ours["p99_us"] / theirs["p99_us"])
    if ours.get("p99_raw_us") and theirs.get("p99_raw_us"):
        recorder.add(f"{what} p99 uncorrected", "x", ours["p99_raw_us"] / theirs["p99_raw_us"])
    recorder.add(f"{what} p50", "x", ours["p50_us"] / theirs["p50_us"])
    if theirs["cpu_ms_per_request"] > 0:
        cpu = ours["cpu_ms_per_request"] / theirs["cpu_ms_per_request"]
        recorder.add(f"{what} CPU per request", "x", cpu)
    if group == "best peer" and their_prefix is None:
        recorder.notes.setdefault("best peer", {}).setdefault(prefix, []).append(peer)


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
