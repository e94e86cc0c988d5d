"""CPU seconds over a block: of the whole machine (busy and stolen), and of each server process.

The machine is shared, so a figure is read beside how busy the cores were while it was taken
(`MachineCpu`), and a server's CPU is split by process (`ProcessCpu`), so a server that leaves
a core idle (one process taking every connection) shows as one busy process, not as a
lower total.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

from bench.host_memory import reported_mib


class MachineCpu:
    """What the whole machine did over a block: CPU seconds busy, stolen by the hypervisor and
    waiting for I/O, bytes read from and written to its disks, memory handed back to the
    host (bench.host_memory), and this process's CPU; at its end, the page cache's writes
    not yet on disk and the memory available."""

    BUSY = ("user", "nice", "system", "irq", "softirq")

    def __enter__(self) -> MachineCpu:
        self._start = (psutil.cpu_times(), psutil.Process().cpu_times(), _disk())
        self._reported = reported_mib()
        return self

    def __exit__(self, *exc_info: object) -> None:
        (machine, client, disk), end = self._start, psutil.cpu_times()
        mine = psutil.Process().cpu_times()
        self.client = mine.user + mine.system - client.user - client.system
        self.busy = sum(getattr(end, f) - getattr(machine, f) for f in self.BUSY)
        self.steal = getattr(end, "steal", 0.0) - getattr(machine, "steal", 0.0)
        self.iowait = getattr(end, "iowait", 0.0) - getattr(machine, "iowait", 0.0)
        self.read_bytes, self.written_bytes = (a - b for a, b in zip(_disk(), disk, strict=True))
        memory = _meminfo()
        self.dirty_bytes = memory.get("Dirty", 0) + memory.get("Writeback", 0)
        self.available_bytes = memory.get("MemAvailable", 0)
        reported = reported_mib()
        known = reported is not None and self._reported is not None
        self.handed_back_bytes = (reported - self._reported) * 2**20 if known else 0.0


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes: page-cache writes not yet on disk, memory to spare."""
    found = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                found[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


def _disk() -> tuple[int, int]:
    counters = psutil.disk_io_counters()
    return (counters.read_bytes, counters.write_bytes) if counters else (0, 0)


@dataclass(frozen=True)
class Share:
    """One process's CPU seconds over the block."""

    pid: int
    label: str
    seconds: float


def _label(process: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        words = process.cmdline()
        if "-c" in words:  # multiprocessing's children: `python -c "from multiprocessing..."`
            return words[words.index("-c") + 1].split(";")[0].split()[-1]
        if "-m" in words:
            return " ".join(words[words.index("-m") + 1 : words.index("-m") + 3])
        return " ".join(word.rsplit("/", 1)[-1] for word in words[:3])
    return "?"


def _seconds(process: psutil.Process) -> float | None:
    try:
        times = process.cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


class ProcessCpu:
    """User + system CPU of each process of a tree over a block (processes that exit during
    it are lost; processes born during it count from zero)."""

    def __init__(self, tree: Callable[[], Iterable[psutil.Process]]) -> None:
        self._tree = tree

    def _snapshot(self) -> dict[tuple[int, float], tuple[psutil.Process, float]]:
        found = {}
        for process in self._tree():
            seconds = _seconds(process)
            with contextlib.suppress(psutil.Error):
                if seconds is not None:
                    found[(process.pid, process.create_time())] = (process, seconds)
        return found

    def __enter__(self) -> ProcessCpu:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        shares = []
        for key, (process, seconds) in self._snapshot().items():
            before = self._start.get(key, (process, 0.0))[1]
            shares.append(Share(process.pid, _label(process), seconds - before))
        self.shares = sorted(shares, key=lambda share: share.seconds, reverse=True)

    @property
    def total(self) -> float:
        return sum(share.seconds for share in self.shares)

    def text(self, wall: float) -> str:
        """Cores each process kept busy, busiest first: `0.98 + 0.95 + 0.01`."""
        return " + ".join(f"{share.seconds / wall:.2f}" for share in self.shares)
