"""bench.latency: wrk's coordinated-omission correction (src/stats.c `stats_correct`) taken
back out of the histogram its Lua `done` callback sees, and wrk's percentile rank."""

import random

from bench.latency import correct, expected_interval, percentile, uncorrect


def test_correction_adds_the_samples_a_stalled_connection_would_have_sent():
    # interval 10: a 45 us response is followed by synthetic samples at 35, 25 and 15 (> 10)
    assert correct({5: 3, 45: 1}, 10) == {5: 3, 45: 1, 35: 1, 25: 1, 15: 1}
    assert correct({19: 2}, 10) == {19: 2}  # below twice the interval: no synthetic sample


def test_uncorrect_gives_back_the_recorded_samples():
    rng = random.Random(7)
    for _ in range(300):
        raw = {}
        for _ in range(rng.randint(1, 400)):
            value = rng.choice((rng.randint(1, 80), rng.randint(1, 5000)))
            raw[value] = raw.get(value, 0) + 1
        interval = rng.randint(1, 90)
        assert uncorrect(correct(raw, interval), interval) == raw


def test_the_tail_without_the_synthetic_samples():
    raw = {1000: 98, 50_000: 2}  # two stalls of 50 ms among 100 requests of 1 ms
    corrected = correct(raw, expected_interval(1_000_000, 100, 1))  # 10 ms per request
    assert percentile(corrected, 99) == 50_000
    assert percentile(corrected, 95) == 30_000  # among the synthetic 40, 30, 20 ms samples
    assert percentile(uncorrect(corrected, 10_000), 95) == 1000


def test_percentile_rank_is_wrk_s():
    # rank = round(p / 100 * count + 0.5): the 50th of 4 samples is the third
    assert percentile({1: 1, 2: 1, 3: 1, 4: 1}, 50) == 3
    assert percentile({7: 1}, 99) == 7
    assert percentile({}, 99) == 0


def test_expected_interval_is_wrk_s_integer_arithmetic():
    assert expected_interval(8_000_000, 1_000, 16) == 8_000_000 // 62
    assert expected_interval(1_000_000, 3, 16) == 0  # fewer requests than connections
