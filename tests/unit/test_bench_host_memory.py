"""The batch bench waits until freed memory is handed back to the host before each side."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import host_memory


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "reported_kib"
    monkeypatch.setattr(host_memory, "REPORTED_KIB", path)
    return path


def test_a_kernel_that_does_not_report_is_not_waited_on(counter: Path) -> None:
    assert host_memory.reported_mib() is None
    assert host_memory.settle() == 0.0


def test_the_count_is_read_in_mib(counter: Path) -> None:
    counter.write_text("2048\n")
    assert host_memory.reported_mib() == 2.0


def test_settling_waits_for_the_count_to_stay_still(
    counter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeTime()
    counts = iter([1024 * n for n in range(30)])  # moves on each of the first 30 reads

    def reported() -> float:
        return next(counts, 30 * 1024) / 1024

    monkeypatch.setattr(host_memory, "time", clock)
    monkeypatch.setattr(host_memory, "reported_mib", reported)
    waited = host_memory.settle(quiet=1.0, deadline=20.0)
    # the 30th read is the last change, at ~2.9 s; then 1 s without one
    assert 3.8 < waited < 4.2


def test_settling_gives_up_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime()
    monkeypatch.setattr(host_memory, "time", clock)
    monkeypatch.setattr(host_memory, "reported_mib", lambda: clock.now)  # never still
    assert host_memory.settle(quiet=1.0, deadline=5.0) == pytest.approx(5.0, abs=0.11)
