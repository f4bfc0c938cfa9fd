"""VolatileCache on every backend: mapping semantics, entry life, pins, purges."""

from __future__ import annotations

import array
import copy
import gc
import marshal
import math
import pickle
import threading
import time
import warnings

import cachetools
import pytest

from volcache import CacheInfo, Codec, VolatileCache
from volcache.backends import get_backend
from volcache.flight import DeadlockError

from .conftest import crowd


class Clock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def stored(nbytes: int, key) -> int:
    """The bytes an entry takes in volatile memory: value, key (marshalled) and trailer."""
    return nbytes + len(marshal.dumps(key, 2)) + 12


def purge_everything(cache: VolatileCache) -> None:
    cache.volatilize()
    cache.backend.reclaim(1 << 40)


class CountingCodec(Codec):
    """Pickle, counting decodes."""

    raw = False

    def __init__(self) -> None:
        self.decodes = 0

    def encode(self, value):
        return pickle.dumps(value)

    def decode(self, data):
        self.decodes += 1
        return pickle.loads(data)


# -- mapping semantics, as cachetools -------------------------------------------------


def test_stores_and_returns_values_of_every_kind(make):
    cache = make()
    values = {
        "bytes": b"\x00\x01" * 3000,
        "bytearray": bytearray(b"abc"),
        "memoryview": memoryview(b"view"),
        "array": array.array("d", [1.5, 2.5]),
        "object": {"a": [1, 2, (3, "x")]},
        "empty": b"",
        "none": None,
    }
    for key, value in values.items():
        cache[key] = value
    cache.volatilize()
    for key, value in values.items():
        got = cache[key]
        assert got == value
        if key != "memoryview":
            assert type(got) is type(value)
    assert cache["memoryview"] == b"view" and type(cache["memoryview"]) is bytes


def test_numpy_arrays_keep_dtype_and_shape(make):
    numpy = pytest.importorskip("numpy")
    cache = make()
    value = numpy.arange(24, dtype=numpy.float32).reshape(2, 3, 4)[:, ::2]
    cache["a"] = value
    cache.volatilize()
    got = cache["a"]
    assert got.dtype == value.dtype and got.shape == value.shape
    assert (got == value).all()
    with cache.pin("a") as view:
        assert numpy.frombuffer(view, numpy.float32).tolist() == value.ravel().tolist()


def test_is_a_cachetools_cache_for_isinstance_and_cached_info(make):
    cache = make(maxsize=10)
    assert isinstance(cache, cachetools.Cache)

    @cachetools.cached(cache, info=True)
    def square(x):
        return x * x

    assert [square(i) for i in (1, 2, 1)] == [1, 4, 1]
    assert square.cache_info() == (1, 2, 10, 2)


def test_maxsize_evicts_least_recently_used(make):
    cache = make(maxsize=3)
    for key in "abc":
        cache[key] = key.encode()
    assert cache["a"] == b"a"
    cache["d"] = b"d"
    assert sorted(cache) == ["a", "c", "d"]
    assert cache.currsize == 3 and cache.info().evictions == 1


def test_getsizeof_and_value_too_large(make):
    cache = make(maxsize=10, getsizeof=len)
    cache["a"] = b"12345"
    cache["b"] = b"1234"
    assert cache.currsize == 9
    with pytest.raises(ValueError, match="too large"):
        cache["c"] = b"x" * 11
    cache["c"] = b"123"
    assert "a" not in cache and cache.currsize == 7
    with pytest.raises(ValueError, match="non-negative"):
        make(getsizeof=lambda v: -1)["k"] = b""
    assert cache.getsizeof(b"abc") == 3


def test_replacing_a_value_adjusts_size(make):
    cache = make(maxsize=10, getsizeof=len)
    cache["a"] = b"12345"
    cache["a"] = b"12"
    assert cache.currsize == 2 and cache["a"] == b"12" and len(cache) == 1


def test_missing_is_the_hook_and_get_pop_setdefault_do_not_call_it(make, backend_name):
    class Squares(VolatileCache):
        def __missing__(self, key):
            self[key] = value = key * key
            return value

    cache = Squares(backend=backend_name)
    try:
        assert cache[4] == 16 and 4 in cache
        assert cache.get(5) is None and 5 not in cache
        assert cache.pop(5, "x") == "x"
        with pytest.raises(KeyError):
            cache.pop(5)
        assert cache.setdefault(6, 7) == 7 and cache[6] == 7
    finally:
        cache.close()


