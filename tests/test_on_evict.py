"""on_evict(key, reason): evicted, expired, purged; outside the lock; errors reported."""

from __future__ import annotations

import sys
import threading

import pytest

from volcache import MemoryBudget, VolatileCache

from .conftest import need_backend


class Events(list):
    """An on_evict that records (key, reason, whether the cache's lock was held)."""

    cache: VolatileCache | None = None

    def __call__(self, key, reason):
        held = self.cache is not None and self.cache._lock._is_owned()
        self.append((key, reason, held))


def test_an_lru_eviction_past_maxsize(make):
    events = Events()
    cache = events.cache = make(2, on_evict=events)
    cache["a"], cache["b"] = b"A", b"B"
    cache["a"]  # b is now the least recently used
    cache["c"] = b"C"
    assert events == [("b", "evicted", False)]
    del cache["a"]
    cache.pop("c")
    cache["d"] = b"D"
    cache.clear()
    assert events == [("b", "evicted", False)]  # del, pop and clear are not evictions


def test_evictions_past_the_memory_budget_name_their_keys(make):
    events = Events()
    cache = events.cache = make(memory_budget=MemoryBudget(64 << 10), on_evict=events)
    for n in range(3000):
        cache[("key", n)] = b"v" * 64
    evicted = [key for key, reason, _ in events if reason == "evicted"]
    assert cache.info().evictions == len(evicted) > 0
    assert all(not held for *_, held in events)
    assert all(key not in cache for key in evicted)
    assert len(set(evicted)) == len(evicted) and all(k[0] == "key" for k in evicted)


def test_expiries_by_lookup_by_expire_and_by_the_idle_work(make):
    now = [0.0]
    events = Events()
    cache = events.cache = make(ttl=1, timer=lambda: now[0], on_evict=events)
    for key in ("looked-up", "expired-by-call", "swept"):
        cache[key] = b"v"
    now[0] = 2
    assert cache.get("looked-up") is None
    assert cache.expire() and ("expired-by-call", "expired", False) in events
    assert ("looked-up", "expired", False) in events
    cache["fresh"] = b"v"
    cache.maintain()
    assert sorted(key for key, reason, _ in events if reason == "expired") == [
        "expired-by-call", "looked-up", "swept"
    ]  # fmt: skip
    assert all(not held for *_, held in events)


def test_a_real_purge_on_the_kernel_backend():
    need_backend("kernel")
    events = Events()
    with VolatileCache(backend="kernel", on_evict=events) as cache:
        events.cache = cache
        cache["k"] = b"v" * 8192
        cache.volatilize()
        assert cache.backend.reclaim(1 << 30) > 0  # MADV_PAGEOUT of every volatile page
        assert cache.get("k") is None
        assert events == [("k", "purged", False)]
    regenerating = Events()
    with VolatileCache(backend="kernel", on_evict=regenerating, regenerate=bytes) as cache:
        cache[100] = b"v" * 8192
        cache.volatilize()
        cache.backend.reclaim(1 << 30)
        assert cache[100] == bytes(100) and regenerating == []  # made again: not gone


def test_a_callback_that_raises_is_reported_and_the_cache_goes_on(make, monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    def on_evict(key, reason):
        raise ValueError(f"bad callback for {key}")

    cache = make(1, on_evict=on_evict)
    cache["a"] = b"A"
    cache["b"] = b"B"  # evicts a
    cache["c"] = b"C"  # evicts b
    assert [str(r.exc_value) for r in reported] == ["bad callback for a", "bad callback for b"]
    assert cache["c"] == b"C" and len(cache) == 1


def test_the_callback_may_use_the_cache_and_other_threads_meanwhile(make):
    seen, evicted = [], []
    cache = None

    def on_evict(key, reason):
        evicted.append(key)
        if len(evicted) > 1:
            return
        # Another thread takes the lock: the callback runs without it.
        worker = threading.Thread(target=lambda: seen.append(cache.get("new")))
        worker.start()
        worker.join(5)
        assert not worker.is_alive()
        cache[("again", key)] = b"x"  # the callback's own thread may use it (and evict)

    cache = make(2, on_evict=on_evict)
    cache["old"] = b"o"
    cache["new"] = b"n"
    cache["newest"] = b"N"
    assert seen == [b"n"]
    # The second, evicted by the callback's store: the other thread's get made
    # "new" more recent than "newest".
    assert evicted == ["old", "newest"]
    assert sorted(map(str, cache)) == ["('again', 'old')", "new"]


def test_a_bad_callback_is_refused(make):
    with pytest.raises(TypeError, match="on_evict"):
        make(on_evict="print")
