"""Time to live: entries expire, per entry or for all, on an injected timer."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from volcache import VolatileCache, cached

from .conftest import held_by_another_thread


class Timer:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_there_until_its_ttl_then_absent(make):
    timer = Timer()
    cache = make(ttl=10, timer=timer)
    cache["a"] = b"A"
    cache["a"], cache["a"]  # hot: the lock-free hit may not skip the check
    timer.now += 9.99
    assert "a" in cache and cache["a"] == b"A" and cache.get("a") == b"A"
    timer.now += 0.01
    assert "a" not in cache and cache.get("a") is None
    with pytest.raises(KeyError):
        cache["a"]
    assert len(cache) == 0 and cache.info().stored_bytes == 0  # found expired: freed
    cache["a"] = b"again"  # stored again: a new ttl
    timer.now += 5
    assert cache["a"] == b"again"


def test_an_expired_entry_is_regenerated(make):
    timer, made = Timer(), []
    cache = make(ttl=1, timer=timer, regenerate=lambda k: made.append(k) or b"v%d" % len(made))
    assert cache[1] == b"v1"
    timer.now += 0.5
    assert cache[1] == b"v1"
    timer.now += 0.5
    assert cache[1] == b"v2" and made == [1, 1]
    assert cache.info().regenerated == 2


def test_ttl_per_entry_from_a_callable(make):
    timer = Timer()

    def ttl(key, value):
        return None if key == "forever" else len(value)

    cache = make(ttl=ttl, timer=timer)
    cache["forever"] = b"x"
    cache["short"] = b"x"
    cache["long"] = b"x" * 100
    timer.now += 1
    assert set(cache) == {"forever", "long"}
    timer.now += 99
    assert list(cache) == ["forever"]
    timer.now += 1e9
    assert "forever" in cache


def test_expire_removes_expired_entries_now_and_returns_their_keys(make):
    timer = Timer()
    cache = make(ttl=10, timer=timer)
    for n in range(50):
        cache[n] = b"v" * 5000
        timer.now += 0.1
    cache[7], cache[7]  # one of them hot
    cache.volatilize()
    assert cache.expire() == []
    timer.now = 500 + 10 + 2.45  # those stored before 502.5: 0 to 24
    assert sorted(cache.expire()) == list(range(25))
    assert len(cache) == 25 and cache.info().entries == 25
    timer.now += 100
    assert sorted(cache.expire()) == list(range(25, 50))
    assert cache.info().stored_bytes == 0 and cache.expire() == []


def test_the_idle_work_frees_expired_entries(make):
    timer = Timer()
    cache = make(ttl=1, timer=timer)
    for n in range(100):
        cache[n] = b"v" * 100
    timer.now += 2
    for _ in range(2):  # 256 records a pass: all of them in one
        cache.maintain()
    assert cache.info().entries == 0 and cache.info().stored_bytes == 0


def test_ttl_with_maxsize_evicts_and_expires(make):
    timer = Timer()
    cache = make(3, ttl=5, timer=timer)
    for n in range(5):
        cache[n] = b"v"
        timer.now += 1
    assert sorted(cache) == [2, 3, 4]  # 0 and 1 evicted by the maxsize
    timer.now += 2.5  # 2 was stored at 502: expired at 507
    assert sorted(cache) == [3, 4] and 2 not in cache


def test_bad_ttls_are_refused_and_a_failing_ttl_stores_nothing(make):
    for bad in (0, -1, "10", True):
        with pytest.raises(ValueError, match="ttl"):
            make(ttl=bad)
    with pytest.raises(TypeError, match="timer"):
        make(ttl=1, timer=5)

    def broken(key, value):
        raise RuntimeError("no ttl for you")

    cache = make(ttl=broken)
    with pytest.raises(RuntimeError):
        cache["k"] = b"v"
    assert len(cache) == 0 and "k" not in cache
    cache2 = make(ttl=lambda k, v: 1.0)
    cache2["k"] = b"v"
    assert cache2["k"] == b"v"


def test_a_decorated_function_with_ttl_and_jitter_spreads_expiries():
    timer, calls = Timer(), []

    @cached(backend="sim", ttl=100, ttl_jitter=0.2, timer=timer)
    def f(x):
        calls.append(x)
        return b"%d" % x

    for n in range(200):
        f(n)
    timer.now += 79.99  # the shortest life is 80
    assert f.cache.expire() == []
    timer.now += 10.01
    early = f.cache.expire()
    assert 0 < len(early) < 200  # spread, not all together
    timer.now += 10
    assert sorted(key for (key,) in early + f.cache.expire()) == list(range(200))
    f(3)
    assert calls.count(3) == 2


def test_jitter_is_checked():
    with pytest.raises(ValueError, match="ttl_jitter"):
        cached(ttl=1, ttl_jitter=1.0)
    with pytest.raises(ValueError, match="ttl_jitter"):
        cached(ttl=1, ttl_jitter=-0.1)


def test_an_async_function_with_ttl():
    timer, calls = Timer(), []

    @cached(backend="sim", ttl=1, timer=timer)
    async def f(x):
        calls.append(x)
        return x

    async def main():
        assert await f(1) == 1 and await f(1) == 1
        timer.now += 1
        assert await f(1) == 1

    asyncio.run(main())
    assert calls == [1, 1]


def test_a_hot_hit_with_a_ttl_takes_no_lock_until_it_expires():
    timer = Timer()
    with VolatileCache(backend="sim", ttl=5, timer=timer) as cache:
        cache["k"] = b"v"
        cache["k"], cache["k"]  # hot
        seen: list[object] = []
        with held_by_another_thread(cache._lock):
            assert cache["k"] == b"v"  # while another thread holds the lock
            timer.now += 5

            def read():
                try:
                    seen.append(cache["k"])
                except KeyError:
                    seen.append("absent")

            reader = threading.Thread(target=read)
            reader.start()
            reader.join(0.2)
            assert reader.is_alive()  # expired: this lookup waits for the lock
        reader.join(5)
        assert seen == ["absent"] and "k" not in cache


def test_expired_entries_whose_bytes_were_purged_are_dropped_as_purged():
    timer = Timer()
    with VolatileCache(backend="sim", ttl=1, timer=timer) as cache:
        for n in range(20):
            cache[n] = b"v" * 5000  # a page each: a purge takes key and value
        cache.volatilize()
        assert cache.backend.reclaim(1 << 30) > 0
        timer.now += 2
        assert cache.expire() == []  # no key to tell: they went with their pages
        info = cache.info()
        assert info.entries == 0 and info.purged == 20 and info.stored_bytes == 0
        cache["again"] = b"v"  # the emptied table takes new entries
        assert cache["again"] == b"v"


class DemotingKey:
    """Equal to 5, with 5's hash; its second hashing runs ``between`` (what another
    thread may do between a lock-free hit's two looks at the key)."""

    def __init__(self, between) -> None:
        self.hashes = 0
        self.between = between

    def __hash__(self) -> int:
        self.hashes += 1
        if self.hashes == 2:
            self.between()
        return hash(5)

    def __eq__(self, other: object) -> bool:
        return other == 5


