"""`python -m bench.run [endpoint|batch|data] ...`: run benchmarks, print and save figures.

Every server a benchmark starts binds 127.0.0.1 and is stopped on the way out, also on
Ctrl-C and SIGTERM. Results go to bench/data/results-*.json (git-ignored); the method is in
bench/README.md and the recorded figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import datagen
from bench.peers import PEERS
from bench.processes import install_cleanup, stop_all

BATCH_PARTS = ("throughput", "latency", "memory", "scaling")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("data", help="generate the input files under bench/data/")
    endpoint = commands.add_parser("endpoint", help="our endpoint vs its peers vs in-process")
    endpoint.add_argument("--rounds", type=int, default=5)
    endpoint.add_argument("--seconds", type=float, default=8.0, help="length of each wrk run")
    endpoint.add_argument("--workers", type=int, default=None, help="server processes (nproc)")
    endpoint.add_argument("--threads", type=int, default=None, help="THREADS of our server")
    endpoint.add_argument(
        "--batch-rows",
        type=int,
        default=None,
        help="BATCH_MAX_ROWS of our server (default: the server's own; not of the --compare "
        "trees); 0: off",
    )
    endpoint.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma list of {', '.join(PEERS)} (all), or none",
    )
    endpoint.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="also run our server from DIR (a tree with another service/), interleaved",
    )
    batch = commands.add_parser("batch", help="the batch transform vs the in-process limit")
    batch.add_argument("--rounds", type=int, default=7)
    batch.add_argument(
        "--parts", default=",".join(BATCH_PARTS), help=f"comma list of {', '.join(BATCH_PARTS)}"
    )
    for command in (endpoint, batch):
        command.add_argument("--quick", action="store_true", help="2 rounds, short runs")
    return parser


def parse_compare(values: list[str]) -> dict[str, Path]:
    found = {}
    for value in values:
        label, _, folder = value.partition("=")
        if not folder or not (Path(folder) / "service").is_dir():
            raise SystemExit(f"--compare {value}: want LABEL=DIR with DIR/service/")
        found[label] = Path(folder).resolve()
    return found


def parse_peers(value: str) -> list[str]:
    labels = [] if value in ("", "none") else value.split(",")
    unknown = set(labels) - set(PEERS)
    if unknown:
        raise SystemExit(
            f"--peers: unknown {', '.join(sorted(unknown))}; known: {', '.join(PEERS)}"
        )
    return labels


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_cleanup()
    command = args.command or "all"
    try:
        if command == "data":
            return datagen.main()
        if command in ("endpoint", "all"):
            from bench import endpoint

            quick = getattr(args, "quick", False)
            recorder = endpoint.run(
                rounds=2 if quick else getattr(args, "rounds", 5),
                seconds=3.0 if quick else getattr(args, "seconds", 8.0),
                workers=getattr(args, "workers", None),
                peer_labels=parse_peers(getattr(args, "peers", ",".join(PEERS))),
                threads=getattr(args, "threads", None),
                batch_rows=getattr(args, "batch_rows", None),
                fast=quick,
                compare=parse_compare(getattr(args, "compare", [])),
            )
            recorder.print_table()
            recorder.save()
        if command in ("batch", "all"):
            from bench import batch

            quick = getattr(args, "quick", False)
            parts = getattr(args, "parts", ",".join(BATCH_PARTS)).split(",")
            unknown = set(parts) - set(BATCH_PARTS)
            if unknown:
                print(f"unknown parts: {', '.join(sorted(unknown))}", file=sys.stderr)
                return 2
            recorder = batch.run(parts, rounds=2 if quick else getattr(args, "rounds", 7))
            recorder.print_table()
            recorder.save()
    except KeyboardInterrupt:
        print("interrupted: stopping the servers", file=sys.stderr)
        return 130
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
