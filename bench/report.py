"""`python -m bench.report RESULTS.json [...]`: the figures of runs as Markdown tables.

This is how the tables in bench/RESULTS.md were made from bench/data/results-*.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(document: dict) -> str:
    lines = [
        "| figure | unit | median | min | max | n |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, figure in document["figures"].items():
        if not figure.get("n"):
            continue
        lines.append(
            f"| {name} | {figure['unit']} | {number(figure['median'])} | "
            f"{number(figure['min'])} | {number(figure['max'])} | {figure['n']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = [Path(p) for p in (argv if argv is not None else sys.argv[1:])]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    for path in paths:
        document = json.loads(path.read_text(encoding="utf-8"))
        print(f"### {document['suite']} ({path.name})\n")
        print(f"machine: `{json.dumps(document['machine'])}`\n")
        print(f"notes: `{json.dumps(document['notes'])}`\n")
        print(table(document))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
