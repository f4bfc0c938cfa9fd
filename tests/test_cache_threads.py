"""Threads reading, writing, pinning and regenerating while another thread reclaims.

Every value carries its own description (key, version, size) and a body
derived from it, so any value seen can be checked for a wrong byte.
"""

from __future__ import annotations

import math
import random
import struct
import threading
import time
from collections.abc import Callable

import pytest

from volcache import VolatileCache

KEYS = 24
HEADER = struct.Struct("<IIQ")


def make_value(key: int, version: int, size: int) -> bytes:
    seed = (key * 7919 + version * 104729) % 251
    body = bytes((seed + i) % 251 for i in range(min(size, 251))) * (size // 251 + 1)
    return HEADER.pack(key, version, size) + body[:size]


def check_value(key: int, value: bytes | memoryview) -> int:
    """The version of a well-formed value for ``key``; fails on any wrong byte."""
    got_key, version, size = HEADER.unpack(bytes(value[: HEADER.size]))
    assert got_key == key, f"value of key {got_key} returned for {key}"
    assert bytes(value) == make_value(key, version, size), f"corrupt value for {key}"
    return version


def regenerate(key: int) -> bytes:
    return make_value(key, 0, 100 + key * 997 % 20000)


def looping(step: Callable[[], None], stop: threading.Event,
            errors: list[BaseException]) -> threading.Thread:  # fmt: skip
    """A thread calling ``step`` until ``stop``; an exception stops every thread."""

    def run() -> None:
        try:
            while not stop.is_set():
                step()
        except BaseException as exc:
            errors.append(exc)
            stop.set()

    return threading.Thread(target=run)


def run_for(
    seconds: float,
    threads: list[threading.Thread],
    stop: threading.Event,
    errors: list[BaseException],
) -> None:
    """Start the threads, stop them after ``seconds``: none stuck, none failed."""
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not [t for t in threads if t.is_alive()], "a thread is stuck: deadlock"
    assert not errors, repr(errors[0])


def test_threads_never_see_a_wrong_byte(backend_name):
    cache = VolatileCache(
        backend=backend_name,
        regenerate=regenerate,
        hot_bytes=64 << 10,
        mark_batch=4,
        slab_bytes=1 << 20,
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"reads": 0, "writes": 0, "pins": 0, "deletes": 0}

    def worker(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)
        version = seed * 1_000_000

        def step() -> None:
            nonlocal version
            key = rng.randrange(KEYS)
            action = rng.random()
            if action < 0.45:
                check_value(key, cache[key])
                counts["reads"] += 1
            elif action < 0.75:
                version += 1
                cache[key] = make_value(key, version, rng.choice([10, 300, 5000, 70_000]))
                counts["writes"] += 1
            elif action < 0.95:
                with cache.pin(key) as view:
                    check_value(key, view)
                    time.sleep(0.0005)  # the reclaimer runs meanwhile: pinned is safe
                    check_value(key, view)
                counts["pins"] += 1
            else:
                cache.pop(key, None)
                counts["deletes"] += 1

        return step

    rng = random.Random(99)

    def reclaim() -> None:
        cache.backend.reclaim(rng.randrange(1, 64) * cache.backend.page_size)
        if rng.random() < 0.1:
            cache.volatilize()
        time.sleep(0.0002)

    threads = [looping(worker(seed), stop, errors) for seed in range(1, 6)]
    threads.append(looping(reclaim, stop, errors))
    try:
        run_for(3, threads, stop, errors)
        info = cache.info()
        assert info.pinned_entries == 0  # no lost pins
        assert info.purged > 0 and info.regenerated > 0
        assert min(counts.values()) > 0, counts
        for key in range(KEYS):  # and what is left is right
            check_value(key, cache[key])
    finally:
        stop.set()
        cache.close()


@pytest.mark.parametrize("maxsize", [math.inf, 1500], ids=["clock", "exact-lru"])
def test_many_keys_a_small_budget_and_sweeps_under_threads(backend_name, maxsize):
    """The cold index under threads: records evicted by the budget and by maxsize,
    dropped by sweeps, read back by iteration and ``in``, while a thread reclaims."""
    many = 2000
    cache = VolatileCache(
        maxsize,
        backend=backend_name,
        hot_bytes=32 << 10,
        mark_batch=4,
        slab_bytes=256 << 10,
        memory_budget=64 << 10,
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = {"reads": 0, "writes": 0, "scans": 0, "sweeps": 0}

    def worker(seed: int) -> Callable[[], None]:
        rng = random.Random(seed)
        version = seed * 1_000_000

        def step() -> None:
            nonlocal version
            key = rng.randrange(many)
            action = rng.random()
            if action < 0.4:
                value = cache.get(key)
                if value is not None:
                    check_value(key, value)
                counts["reads"] += 1
            elif action < 0.9:
                version += 1
                cache[key] = make_value(key, version, rng.choice([10, 120, 300, 3000]))
                counts["writes"] += 1
            elif action < 0.97:
                cache.pop(key, None)
                _ = key in cache
            else:
                for other in list(cache)[:50]:
                    value = cache.get(other)
                    if value is not None:
                        check_value(other, value)
                counts["scans"] += 1

        return step

    rng = random.Random(98)
    paced = {"writes": 0}

    def reclaim() -> None:
        # Paced by the writes, not by the clock: on a slow machine a timed
        # reclaimer would purge records as fast as they are written, and the
        # budget would never have to evict.
        if counts["writes"] - paced["writes"] < 20:
            time.sleep(0.001)
            return
        paced["writes"] = counts["writes"]
        cache.backend.reclaim(rng.randrange(1, 3) * cache.backend.page_size)
        if rng.random() < 0.2:
            cache.maintain()  # sweeps the records of purged pages
            counts["sweeps"] += 1

    threads = [looping(worker(seed), stop, errors) for seed in range(1, 5)]
    threads.append(looping(reclaim, stop, errors))
    try:
        run_for(3, threads, stop, errors)
        assert min(counts.values()) > 0, counts
        cache.maintain()
        info = cache.info()
        entries = cache._entries
        live = list(entries.records.listed_ids()) + [e.rid for e in entries.hot.values()]
        assert len(live) == len(cache) == entries.records.count  # no record lost or leaked
        assert info.evictions > 0 and info.currsize <= maxsize
        assert info.nonvolatile_bytes <= 64 << 10
        for key in list(cache):  # and what is left is right
            value = cache.get(key)
            if value is not None:
                check_value(key, value)
    finally:
        stop.set()
        cache.close()


class ReorderingKey:
    """A key whose hashing makes a lock-free hot hit on ``other`` (reordering the
    hot set), as another thread may while this one iterates under the lock."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cache: VolatileCache | None = None
        self.other: object = None

    def __hash__(self) -> int:
        cache, self.cache = self.cache, None  # not again while hashing for the hit
        if cache is not None:
            cache[self.other]
            self.cache = cache
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ReorderingKey) and other.name == self.name


@pytest.mark.parametrize("maxsize", [math.inf, 100])
def test_reading_the_hot_set_is_not_broken_by_lock_free_hits(backend_name, maxsize):
    """info(), iteration and copies take the hot set in one step: a hit reordering
    it meanwhile (here from a key's __hash__, deterministically) breaks nothing."""
    import copy

    with VolatileCache(maxsize, backend=backend_name, hot_seconds=None) as cache:
        keys = [ReorderingKey(f"k{i}") for i in range(4)]
        for key in keys:
            cache[key] = key.name.encode()
            cache[key], cache[key]  # hot
        assert len(cache._hot) == 4
        for key in keys:
            key.other = keys[0] if key is not keys[0] else keys[1]
            key.cache = cache  # from now on, each hashing is a hot hit on another key
        assert sorted(k.name for k in cache) == ["k0", "k1", "k2", "k3"]
        assert cache.info().hot_entries == 4
        assert sorted(cache.values()) == [b"k0", b"k1", b"k2", b"k3"]
        for key in keys:
            key.cache = None
        clone = copy.copy(cache)
        try:
            assert sorted((k.name, v) for k, v in clone.items()) == sorted(
                (k.name, k.name.encode()) for k in keys
            )
        finally:
            clone.close()