def test_delete_iterate_len_clear_popitem(make):
    cache = make()
    for i in range(5):
        cache[i] = bytes([i]) * 10
    del cache[2]
    with pytest.raises(KeyError):
        del cache[2]
    assert sorted(cache) == [0, 1, 3, 4] and len(cache) == 4
    assert sorted(cache.keys()) == [0, 1, 3, 4]
    assert dict(cache.items())[3] == b"\x03" * 10
    assert cache.popitem() == (0, b"\x00" * 10)
    cache.clear()
    assert len(cache) == 0 and cache.currsize == 0
    with pytest.raises(KeyError, match="empty"):
        cache.popitem()


@pytest.mark.parametrize("maxsize", [math.inf, 3])
def test_popitem_of_an_empty_cache_raises_key_error_without_context(make, maxsize):
    """As cachetools' and MutableMapping's: ``raise KeyError(...) from None``."""
    cache = make(maxsize)
    for i in range(2):
        cache[i] = b"v"
        cache[i], cache[i]  # hot
    cache[2] = b"w"
    for _ in range(3):
        cache.popitem()
    for _ in range(2):
        with pytest.raises(KeyError) as raised:
            cache.popitem()
        assert raised.value.__suppress_context__ and raised.value.__cause__ is None


# -- entry life --------------------------------------------------------------------------


def test_a_hot_hit_does_not_decode_again(make):
    codec = CountingCodec()
    cache = make(codec=codec)
    cache["k"] = {"big": "object"}
    for _ in range(100):
        assert cache["k"] == {"big": "object"}
    # The first read copies it out of volatile memory; the second makes it hot.
    assert codec.decodes == 2 and cache.info().hot_entries == 1
    cache.volatilize()
    assert cache["k"] == {"big": "object"} and codec.decodes == 3
    assert cache.info().hot_entries == 0  # read once since it went idle
    for _ in range(100):
        assert cache["k"] == {"big": "object"}
    assert codec.decodes == 4 and cache.info().hot_entries == 1  # hot again


def test_idle_entries_leave_the_hot_set_and_become_volatile(make):
    clock = Clock()
    cache = make(hot_seconds=10, clock=clock)
    cache["a"] = b"a" * 8000  # two pages with its key
    cache["b"] = b"b" * 8000
    assert cache.info().hot_entries == 0  # a store leaves an entry idle
    assert cache["a"] == b"a" * 8000 and cache["b"] == b"b" * 8000
    assert cache.info().hot_entries == 0  # a read copies it out
    assert cache["a"] == b"a" * 8000 and cache["b"] == b"b" * 8000
    assert cache.info().hot_entries == 2 and cache.info().volatile_bytes == 0  # a second: hot
    clock.advance(5)
    assert cache["a"] == b"a" * 8000
    cache.maintain()  # "a" was used since it was placed: it stays
    clock.advance(6)
    cache.maintain()
    info = cache.info()
    assert info.hot_entries == 1 and info.volatile_bytes == 8192
    clock.advance(11)
    cache.maintain()
    assert cache.info().hot_entries == 0 and cache.info().volatile_bytes == 16384


def test_the_hot_set_is_bounded_by_bytes(make):
    cache = make(hot_bytes=3 * 4096, hot_seconds=None)
    for key in "abcde":
        cache[key] = key.encode() * 4000
        assert cache[key] == cache[key] == key.encode() * 4000  # read twice: hot
    info = cache.info()
    assert info.hot_entries == 3 and info.hot_bytes == 3 * stored(4000, "a")
    assert cache.get("a") == cache.get("a") == b"a" * 4000  # from volatile memory, hot again
    assert cache.info().hot_entries == 3 and "a" in cache._hot


def test_a_value_larger_than_the_hot_set_goes_straight_to_idle(make):
    cache = make(hot_bytes=4096)
    cache["big"] = b"x" * 100_000
    assert cache.info().hot_entries == 0
    assert cache["big"] == b"x" * 100_000


def test_volatilize_marks_everything_not_pinned(make):
    cache = make()
    cache["a"] = b"a" * 10_000
    cache["b"] = b"b" * 10_000
    with cache.pin("b"):
        marked = cache.volatilize()
        info = cache.info()
        assert info.hot_entries == 0 and marked == info.volatile_bytes == 3 * 4096
        assert info.pinned_entries == 1 and info.pinned_bytes == stored(10_000, "b")


def test_a_background_timer_makes_idle_entries_volatile():
    cache = VolatileCache(backend="sim", hot_seconds=0.05, idle_interval=0.02)
    try:
        cache["a"] = b"a" * 8000
        deadline = time.monotonic() + 10
        while cache.info().volatile_bytes < 8192 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cache.info().volatile_bytes == 8192
    finally:
        cache.close()
    assert not cache._timer.is_alive()