@pytest.mark.parametrize("maxsize", [math.inf, 10])
@pytest.mark.parametrize("meanwhile", ["volatilize", "replace", "delete"])
def test_a_hot_hit_checks_the_expiry_of_the_entry_it_read(make, maxsize, meanwhile):
    """Not of whatever entry the key has when it checks (demoted or replaced meanwhile)."""
    timer = Timer()
    cache = make(maxsize, ttl=10, timer=timer, hot_seconds=None)
    cache[5] = b"v1"
    for _ in range(3):
        cache[5]  # hot: the next hit takes the lock-free way
    assert 5 in cache._hot
    timer.now += 11  # expired
    if meanwhile == "replace":  # a live value stored meanwhile is the answer
        key = DemotingKey(lambda: cache.__setitem__(5, b"v2"))
        assert cache[key] == b"v2"
        return
    between = cache.volatilize if meanwhile == "volatilize" else lambda: cache.pop(5, None)
    with pytest.raises(KeyError):
        cache[DemotingKey(between)]
    assert 5 not in cache


@pytest.mark.parametrize("maxsize", [math.inf, 10])
def test_popitem_skips_expired_entries_and_reports_them_expired(make, maxsize):
    timer = Timer()
    events = []
    cache = make(maxsize, ttl=lambda k, v: 10 if k == "old" else 100, timer=timer,
                 on_evict=lambda key, reason: events.append((key, reason)))  # fmt: skip
    cache["old"] = b"expired value"
    cache["new"] = b"live value"
    timer.now += 12  # "old" expired at +10
    assert cache.popitem() == ("new", b"live value")
    assert events == [("old", "expired")]
    with pytest.raises(KeyError):
        cache.popitem()


def test_eviction_past_maxsize_expires_what_is_expired_instead(make):
    timer = Timer()
    events = []
    cache = make(2, ttl=lambda k, v: 1 if k == "a" else 100, timer=timer,
                 on_evict=lambda key, reason: events.append((key, reason)))  # fmt: skip
    cache["a"] = b"1"
    cache["b"] = b"2"
    timer.now += 2
    cache["c"] = b"3"
    assert sorted(cache) == ["b", "c"] and events == [("a", "expired")]


