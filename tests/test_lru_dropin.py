"""volcache as a drop-in for functools.lru_cache: what code switching decorators relies on."""

from __future__ import annotations

import asyncio
import functools
import pickle
import threading
import time
import unittest.mock

import pytest

from volcache import cached, lru_cache
from volcache.flight import DeadlockError


def purge_everything(memoized) -> None:
    memoized.cache.volatilize()
    memoized.cache.backend.reclaim(1 << 40)


# -- cache_info() -------------------------------------------------------------------------


def test_cache_info_unpacks_and_compares_as_functools(backend_name):
    @lru_cache(maxsize=2, backend=backend_name)
    def f(x):
        return x * 10

    reference = functools.lru_cache(maxsize=2)(lambda x: x * 10)
    for x in (7, 9, 7, 9, 7, 9, 8, 8, 8, 9, 9, 9, 8, 8, 8, 7):
        assert f(x) == reference(x)
    hits, misses, maxsize, currsize = f.cache_info()
    assert (hits, misses, maxsize, currsize) == (12, 4, 2, 2)
    assert f.cache_info() == reference.cache_info() == (12, 4, 2, 2)
    assert len(f.cache_info()) == 4 and f.cache_info()._asdict() == reference.cache_info()._asdict()


def test_cache_info_has_the_purge_counts_as_attributes(backend_name):
    calls = []

    @cached(backend=backend_name)
    def blob(n):
        calls.append(n)
        return bytes([n]) * 50_000

    blob(1)
    purge_everything(blob)
    assert blob(1) == bytes([1]) * 50_000 and calls == [1, 1]
    info = blob.cache_info()
    assert (info.purged, info.regenerated) == (1, 1) and info == (0, 2, None, 1)
    assert repr(info) == (
        "CacheInfo(hits=0, misses=2, maxsize=None, currsize=1, purged=1, regenerated=1)"
    )
    copy = pickle.loads(pickle.dumps(info))
    assert copy == info and (copy.purged, copy.regenerated) == (1, 1)
    assert info._replace(hits=5).purged == 1
    assert blob.cache.info().purged == 1  # the cache's own counters, beside


def test_maxsize_as_functools_takes_it():
    @lru_cache
    def bare(x):
        return x

    assert bare(1) == 1 and bare.cache_info().maxsize == 128
    unbounded = lru_cache(maxsize=None)(lambda x: x)
    negative = lru_cache(maxsize=-10)(lambda x: x)
    zero = cached(maxsize=0)(lambda x: x)
    for f in (unbounded, negative, zero):
        assert [f(n) for n in range(3)] * 2 == [f(n) for n in range(3)] * 2
    assert unbounded.cache_info() == (3, 3, None, 3)
    assert negative.cache_info() == (0, 6, 0, 0) and zero.cache_info() == (0, 6, 0, 0)
    with pytest.raises(TypeError, match="maxsize"):
        lru_cache("128")


# -- any result is cacheable ------------------------------------------------------------------


def test_unpicklable_results_are_cached_and_survive_purges(backend_name):
    calls = []

    @cached(backend=backend_name)
    def make(name):
        calls.append(name)

        class Local:  # an instance of a local class: pickle refuses it
            pass

        if name == "bytes":
            return bytes(50_000)
        return {"lock": threading.Lock, "local": Local, "gen": lambda: (i for i in [1])}[name]()

    made = {name: make(name) for name in ("lock", "local", "gen")}
    assert make("bytes") == bytes(50_000)
    purge_everything(make)
    assert {name: make(name) for name in made} == made  # the very objects
    assert make("bytes") == bytes(50_000)  # stored bytes: purged, computed again
    assert calls == ["lock", "local", "gen", "bytes", "bytes"]
    info = make.cache_info()
    assert info == (3, 5, None, 4) and info.purged == 1 and make.cache.info().kept_entries == 3


# -- re-entry, single flight and cycles ----------------------------------------------------