def test_purged_entries_are_regenerated(make):
    calls = []

    def regenerate(key):
        calls.append(key)
        return f"value of {key}".encode() * 500

    cache = make(regenerate=regenerate, hot_bytes=0)
    for key in "abc":
        cache[key] = f"value of {key}".encode() * 500  # a page each
    cache["d"] = b"small"  # on a shared page with "e"
    cache["e"] = b"small"
    purge_everything(cache)
    assert cache["b"] == b"value of b" * 500
    assert calls == ["b"]
    info = cache.info()
    assert info.purged == 1 and info.regenerated == 1 and info.regeneration_seconds > 0
    assert cache.get("c") == b"value of c" * 500  # get() regenerates a purge it finds
    assert cache["zz"] == b"value of zz" * 500  # and cache[key] an absent one
    assert cache.get("yy") is None and "yy" not in calls  # get() does not for absent keys
    # The lookup of "d" finds its page purged, and "e" with it: "e" is gone from
    # the mapping, as its key was on that page too; cache["e"] regenerates it.
    assert cache["d"] == b"value of d" * 500
    assert "e" not in cache and cache.get("e") is None
    assert cache["e"] == b"value of e" * 500


def test_purged_entries_without_regenerate_are_misses(make):
    cache = make()
    cache["a"] = b"a" * 5000
    cache["b"] = b"b" * 5000
    cache["c"] = b"c" * 5000
    purge_everything(cache)
    assert len(cache) == 3  # not known to be purged yet
    assert "a" not in cache and len(cache) == 2  # "in" re-pins to read the key back
    with pytest.raises(KeyError):
        cache["b"]
    assert "b" not in cache and len(cache) == 1
    assert cache.get("c", "gone") == "gone"
    info = cache.info()
    assert info.purged == 3 and info.misses == 2 and info.purged_bytes == 3 * stored(5000, "a")
    cache["a"] = b"new"
    assert cache["a"] == b"new"


def test_a_purge_takes_only_entries_on_purged_pages(make):
    cache = make(hot_bytes=0)
    cache["small1"] = b"1" * 100
    cache["small2"] = b"2" * 100  # on the same page as small1
    cache["large"] = b"L" * 8192
    cache.volatilize()
    cache.backend.reclaim(4096)  # the oldest volatile page: the small ones
    assert cache.get("large") == b"L" * 8192
    assert cache.get("small2") is None and cache.get("small1") is None
    assert cache.info().purged == 2


def test_hits_misses_and_sizes_in_info(make):
    cache = make(hot_bytes=0)
    cache["a"] = b"a" * 5000
    cache["a"]
    cache.get("b")
    info = cache.info()
    assert isinstance(info, CacheInfo)
    assert (info.hits, info.misses, info.entries, info.currsize) == (1, 1, 1, 1)
    assert info.stored_bytes == stored(5000, "a") and info.wasted_bytes == 8192 - stored(5000, "a")
    assert info.slab_bytes >= 8192 and info.backend == cache.backend.name
    assert info.as_dict()["hits"] == 1


# -- pins ----------------------------------------------------------------------------------


def test_pin_gives_a_zero_copy_view_valid_inside_the_block(make):
    cache = make()
    cache["a"] = b"hello" * 1000
    with cache.pin("a") as view:
        assert view.readonly and view[:5] == b"hello" and len(view) == 5000
        purge_everything(cache)  # pinned: not purged
        assert view[:5] == b"hello" and cache.info().pinned_entries == 1
    with pytest.raises(ValueError):
        view[0]
    assert cache["a"] == b"hello" * 1000


def test_pins_nest_and_count(make):
    cache = make(hot_bytes=0)
    cache["a"] = b"a" * 5000
    with cache.pin("a") as outer:
        with cache.pin("a") as inner:
            assert inner == outer
        purge_everything(cache)
        assert outer[:1] == b"a"
    purge_everything(cache)
    with pytest.raises(KeyError):
        cache["a"]


def test_an_entry_deleted_while_pinned_keeps_its_memory_until_unpinned(make):
    cache = make()
    cache["a"] = b"a" * 5000
    with cache.pin("a") as view:
        del cache["a"]
        cache["b"] = b"b" * 5000
        assert "a" not in cache and view[:3] == b"aaa"
    assert cache.info().stored_bytes == stored(5000, "b")


def test_pin_regenerates_a_purged_entry_first(make):
    cache = make(regenerate=lambda key: b"regen" * 1000)
    cache["a"] = b"orig" * 1000
    purge_everything(cache)
    with cache.pin("a") as view:
        assert view[:5] == b"regen"


