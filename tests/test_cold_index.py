"""The cold index on every backend: keys in volatile memory, records, shared budgets."""

from __future__ import annotations

import array
import gc
import math
from functools import partial

import pytest

from volcache import Codec, MemoryBudget, VolatileCache, cached

KEYS = [
    0,
    -7,
    2**70,
    1.5,
    "str key",
    "ключ",
    b"bytes key",
    None,
    True,
    (1, "two", (3.0, b"four")),
    frozenset({1, 2}),
    (),
]


def test_built_in_keys_go_idle_with_their_values_and_come_back(make):
    cache = make()
    for n, key in enumerate(KEYS):
        cache[key] = bytes([n]) * 300
    cache.volatilize()
    info = cache.info()
    assert info.idle_entries == len(KEYS) == len(cache) and info.hot_entries == 0
    assert sorted(map(repr, cache)) == sorted(map(repr, KEYS))  # read back from their pages
    for n, key in enumerate(KEYS):
        assert key in cache and cache[key] == bytes([n]) * 300


def test_equal_keys_of_other_types_are_one_key_as_in_a_dict(make):
    cache = make()
    cache[1] = b"one"
    cache.volatilize()
    assert cache[1.0] == b"one" and 1.0 in cache
    cache[True] = b"true"  # True == 1: replaces it
    assert len(cache) == 1 and cache[1] == b"true"
    assert list(cache) == [1]  # the key stored first stays, as in a dict


def test_keys_marshal_refuses_stay_python_objects(make):
    class Key:
        def __init__(self, n):
            self.n = n

        def __eq__(self, other):
            return isinstance(other, Key) and other.n == self.n

        def __hash__(self):
            return hash(self.n)

    class Name(str):
        pass

    cache = make(regenerate=lambda key: b"again")
    cache[Key(1)] = b"k" * 5000
    cache[Name("n")] = b"n" * 5000
    cache["plain"] = b"p" * 5000
    cache.volatilize()
    info = cache.info()
    assert info.idle_entries == 1 and len(cache) == 3  # two keys kept as objects
    assert cache[Key(1)] == b"k" * 5000 and cache[Name("n")] == b"n" * 5000
    cache.volatilize()
    cache.backend.reclaim(1 << 40)
    cache.maintain()  # the purges are found: the entries leave, objects and all
    assert len(cache) == 0 and cache.info().nonvolatile_bytes < 1024
    assert cache[Key(1)] == b"again"


def test_keys_with_one_hash_are_told_apart_and_lose_only_their_own(make):
    assert hash(-1) == hash(-2)  # CPython: -1 is reserved, so -1 hashes as -2
    cache = make(hot_bytes=0)
    cache[-1] = b"minus one" * 1000  # pages of its own
    cache[-2] = b"minus two" * 1000
    cache.volatilize()
    assert cache[-1] == b"minus one" * 1000 and cache[-2] == b"minus two" * 1000
    cache.volatilize()
    cache.backend.reclaim(cache.backend.page_size)  # the oldest volatile page: -1's first
    assert cache.get(-2) == b"minus two" * 1000
    assert cache.get(-1) is None and -2 in cache and len(cache) == 1


def test_an_idle_entry_costs_a_few_dozen_bytes_of_the_budget(make):
    cache = make()
    for n in range(20_000):
        cache[n] = b"v" * 200
    cache.volatilize()
    info = cache.info()
    assert info.idle_entries == 20_000
    # The records, buckets and books (the slabs' share included): no object per entry.
    assert info.nonvolatile_bytes == info.index_bytes < 48 * 20_000


def test_with_a_maxsize_idle_entries_leave_in_exact_lru_order(make):
    cache = make(maxsize=4, hot_bytes=0)
    for key in "abcd":
        cache[key] = key.encode() * 100
    assert cache["a"] == b"a" * 100  # idle, read: now the most recently used
    cache["e"] = b"e" * 100
    assert "b" not in cache and set(cache) == {"a", "c", "d", "e"}
    assert cache.popitem()[0] == "c"


class ShapeCodec(Codec):
    """Arrays as their bytes, decoded by a partial made per value, as a user codec might."""

    raw = True

    def __init__(self, marshallable: bool) -> None:
        self.marshallable = marshallable

    def encode(self, value):
        return value.tobytes()

    def decode(self, data):
        raise TypeError("decoded with a decoder made per value")

    def encode_with_decoder(self, value):
        # A typecode string marshals; an object() does not, so those decoders
        # get tags until the table is full, then the entries keep them.
        tag = value.typecode if self.marshallable else object()
        return memoryview(value.tobytes()), partial(_decode_array, value.typecode, tag), True


def _decode_array(typecode, tag, data):
    return array.array(typecode, bytes(data))


@pytest.mark.parametrize("marshallable", [True, False])
def test_decoders_made_per_value_keep_no_object_when_their_arguments_marshal(make, marshallable):
    cache = make(codec=ShapeCodec(marshallable))
    for n in range(1100):
        cache[n] = array.array("i", [n, n + 1])
    cache.volatilize()
    kept_as_objects = len(cache) - cache.info().idle_entries
    assert kept_as_objects == (0 if marshallable else 1100 - 1024)
    assert all(cache[n] == array.array("i", [n, n + 1]) for n in range(1100))
    with cache.pin(1099) as view:  # raw bytes, whichever way the decoder is kept
        assert bytes(view) == array.array("i", [1099, 1100]).tobytes()


