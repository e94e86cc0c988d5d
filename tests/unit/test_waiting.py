"""localcloud.waiting: the one deadline loop, with an optional growing pause."""

from __future__ import annotations

import pytest

from localcloud.waiting import wait_until


class FakeTime:
    """A clock that only moves when the loop sleeps, recording each pause."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_value() -> None:
    fake = FakeTime()
    answers = iter([0, None, "ready"])
    value = wait_until(lambda: next(answers), 10, clock=fake.clock, sleep=fake.sleep)
    assert value == "ready"
    assert fake.pauses == [0.05, 0.05]


def test_backoff_grows_the_pause_up_to_the_cap() -> None:
    fake = FakeTime()
    calls = []

    def condition() -> bool:
        calls.append(fake.now)
        return len(calls) == 7

    wait_until(
        condition,
        10,
        interval=0.05,
        backoff=2.0,
        max_interval=0.5,
        clock=fake.clock,
        sleep=fake.sleep,
    )
    assert fake.pauses == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])


def test_timeout_names_what_it_waited_for() -> None:
    fake = FakeTime()
    with pytest.raises(TimeoutError, match=r"after 1 s waiting for the endpoint"):
        wait_until(
            lambda: False,
            1,
            "the endpoint",
            interval=0.1,
            backoff=3.0,
            clock=fake.clock,
            sleep=fake.sleep,
        )
    assert fake.pauses == pytest.approx([0.1, 0.3, 0.9])
