"""With a finite maxsize, eviction, popitem() and iteration follow exact LRU order.

Hot entries (hit without the lock), idle ones (records only), stores,
demotions and purges all share one order of last use, the one
``cachetools.LRUCache`` keeps.
"""

from __future__ import annotations

from collections import OrderedDict

import cachetools
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from volcache import VolatileCache

KEYS = st.sampled_from("abcdefgh")
SIZES = st.sampled_from([10, 300, 5000])  # shared pages, and entries of their own


def scenario(cache: cachetools.Cache) -> tuple[list[str], str]:
    cache["a"] = b"1"
    for _ in range(3):
        cache["a"]  # used (and hot in volcache)
    cache["b"] = b"2"
    cache["c"] = b"3"
    cache["d"] = b"4"  # one too many: the least recently used ('a') goes
    return sorted(cache), cache.popitem()[0]


def test_a_store_is_more_recent_than_a_hot_entry_not_used_since(backend_name: str) -> None:
    expected = scenario(cachetools.LRUCache(3))
    assert expected == (["b", "c", "d"], "b")
    with VolatileCache(3, backend=backend_name) as cache:
        assert scenario(cache) == expected


def test_iteration_is_least_recently_used_first_across_hot_and_idle(backend_name: str) -> None:
    with VolatileCache(10, backend=backend_name, hot_seconds=None) as cache:
        for key in "abcd":
            cache[key] = key.encode()
        for _ in range(3):
            cache["b"]  # hot
        cache["e"] = b"e"
        cache["a"]  # idle, read once: touched
        cache.volatilize()  # b goes idle, in its place by its last use
        cache["c"]
        assert list(cache) == ["d", "b", "e", "a", "c"]
        assert [cache.popitem()[0] for _ in range(5)] == ["d", "b", "e", "a", "c"]


def test_a_touch_of_the_last_idle_entry_makes_it_newer_than_a_hot_one(backend_name: str) -> None:
    """The last listed record read again is stamped again: a hot hit came between."""
    with VolatileCache(4, backend=backend_name, hot_seconds=None) as cache:
        cache["a"] = b"a"
        cache["e"] = b"e"
        cache["a"], cache["a"]  # hot; "e" is now the last idle record
        cache["e"]
        assert list(cache) == ["a", "e"]
        assert cache.popitem()[0] == "a"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LRUOrder(RuleBasedStateMachine):
    """VolatileCache(4) and an OrderedDict kept in LRU order, given the same calls."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.cache = VolatileCache(
            4, backend="sim", hot_bytes=6000, hot_seconds=5, mark_batch=2, clock=self.clock
        )
        self.model: OrderedDict[str, bytes] = OrderedDict()  # least recently used first

    def teardown(self) -> None:
        self.cache.close()

    @rule(key=KEYS, size=SIZES)
    def store(self, key: str, size: int) -> None:
        value = key.encode() * size
        self.cache[key] = value
        self.model[key] = value
        self.model.move_to_end(key)
        if len(self.model) > 4:
            self.model.popitem(last=False)

    @rule(key=KEYS, times=st.integers(1, 3))
    def read(self, key: str, times: int) -> None:
        for _ in range(times):
            assert self.cache.get(key) == self.model.get(key)
            if key in self.model:
                self.model.move_to_end(key)

    @rule(seconds=st.sampled_from([1, 6]))
    def time_passes(self, seconds: int) -> None:
        self.clock.now += seconds
        self.cache.maintain()  # demotes hot entries idle too long

    @rule()
    def volatilize(self) -> None:
        self.cache.volatilize()

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        assert (key in self.cache) == (key in self.model)
        if key in self.model:
            del self.cache[key]
            del self.model[key]

    @rule()
    def popitem(self) -> None:
        if self.model:
            assert self.cache.popitem() == self.model.popitem(last=False)

    @invariant()
    def same_keys_least_recently_used_first(self) -> None:
        assert list(self.cache) == list(self.model)


LRUOrder.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestLRUOrder = LRUOrder.TestCase


class HookedKey:
    """A key that runs ``hook`` at its ``hook_in``-th hashing from now (deterministically
    where another thread could run: between a hot hit's stamp and its move)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hook_in = 0
        self.hook = None

    def __hash__(self) -> int:
        if self.hook_in:
            self.hook_in -= 1
            if self.hook_in == 0 and self.hook is not None:
                self.hook()
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HookedKey) and other.name == self.name


def test_an_eviction_during_a_hot_hit_keeps_the_entry_just_hit(backend_name: str) -> None:
    """The hit stamped its entry before it moved it to the end: the stamp decides."""
    with VolatileCache(2, backend=backend_name) as cache:
        a, b, c = HookedKey("a"), HookedKey("b"), HookedKey("c")
        cache[a] = b"A"
        cache[b] = b"B"
        cache[a], cache[b]  # both hot, "a" least recently used
        a.hook = lambda: cache.__setitem__(c, b"C")  # "another thread" stores "c"
        a.hook_in = 2  # 1: the hot set's lookup, 2: the move to the end
        assert cache[a] == b"A"
        assert sorted(k.name for k in cache) == ["a", "c"]  # as cachetools.LRUCache: "b" went