def test_caches_sharing_a_budget_stay_within_it_together(backend_name):
    budget = MemoryBudget(256 << 10)
    big = VolatileCache(backend=backend_name, memory_budget=budget, slab_bytes=64 << 10)
    small = VolatileCache(backend=backend_name, memory_budget=budget, slab_bytes=64 << 10)
    try:
        for n in range(20_000):
            big[n] = b"b" * 100
        assert budget.used <= budget.limit and big.info().evictions > 0
        for n in range(2_000):
            small[n] = b"s" * 100
        # The small cache took its room from the big one, not from itself.
        assert len(small) == 2_000 and budget.used <= budget.limit
        assert big.info().nonvolatile_bytes + small.info().nonvolatile_bytes <= budget.limit
        small.close()
        assert budget.used == big.info().nonvolatile_bytes  # what it held is given back
    finally:
        big.close()
        small.close()


def test_per_instance_caches_share_one_budget(backend_name):
    class Thing:
        @cached(backend=backend_name, per_instance=True, memory_budget=512 << 10)
        def make(self, n):
            return b"x" * 100

    things = [Thing() for _ in range(8)]
    for n in range(4_000):
        for thing in things:
            assert thing.make(n) == b"x" * 100
    caches = list(Thing.make._instance_caches.values())
    budget = caches[0]._pool
    assert len(caches) == 8 and all(cache._pool is budget for cache in caches)
    assert budget.limit == 512 << 10 and budget.used <= budget.limit
    assert sum(cache.info().nonvolatile_bytes for cache in caches) <= budget.limit
    assert sum(cache.info().evictions for cache in caches) > 0
    del things, thing, caches
    gc.collect()
    Thing.make.cache_info()  # buries the dead instances' caches
    assert budget.used == 0


def test_a_budget_refuses_bad_limits_and_copies_by_limit():
    import pickle

    for bad in (0, -1, 1.5, "1M", True):
        with pytest.raises(ValueError, match="memory_budget"):
            MemoryBudget(bad)
    budget = MemoryBudget(1 << 20)
    copy = pickle.loads(pickle.dumps(budget))
    assert copy.limit == 1 << 20 and copy is not budget and copy.used == 0


def test_a_member_collected_while_its_budget_is_locked_does_not_deadlock():
    """Its finalizer may run inside any allocation, even one made under the budget's lock."""
    import threading

    budget = MemoryBudget(1 << 20)
    done = threading.Event()

    def collect_under_the_lock():
        cache = VolatileCache(backend="sim", memory_budget=budget)
        cache[1] = b"x" * 100
        cache.maintain()  # reports what it holds
        cache._entries.close()  # no close(): the cache is collected as it is
        with budget._lock:
            del cache
            gc.collect()  # its finalizer runs here
        done.set()

    worker = threading.Thread(target=collect_under_the_lock, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "the finalizer waited for the lock held around it"
    assert not budget.over and budget.used == 0  # drained at the next call


def test_a_new_entry_on_a_reused_record_id_is_not_taken_as_read_lately(backend_name):
    """Being read lately (twice makes an idle entry hot) belongs to an entry, not to
    its record id, which a later entry may get; removed entries are forgotten."""
    with VolatileCache(backend=backend_name, hot_seconds=None) as cache:
        cache["a"] = b"A"
        assert cache["a"] == b"A"  # read once: remembered
        del cache["a"]
        assert not cache._entries.seen
        cache["b"] = b"B"
        assert cache["b"] == b"B"  # its first read: idle still
        assert "b" not in cache._hot
        assert cache["b"] == b"B" and "b" in cache._hot  # the second: hot


@pytest.mark.parametrize("phase", [0, 1])
def test_hot_hits_do_the_idle_work_though_locked_uses_take_ticks_between(backend_name, phase):
    """Maintenance runs every 1024 ticks of the clock of uses: a threshold, so that
    locked uses taking every other tick cannot keep lock-free hits from it."""

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    with VolatileCache(backend=backend_name, clock=clock, hot_seconds=5) as cache:
        for key in "abc":
            cache[key] = key.encode() * 100
            cache[key], cache[key]  # hot
        clock.now = 100.0  # "c" idle for 100 s
        for _ in range(phase):
            cache.get("b")
        for _ in range(3000):
            cache["a"]  # a lock-free hot hit
            cache.get("b")  # a locked use, a tick of its own
        assert "c" not in cache._hot


@pytest.mark.parametrize("maxsize", [math.inf, 1000])
def test_hot_entries_idle_past_hot_seconds_go_idle(backend_name, maxsize):
    """With or without a maxsize (the exact order), hit after their promotion too."""

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    with VolatileCache(maxsize, backend=backend_name, clock=clock, hot_seconds=5) as cache:
        for i in range(20):
            cache[i] = b"x" * 100
            cache[i], cache[i], cache[i]  # hot, and hit again after its promotion
        cache[0]  # the last used
        for _ in range(4):  # 4 s: all are hot still
            clock.now += 1
            cache.maintain()
        assert cache.info().hot_entries == 20
        for _ in range(10):  # the idle work, once a second
            clock.now += 1
            cache.maintain()
        assert cache.info().hot_entries == 0