def test_a_call_that_needs_itself_again_computes_it_as_lru_cache_does(backend_name):
    once = True

    @lru_cache(maxsize=10, backend=backend_name)
    def f(x):
        nonlocal once
        value = f".{x}."
        if x == 20 and once:
            once = False
            value = f(x)
        return value

    for x in range(15):
        assert f(x) == f".{x}."
    assert f(20) == ".20." and f.cache_info().currsize == 10
    assert f(20) == ".20." and f.cache_info().hits == 1


def test_other_threads_wait_for_the_outer_computation_of_a_reentrant_call():
    inside, release = threading.Event(), threading.Event()
    computed = []

    @cached(backend="sim")
    def f(x, depth=0):
        computed.append((threading.current_thread().name, depth))
        if depth == 0:
            inside.set()
            release.wait(10)
            return f(x) if len(computed) == 1 else x  # re-enters its own key
        return x

    results = []
    leader = threading.Thread(target=lambda: results.append(f(1)), name="leader")
    leader.start()
    inside.wait(10)
    others = [threading.Thread(target=lambda: results.append(f(1))) for _ in range(4)]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while f.cache_info().misses < 5 and time.monotonic() < deadline:
        time.sleep(0.001)  # each counts its miss, then waits for the leader's flight
    release.set()
    for thread in [leader, *others]:
        thread.join(10)
    assert results == [1] * 5
    assert computed == [("leader", 0), ("leader", 0)]  # the leader twice, nobody else
    assert f.cache_info() == (0, 6, None, 1)  # the re-entry was a miss too


def test_threads_hammering_one_key_compute_it_once(backend_name):
    computations = []

    @cached(backend=backend_name)
    def slow(x):
        computations.append(x)
        time.sleep(0.05)
        return bytes(10_000)

    results = []
    start = threading.Barrier(8)

    def hammer():
        start.wait(10)
        results.extend(slow(1) for _ in range(200))

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert computations == [1] and results == [bytes(10_000)] * 1600
    info = slow.cache_info()
    assert info.hits + info.misses == 1600 and info.currsize == 1


def _run_threads(*targets, seconds: float = 10) -> list:
    results: list = [None] * len(targets)

    def run(index, target):
        try:
            results[index] = target()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=item) for item in enumerate(targets)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds)
    assert not any(thread.is_alive() for thread in threads), "a wait never ended"
    return results


def test_a_cycle_across_threads_raises_instead_of_hanging():
    both_inside = threading.Barrier(2)

    @cached(backend="sim")
    def first(n):
        both_inside.wait(10)
        return second(n) + 1

    @cached(backend="sim")
    def second(n):
        both_inside.wait(10)
        return first(n) + 1

    results = _run_threads(lambda: first(1), lambda: second(1))
    assert all(isinstance(r, DeadlockError) for r in results), results
    assert "would never end" in str(results[0]) and "first" in str(results[0]) + str(results[1])
    # Nothing stuck: both compute once the cycle is gone.
    assert first.__wrapped__ is not None and first.cache_info().currsize == 0


def test_a_chain_that_is_not_a_cycle_waits():
    inside = threading.Event()

    @cached(backend="sim")
    def base(n):
        inside.set()
        time.sleep(0.1)
        return n

    @cached(backend="sim")
    def upper(n):
        inside.wait(10)
        return base(n) + 1

    assert _run_threads(lambda: base(1), lambda: upper(1), lambda: upper(1)) == [1, 2, 2]


def test_async_reentry_and_cycles():
    calls = []

    @cached(backend="sim")
    async def again(n):
        calls.append(n)
        return await again(n) if len(calls) == 1 else n * 2

    @cached(backend="sim")
    async def ping(n):
        await asyncio.sleep(0.01)
        return await pong(n)

    @cached(backend="sim")
    async def pong(n):
        await asyncio.sleep(0.01)
        return await ping(n)

    async def main():
        reentered = await again(3)
        cycle = await asyncio.gather(ping(1), pong(1), return_exceptions=True)
        return reentered, cycle

    reentered, cycle = asyncio.run(asyncio.wait_for(main(), 10))
    assert reentered == 6 and calls == [3, 3]
    assert all(isinstance(r, DeadlockError) for r in cycle), cycle