class SharedTimer(Timer):
    """Pickled as a reference to the one below, so that a copy's clock is this one."""

    def __reduce__(self) -> str:
        return "SHARED_TIMER"


SHARED_TIMER = SharedTimer()


def session_ttl(key: str, value: object) -> float | None:
    return None if key == "forever" else 20


@pytest.mark.parametrize("how", ["copy", "pickle"])
def test_a_copy_keeps_what_is_left_of_each_lifetime_and_no_expired_entry(make, how):
    import copy
    import pickle

    timer = SHARED_TIMER
    timer.now = 500.0
    cache = make(ttl=session_ttl, timer=timer)
    cache["session"] = b"stale token"
    timer.now += 15
    cache["fresh"] = b"new token"
    cache["forever"] = b"kept"
    cache["fresh"], cache["fresh"]  # hot: copied from the hot set too
    timer.now += 10  # "session" expired 5 s ago; "fresh" has 10 s left
    clone = copy.copy(cache) if how == "copy" else pickle.loads(pickle.dumps(cache))
    try:
        assert sorted(clone) == ["forever", "fresh"]
        timer.now += 9.9
        assert clone["fresh"] == b"new token"
        timer.now += 0.2  # past its original expiry, not a fresh TTL's
        assert "fresh" not in clone and clone["forever"] == b"kept"
    finally:
        clone.close()


def test_a_lookup_of_an_expired_hot_entry_is_one_miss_and_no_hit(make):
    timer = Timer()
    cache = make(ttl=10, timer=timer)
    cache["k"] = b"v"
    cache["k"], cache["k"], cache["k"]  # hot
    before = cache.info()
    timer.now += 20
    with pytest.raises(KeyError):
        cache["k"]
    after = cache.info()
    assert (after.hits - before.hits, after.misses - before.misses) == (0, 1)


@pytest.mark.parametrize("per_entry", [False, True], ids=["seconds", "callable"])
def test_past_maxsize_every_expired_entry_goes_before_a_live_one(make, per_entry):
    """Not only the least recently used: an entry used lately may have expired first
    (as cachetools' TTLCache, which expires everything before it evicts)."""
    import cachetools

    def scenario(cache, timer):
        cache["a"] = 1
        timer.now += 5
        cache["b"] = 2
        timer.now += 1
        cache["a"]  # used: the least recently used is "b", but "a" expires first
        timer.now += 5  # "a" expired (at +10), "b" lives until +15
        cache["c"] = 3
        return sorted(cache)

    model_timer = Timer()
    expected = scenario(cachetools.TTLCache(2, 10, timer=model_timer), model_timer)
    timer = Timer()
    events = []
    ttl = (lambda k, v: 10) if per_entry else 10
    cache = make(2, ttl=ttl, timer=timer, on_evict=lambda k, r: events.append((k, r)))
    assert scenario(cache, timer) == expected == ["b", "c"]
    assert events == [("a", "expired")]


def test_the_expiry_order_is_soonest_first_through_pushes_and_pops():
    import random

    from volcache.expiry import ExpiryHeap

    rng = random.Random(3)
    heap, model = ExpiryHeap(), []
    for step in range(5000):
        if model and rng.random() < 0.4:
            popped = heap.pop()
            assert popped[0] == min(model)[0]  # the soonest time (ties in any order)
            model.remove(popped)
        else:
            pair = (float(rng.randrange(1000)), step)
            heap.push(*pair)
            model.append(pair)
        assert heap.soonest() == (min(model)[0] if model else math.inf)
    heap.rebuild(model[:10])
    assert [heap.pop() for _ in range(len(heap))] == sorted(model[:10])


def test_expiry_times_older_than_an_emptied_table_are_passed_over(make):
    """The last entries deleted while pinned leave their times in the heap; the
    table empties (and is made anew); later evictions and popitem() skip them."""
    timer = Timer()
    cache = make(1000, ttl=lambda key, value: 10 if isinstance(key, str) else None, timer=timer)
    for i in range(70):
        cache[i] = b"x" * 32  # the table grows past its first 64 ids
    cache["a"] = b"a" * 32
    cache["b"] = b"b" * 32
    for i in range(70):
        del cache[i]
    del cache["a"]
    with cache.pin("b"):
        del cache["b"]  # none left while pinned
    cache["new"] = b"y" * 32
    timer.now += 20
    with pytest.raises(KeyError):
        cache.popitem()  # "new" expired: nothing to pop
    cache["again"] = b"z"
    assert list(cache) == ["again"]
