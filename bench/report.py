"""`python -m bench.report RESULTS.json [...]`: the figures of runs as Markdown tables.

`python -m bench.report --update bench/RESULTS.md` puts the tables of the newest endpoint
and batch runs (bench/data/results-*.json) between the "figures" markers of RESULTS.md,
leaving the written analysis around them alone; `tox -e bench` ends with it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
START = "<!-- figures:start -->"
END = "<!-- figures:end -->"


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
        "| figure | unit | median | min | max | n | rounds |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, figure in document["figures"].items():
        if not figure.get("n"):
            continue
        lines.append(
            f"| {name} | {figure['unit']} | {number(figure['median'])} | "
            f"{number(figure['min'])} | {number(figure['max'])} | {figure['n']} | "
            f"{' '.join(number(value) for value in figure['values'])} |"
        )
    return "\n".join(lines)


def section(path: Path) -> str:
    document = json.loads(path.read_text(encoding="utf-8"))
    # the per-run detail (every wrk run's raw figures) stays in the JSON
    notes = {k: v for k, v in document["notes"].items() if k != "runs"}
    return (
        f"### {document['suite']} ({path.name})\n\n"
        f"machine: `{json.dumps(document['machine'])}`\n\n"
        f"notes: `{json.dumps(notes)}`\n\n"
        f"{table(document)}\n"
    )


def newest(suite: str) -> Path | None:
    runs = sorted(DATA_DIR.glob(f"results-{suite}-*.json"))
    return runs[-1] if runs else None


def update(target: Path) -> int:
    """Replace the figures between the markers of ``target`` with the newest runs'."""
    text = target.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"{target}: no {START} ... {END} markers", file=sys.stderr)
        return 2
    runs = [path for path in (newest("endpoint"), newest("batch")) if path is not None]
    if not runs:
        print(f"no results-*.json under {DATA_DIR}: run python -m bench.run", file=sys.stderr)
        return 2
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    figures = "\n".join(section(path) for path in runs)
    target.write_text(f"{head}{START}\n\n{figures}\n{END}{tail}", encoding="utf-8")
    print(f"{target}: figures of {', '.join(path.name for path in runs)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if args[:1] == ["--update"] and len(args) == 2:
        return update(Path(args[1]))
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    for path in args:
        print(section(Path(path)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