def test_pin_refuses_pickled_values_and_absent_keys(make):
    cache = make()
    cache["obj"] = {"not": "a buffer"}
    with pytest.raises(TypeError, match="pickled"), cache.pin("obj"):
        pass
    with pytest.raises(KeyError), cache.pin("absent"):
        pass


def test_a_buffer_outliving_its_pin_keeps_the_entry_pinned(make):
    numpy = pytest.importorskip("numpy")
    cache = make(hot_bytes=0)
    cache["a"] = b"\x01" * 8192
    with pytest.warns(ResourceWarning, match="outlived"), cache.pin("a") as view:
        kept = numpy.frombuffer(view, numpy.uint8)
    purge_everything(cache)
    assert int(kept.sum()) == 8192  # still pinned: not purged
    del kept
    gc.collect()
    cache.maintain()
    assert cache.info().pinned_entries == 0


# -- copies, pickling, closing ---------------------------------------------------------------


def test_pickle_copy_and_deepcopy_carry_live_values_and_drop_purged(make, backend_name):
    cache = make(maxsize=100, hot_bytes=0)
    cache["a"] = b"a" * 5000
    cache["b"] = {"x": 1}
    for clone in (copy.copy(cache), copy.deepcopy(cache), pickle.loads(pickle.dumps(cache))):
        try:
            assert dict(clone.items()) == {"a": b"a" * 5000, "b": {"x": 1}}
            assert clone.maxsize == 100 and clone.backend is not cache.backend
        finally:
            clone.close()
    purge_everything(cache)
    clone = copy.copy(cache)
    try:
        assert len(clone) == 0
    finally:
        clone.close()


def test_close_releases_memory_and_refuses_use(make):
    cache = make()
    cache["a"] = b"a" * 100_000
    backend = cache.backend
    cache.close()
    assert backend.closed  # the cache made it, so the cache closes it
    for use in (
        lambda: cache["a"],
        lambda: cache.__setitem__("b", b""),
        cache.volatilize,
        cache.clear,
    ):
        with pytest.raises(ValueError, match="closed"):
            use()
    assert len(cache) == 0
    cache.close()


def test_a_backend_passed_in_is_not_closed_but_its_memory_is_given_back(backend_name):
    with get_backend(backend_name) as backend:
        with VolatileCache(backend=backend) as cache:
            cache["a"] = b"a" * 100_000
            assert backend.stats()["regions"] == 1
        assert not backend.closed and backend.stats()["regions"] == 0


# -- bad input: a clear exception, and the cache still works -------------------------------------


def test_bad_input_raises_clearly_and_changes_nothing(make):
    cache = make(maxsize=100, getsizeof=len)
    cache["ok"] = b"ok"
    with pytest.raises(TypeError, match="unhashable"):
        cache[["list"]] = b"x"
    with pytest.raises(TypeError):
        cache["no len"] = 5  # getsizeof=len fails
    plain = make()
    with pytest.raises(TypeError, match="unhashable"):
        plain[{}] = lambda: None
    assert len(plain) == 0 and plain.info().stored_bytes == 0
    assert dict(cache.items()) == {"ok": b"ok"} and cache.currsize == 2
    cache["more"] = b"more"
    assert cache["more"] == b"more"


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"maxsize": -1}, ValueError, "maxsize"),
        ({"getsizeof": 3}, TypeError, "getsizeof"),
        ({"backend": 3}, TypeError, "backend"),
        ({"backend": "nosuch"}, ValueError, "nosuch"),
        ({"regenerate": "f"}, TypeError, "regenerate"),
        ({"codec": object()}, TypeError, "codec"),
        ({"hot_bytes": -1}, ValueError, "hot_bytes"),
        ({"hot_seconds": 0}, ValueError, "hot_seconds"),
        ({"idle_interval": -1}, ValueError, "idle_interval"),
        ({"slab_bytes": 10}, ValueError, "slab_bytes"),
        ({"mark_batch": 0}, ValueError, "mark_batch"),
        ({"clock": 5}, TypeError, "clock"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, name):
    kwargs.setdefault("backend", "sim")
    with pytest.raises(error, match=name):
        VolatileCache(**kwargs)


def test_a_regenerate_that_raises_propagates_and_caches_nothing(make):
    attempts = []

    def regenerate(key):
        attempts.append(key)
        if len(attempts) == 1:
            raise RuntimeError("backend database down")
        return b"fine"

    cache = make(regenerate=regenerate)
    with pytest.raises(RuntimeError, match="database down"):
        cache["k"]
    assert "k" not in cache and cache.info().regenerated == 0
    assert cache["k"] == b"fine" and attempts == ["k", "k"]


