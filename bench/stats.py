"""Repeated measurements summarised as min / median / max, and their recording.

The machine is shared, so one number says little: every figure is a list of repeats, and
every comparison is a ratio of two figures taken in the same round (A and B interleaved).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
PACKAGES = ("numpy", "pandas", "pyarrow", "scikit-learn", "waitress", "orjson", "boto3", "moto")


@dataclass
class Figure:
    """One named quantity measured several times (one value per round)."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(float(value))

    def summary(self) -> dict[str, float]:
        return summarise(self.values)

    def text(self, digits: int = 3) -> str:
        if not self.values:
            return "n/a"
        s = self.summary()
        return (
            f"{_fmt(s['median'], digits)} ({_fmt(s['min'], digits)} .. "
            f"{_fmt(s['max'], digits)}) {self.unit}"
        )


def summarise(values: Iterable[float]) -> dict[str, float]:
    data = sorted(values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "min": data[0],
        "median": statistics.median(data),
        "max": data[-1],
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    data = sorted(values)
    rank = max(1, min(len(data), round(q / 100 * len(data) + 0.5)))
    return data[rank - 1]


def _fmt(value: float, digits: int) -> str:
    if value == 0 or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


class Recorder:
    """Collects figures of one benchmark run and writes them as JSON under bench/data/."""

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.figures: dict[str, Figure] = {}
        self.notes: dict[str, Any] = {}
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def figure(self, name: str, unit: str) -> Figure:
        if name not in self.figures:
            self.figures[name] = Figure(name, unit)
        return self.figures[name]

    def add(self, name: str, unit: str, value: float) -> None:
        self.figure(name, unit).add(value)

    def print_table(self) -> None:
        width = max((len(n) for n in self.figures), default=10)
        print(f"\n== {self.suite}: median (min .. max) over rounds ==")
        for name, fig in self.figures.items():
            print(f"  {name:<{width}}  {fig.text()}  [n={len(fig.values)}]")

    def save(self) -> Path:
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path = DATA_DIR / f"results-{self.suite}-{self.started.replace(':', '')}.json"
        document = {
            "suite": self.suite,
            "started": self.started,
            "machine": machine(),
            "notes": self.notes,
            "figures": {
                name: {"unit": fig.unit, "values": fig.values, **fig.summary()}
                for name, fig in self.figures.items()
            },
        }
        path.write_text(json.dumps(document, indent=1), encoding="utf-8")
        print(f"results written to {path}")
        return path


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    memory = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            memory = int(handle.readline().split()[1]) * 1024
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{name: version(name) for name in PACKAGES},
        "load_average": os.getloadavg(),
    }