# -- one __hash__ a use -------------------------------------------------------------------------


def test_a_key_is_hashed_once_per_use(backend_name):
    @lru_cache(maxsize=1, backend=backend_name)
    def f(x, y):
        return x * 3 + y

    mock_int = unittest.mock.Mock()
    mock_int.__mul__ = unittest.mock.Mock(return_value=15)
    mock_int.__hash__ = unittest.mock.Mock(return_value=999)
    assert f(mock_int, 1) == 16 and mock_int.__hash__.call_count == 1  # a miss
    assert f.cache_info() == (0, 1, 1, 1)
    assert f(mock_int, 1) == 16 and mock_int.__hash__.call_count == 2  # a hit
    assert f(6, 2) == 20 and mock_int.__hash__.call_count == 2  # its eviction: none
    assert f(mock_int, 1) == 16 and mock_int.__hash__.call_count == 3  # a miss again
    assert f.cache_info() == (1, 3, 1, 1)


def test_a_method_argument_is_hashed_once_per_use():
    class Service:
        @cached(backend="sim")
        def lookup(self, x):
            return 1

        @cached(backend="sim", per_instance=True)
        def own(self, x):
            return 2

    service = Service()
    arg = unittest.mock.Mock()
    arg.__hash__ = unittest.mock.Mock(return_value=5)
    assert service.lookup(arg) == 1 and service.lookup(arg) == 1
    assert service.own(arg) == 2 and service.own(arg) == 2
    assert arg.__hash__.call_count == 4


@lru_cache(maxsize=8, backend="sim")
def module_square(x):
    """Squares."""
    return x * x


def test_a_decorated_function_is_a_plain_function():
    """A function call costs less than an object's ``__call__``: a decorated
    function (not a method) is a function, with lru_cache's attributes."""
    import inspect

    assert inspect.isfunction(module_square) and module_square.__wrapped__.__doc__ == "Squares."
    module_square.cache_clear()
    assert [module_square(3), module_square(3), module_square(x=4)] == [9, 9, 16]
    assert module_square.cache_info() == (1, 2, 8, 2)
    assert pickle.loads(pickle.dumps(module_square)) is module_square

    class Holder:  # placed in a class later: it binds as functools' wrappers do
        square = module_square

    holder = Holder()
    assert Holder.square(5) == 25 and holder.square.__self__ is holder
    module_square.cache_clear()


# -- the deliberate differences ------------------------------------------------------------------


def test_keyword_order_does_not_make_another_call():
    @lru_cache(maxsize=10)
    def f(**kwargs):
        return sorted(kwargs.items())

    assert f(a=1, b=2) == f(b=2, a=1) == [("a", 1), ("b", 2)]
    assert f.cache_info() == (1, 1, 10, 1)


def test_methods_are_cached_per_instance_by_identity():
    class Point:
        calls = 0

        def __init__(self, x):
            self.x = x

        def __eq__(self, other):
            return self.x == other.x

        def __hash__(self):
            return hash(self.x)

        @lru_cache(maxsize=2)
        def norm(self):
            Point.calls += 1
            return abs(self.x)

    a, b = Point(3), Point(3)
    assert a == b and a.norm() == b.norm() == 3
    assert Point.calls == 2  # equal instances are cached apart, unlike functools

    class Slotted(int):  # cannot be weakly referenced
        @lru_cache(maxsize=2)
        def twice(self):
            return self * 2

    with pytest.raises(TypeError, match="weakly referenced"):
        Slotted(1).twice()


def test_cache_parameters_has_more_keys():
    f = lru_cache(maxsize=1000, typed=True, backend="sim")(lambda: 1)
    parameters = f.cache_parameters()
    assert {k: parameters[k] for k in ("maxsize", "typed")} == {"maxsize": 1000, "typed": True}
    assert parameters["backend"] == "sim" and parameters["per_instance"] is False