def test_a_regenerate_returning_the_wrong_type_is_a_typeerror(make):
    async def coroutine_function(key):
        return b""

    cache = make(regenerate=coroutine_function)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never awaited" warning either
        with pytest.raises(TypeError, match="awaitable"):
            cache["k"]
    cache = make(maxsize=2, getsizeof=len, regenerate=lambda key: b"too long")
    with pytest.raises(TypeError, match="cannot store"):
        cache["k"]
    assert len(cache) == 0


def test_a_codec_that_keeps_a_view_is_refused(make):
    class Leaky(Codec):
        raw = True

        def encode(self, value):
            return value

        def decode(self, data):
            return data  # the view itself: would alias volatile memory

    cache = make(codec=Leaky(), hot_bytes=0)
    cache["a"] = b"data"
    with pytest.raises(TypeError, match="must copy"):
        cache["a"]


# -- threads -----------------------------------------------------------------------------------


def test_regeneration_is_single_flight_across_threads(make):
    calls = []
    started = threading.Event()
    release = threading.Event()

    def regenerate(key):
        calls.append(key)
        started.set()
        release.wait(10)
        return b"v" * 5000

    cache = make(regenerate=regenerate)
    results = []
    crowd(lambda: results.append(cache["k"]), 8, started, release)
    assert calls == ["k"] and results == [b"v" * 5000] * 8


def test_an_error_in_regeneration_reaches_every_waiter(make):
    started = threading.Event()
    release = threading.Event()

    def regenerate(key):
        started.set()
        release.wait(10)
        raise LookupError("no such thing")

    cache = make(regenerate=regenerate)
    errors = []

    def get():
        try:
            cache["k"]
        except LookupError as exc:
            errors.append(exc)

    crowd(get, 4, started, release)
    assert len(errors) == 4 and "k" not in cache


def test_unbounded_by_default():
    with VolatileCache(backend="sim") as cache:
        assert cache.maxsize == math.inf


def test_a_regenerate_that_needs_its_own_key_raises_and_the_cache_stays_usable(make):
    cache = make(regenerate=lambda key: cache[key] if key == "self" else key.encode())
    with pytest.raises(RuntimeError, match="a cycle"):
        cache["self"]
    assert "self" not in cache and cache["other"] == b"other"


def test_regenerates_waiting_for_each_other_across_threads_raise(backend_name):
    both_inside = threading.Barrier(2)

    def across(other):
        def regenerate(key):
            both_inside.wait(10)
            return other()[key]

        return regenerate

    first = VolatileCache(backend=backend_name, regenerate=across(lambda: second))
    second = VolatileCache(backend=backend_name, regenerate=across(lambda: first))
    errors = []

    def look(cache):
        try:
            cache["k"]
        except DeadlockError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=look, args=(c,)) for c in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    try:
        assert not any(t.is_alive() for t in threads) and len(errors) == 2
        assert "would never end" in str(errors[0])
    finally:
        first.close()
        second.close()


def test_a_backend_closed_under_the_cache_is_an_error_not_a_crash(backend_name):
    backend = get_backend(backend_name)
    cache = VolatileCache(backend=backend)
    cache["k"] = b"x" * 5000
    cache["small"] = b"y"
    backend.close()  # the cache's memory is unmapped: reading it would crash
    for look in (lambda: cache["k"], lambda: "small" in cache, lambda: cache.get("k")):
        with pytest.raises(ValueError, match=r"released|closed"):
            look()


class FailingHashKey:
    """A key whose hashing fails with RecursionError once armed, as any key with a
    Python __hash__ does near the recursion limit; counted, so that a retry loop
    that would spin for ever stops with AssertionError instead."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.armed = False
        self.failures = 0

    def __hash__(self) -> int:
        if self.armed:
            self.failures += 1
            if self.failures > 100:
                raise AssertionError("hashed again and again: a retry loop")
            raise RecursionError("maximum recursion depth exceeded")
        return hash(self.name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FailingHashKey) and other.name == self.name


@pytest.mark.parametrize("maxsize", [math.inf, 10])
def test_an_error_hashing_the_first_hot_key_is_raised_not_retried(make, maxsize):
    cache = make(maxsize, hot_seconds=None)
    key = FailingHashKey("red")
    cache[key] = b"r"
    cache[key], cache[key]  # hot: the first key of the hot set
    key.armed = True
    with pytest.raises(RecursionError):
        cache.volatilize()  # demotes the hot set from its first entry
    assert key.failures < 10
