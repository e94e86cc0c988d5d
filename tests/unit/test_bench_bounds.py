"""The batch bench's bounds: what the machine's cores allow two workers, from measured parts."""

from __future__ import annotations

import os

import pytest

from bench.batch import scaling_bound, stream_bound


def test_two_workers_at_most_halve_the_time_when_cpu_is_not_the_limit() -> None:
    assert scaling_bound(20.0, 1.0) == pytest.approx(2.0)


def test_the_cpu_the_two_worker_run_needed_bounds_it_on_this_machine() -> None:
    cores = os.cpu_count() or 1
    cpu_seconds = 30.0 * cores  # would keep every core busy for 30 s
    assert scaling_bound(24.0, cpu_seconds) == pytest.approx(24.0 / 30.0)


def test_the_stream_bound_is_the_limit_when_the_cores_have_room() -> None:
    assert stream_bound(5.0, 1.0, 1.0) == pytest.approx(5.0)


def test_the_stream_bound_is_the_cpu_of_limit_and_s3_over_the_cores() -> None:
    cores = os.cpu_count() or 1
    assert stream_bound(1.0, 6.0 * cores, 4.0 * cores) == pytest.approx(10.0)
