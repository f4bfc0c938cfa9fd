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


def free_in_another_thread(lock) -> bool:
    """Whether another thread can take ``lock`` now (without waiting)."""
    result = []

    def attempt() -> None:
        taken = lock.acquire(blocking=False)
        if taken:
            lock.release()
        result.append(taken)

    worker = threading.Thread(target=attempt)
    worker.start()
    worker.join()
    return result[0]


@pytest.mark.parametrize("storing_has_callback", [False, True])
def test_a_donors_callback_runs_after_the_storing_cache_releases_its_lock(
    make, storing_has_callback
):
    """A cache evicting from another of its memory budget (the donor) does so under
    its own lock; the donor's callback waits until that lock is released."""
    budget = MemoryBudget(60_000)
    storing = make(
        memory_budget=budget, on_evict=(lambda k, r: None) if storing_has_callback else None
    )
    seen = []

    def on_evict(key, reason):
        seen.append((reason, storing._lock._is_owned(), free_in_another_thread(storing._lock)))

    donor = make(memory_budget=budget, on_evict=on_evict)
    i = 0
    while not seen and i < 5000:  # the donor fills the budget (evicting from itself)
        donor[i] = b"v"
        i += 1
    assert seen, "setup: the donor never evicted"
    seen.clear()
    for j in range(5000):  # the small cache stores: it evicts from the donor
        storing[("s", j)] = b"w"
        if seen:
            break
    assert seen, "setup: the storing cache never evicted from the donor"
    assert all(event == ("evicted", False, True) for event in seen), seen[:3]
    assert not donor._entries.events  # none left waiting


def test_a_cache_written_from_another_caches_callback_delivers_its_own_events(make):
    log_events = []
    log = make(maxsize=20, on_evict=lambda key, reason: log_events.append((key, reason)))
    first = make(maxsize=1, on_evict=lambda key, reason: log.__setitem__(key, reason.encode()))
    for i in range(2000):
        first[i] = b"v"
    # 1999 evictions logged; the log holds 20 and evicted the rest, each told at once.
    assert len(log) == 20
    assert log_events == [(i, "evicted") for i in range(1979)]
    assert not log._entries.events and not first._entries.events


def test_callbacks_of_caches_nested_three_deep_are_all_delivered(make):
    """A callback writes to a cache whose callback writes to a third: one delivery
    takes all their events, in the order their caches noted them first."""
    got = []
    third = make(maxsize=1, on_evict=lambda key, reason: got.append(("third", key)))
    second = make(maxsize=1, on_evict=lambda key, reason: third.__setitem__(key, b"x"))
    first = make(maxsize=1, on_evict=lambda key, reason: second.__setitem__(key, b"x"))
    for i in range(5):
        first[i] = b"v"
    # first evicts 0..3, second 0..2 of those, third 0..1 of those.
    assert got == [("third", 0), ("third", 1)]


def test_a_cache_a_popitem_override_spills_into_tells_its_callback_after_the_lock(make):
    """cachetools' way of watching evictions: L1's popitem stores into L2 under L1's
    lock; L2's callback runs once that lock is released."""
    calls = []
    l2 = make(2, on_evict=lambda key, reason: calls.append((key, l1._lock._is_owned())))

    class Spilling(VolatileCache):
        def popitem(self):
            key, value = super().popitem()
            l2[key] = value
            return key, value

    l1 = Spilling(1, backend=l2.backend.name)
    try:
        for i in range(5):
            l1[i] = b"v%d" % i
    finally:
        l1.close()
    assert calls == [(0, False), (1, False)]
