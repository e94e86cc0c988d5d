"""Latency percentiles from wrk's histogram, with and without its coordinated-omission correction.

wrk records one latency per response in a histogram of microseconds. Before it reports (and
before the Lua `done` callback sees it), `stats_correct` (wrk's src/stats.c) adds, for every
latency n >= 2 x the expected interval e = duration / (requests / connections), one synthetic
sample at each of n - e, n - 2e, ... while above e: the requests a stalled connection would
have sent. That models an open-loop client and inflates rare stalls; the uncorrected
percentiles (what the requests actually waited) are reported beside the corrected ones.
`bench/wrk/post.lua` writes the corrected histogram; `uncorrect` takes the samples back out.
"""

from __future__ import annotations

import math
from pathlib import Path

Histogram = dict[int, int]  # latency in microseconds -> count


def expected_interval(duration_us: int, requests: int, connections: int) -> int:
    """wrk's `interval`: runtime_us / (complete / connections), in integer arithmetic."""
    per_connection = requests // connections
    return duration_us // per_connection if per_connection else 0


def correct(raw: Histogram, interval: int) -> Histogram:
    """wrk's `stats_correct`, for checking `uncorrect` against."""
    out = dict(raw)
    if interval <= 0:
        return out
    for value, count in raw.items():
        if value < 2 * interval:
            continue
        synthetic = value - interval
        while synthetic > interval:
            out[synthetic] = out.get(synthetic, 0) + count
            synthetic -= interval
    return out


def uncorrect(corrected: Histogram, interval: int) -> Histogram:
    """The recorded samples: a value's synthetic copies come from the values above it."""
    if interval <= 0:
        return dict(corrected)
    raw: Histogram = {}
    above: Histogram = {}  # value -> raw samples at value + interval, value + 2 interval, ...
    for value in sorted(corrected, reverse=True):
        parent = value + interval
        added = raw.get(parent, 0) + above.get(parent, 0) if value > interval else 0
        above[value] = added
        count = corrected[value] - added
        if count:
            raw[value] = count
    return raw


def percentile(histogram: Histogram, p: float) -> int:
    """wrk's `stats_percentile`: the smallest value whose cumulative count reaches the rank."""
    total = sum(histogram.values())
    if not total:
        return 0
    rank = math.floor(p / 100 * total + 0.5 + 0.5)  # C's round(x + 0.5) for x >= 0
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return value
    return max(histogram)


def read_histogram(path: Path) -> Histogram:
    """`value count` lines, as bench/wrk/post.lua writes them."""
    histogram: Histogram = {}
    for line in path.read_text(encoding="ascii").splitlines():
        value, count = line.split()
        histogram[int(value)] = int(count)
    return histogram
