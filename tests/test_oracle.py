"""The bench's yardstick: an LRU with exactly the memory left, replaying the stream."""

from __future__ import annotations

import itertools

from volcache.bench.contestants import Contestant
from volcache.bench.oracle import DEFAULT_BASELINE, Oracle, baseline_of, oracle, replay
from volcache.bench.results import Result, Settings


def small(**options) -> Settings:
    return Settings(limit=64 << 20, duration=10.0, **options)


def test_with_room_for_everything_only_first_uses_miss():
    settings = small(competitor=0.0, fill=0.0, working_set=0.5)  # the set fits the limit
    ops = 3000
    stream = settings.workload().stream(seed=settings.seed + 1)
    distinct = len(set(itertools.islice(stream, ops)))
    assert replay(settings, ops, baseline=0) == ops - distinct


def test_less_memory_never_more_hits():
    ops = 3000
    roomy = replay(small(competitor=0.0), ops, baseline=8 << 20)
    squeezed = replay(small(competitor=0.6), ops, baseline=8 << 20)
    starved = replay(small(competitor=0.6), ops, baseline=48 << 20)
    assert roomy >= squeezed >= starved
    assert roomy > starved


def test_a_contestant_is_measured_against_as_many_lookups_as_it_made():
    settings = small()
    busy = Result(Contestant("busy", "lru"), ops=3000, hits=2000)
    slow = Result(Contestant("slow", "lru"), ops=1000, hits=600)
    idle = Result(Contestant("no cache", "none"), ops=900, hits=0, peak_rss=20 << 20)
    yardstick = oracle(settings, [busy, slow, idle])
    assert yardstick.ops == 3000 and yardstick.baseline == 20 << 20
    assert yardstick.fraction(slow) == 600 / replay(settings, 1000, 20 << 20)
    assert yardstick.fraction(busy) == 2000 / yardstick.hits
    assert yardstick.fraction(Result(Contestant("dead", "lru"))) is None


def test_the_baseline_is_the_idle_workers_peak_else_a_default():
    assert baseline_of([Result(Contestant("no cache", "none"), peak_rss=12345)]) == 12345
    assert baseline_of([Result(Contestant("x", "lru"), peak_rss=1)]) == DEFAULT_BASELINE
    assert Oracle(small(), 0, 0).hit_ratio == 0.0
