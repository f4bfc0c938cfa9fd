"""@cached: parity with functools.lru_cache, methods, async, single flight, purges."""

from __future__ import annotations

import asyncio
import copy
import functools
import gc
import os
import pickle
import subprocess
import sys
import threading
import weakref

import pytest

from volcache import VolatileCache, cached

from .conftest import crowd, wait_child


def purge_everything(cache: VolatileCache) -> None:
    cache.volatilize()
    cache.backend.reclaim(1 << 40)


def counting(func):
    """func, recording the arguments of each real call in .calls."""
    calls = []

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return func(*args, **kwargs)

    wrapper.calls = calls
    return wrapper


# -- parity with functools.lru_cache ---------------------------------------------------------


@pytest.mark.parametrize("typed", [False, True])
def test_caches_what_lru_cache_caches(backend_name, typed):
    def square(x, scale=1):
        return x * x * scale

    ours = cached(typed=typed, backend=backend_name)(counting(square))
    theirs = functools.lru_cache(maxsize=None, typed=typed)(counting(square))
    calls = [(2,), (2,), (3,), (2,), ((3,), {"scale": 2}), ((3,), {"scale": 2})]
    if typed:
        # Untyped, lru_cache keys a lone int by itself and a float by a tuple, so
        # 2 and 2.0 miss each other (its docs allow it); cachetools keys do not.
        calls[3:3] = [(2.0,), (2.0,)]
    for call in calls:
        args, kwargs = call if isinstance(call[0], tuple) else (call, {})
        assert ours(*args, **kwargs) == theirs(*args, **kwargs)
    assert ours.__wrapped__.calls == theirs.__wrapped__.calls
    mine, reference = ours.cache_info(), theirs.cache_info()
    assert (mine.hits, mine.misses, mine.maxsize, mine.currsize) == tuple(reference)
    ours.cache_clear()
    theirs.cache_clear()
    assert ours.cache_info()[:4] == tuple(theirs.cache_info())
    assert ours(2) == 4 and len(ours.__wrapped__.calls) == len(theirs.__wrapped__.calls) + 1
    ours.cache.close()


def _agree(wrapper, hits: int, misses: int) -> None:
    mine, its = wrapper.cache_info(), wrapper.cache.info()
    assert (mine.hits, mine.misses) == (its.hits, its.misses) == (hits, misses)


def test_the_wrapper_and_its_cache_count_each_call_once(backend_name):
    """cache_info() and cache.info() agree: a miss is counted once, not again in its flight."""

    @cached(backend=backend_name)
    def double(x):
        return x * 2

    for x in range(10):
        double(x)
    for x in range(10):
        double(x)
    _agree(double, 10, 10)
    purge_everything(double.cache)
    double(0)  # found purged: one miss, regenerated
    _agree(double, 10, 11)

    class Thing:
        @cached(backend=backend_name)
        def triple(self, x):
            return x * 3

    thing = Thing()
    for x in (1, 2, 1, 1):
        thing.triple(x)
    _agree(Thing.triple, 2, 2)

    @cached(backend=backend_name)
    async def fetch(x):
        return x

    async def main():
        await asyncio.gather(*[fetch(x) for x in range(5)])
        await asyncio.gather(*[fetch(x) for x in range(5)])

    asyncio.run(main())
    _agree(fetch, 5, 5)
    for wrapper in (double, Thing.triple, fetch):
        wrapper.cache.close()


def test_waiters_of_one_flight_are_counted_once_each():
    """Threads that pile up behind one computation: each counted once, as a miss."""
    started, release = threading.Event(), threading.Event()

    @cached(backend="sim")
    def slow(x):
        started.set()
        release.wait(10)
        return x

    crowd(lambda: slow(1), 4, started, release)
    info, its = slow.cache_info(), slow.cache.info()
    assert info.hits + info.misses == 4 and (info.hits, info.misses) == (its.hits, its.misses)
    slow.cache.close()


def test_bare_and_with_options_and_lru_cache_attributes():
    @cached
    def bare(x):
        return x

    @cached(maxsize=2, backend="sim")
    def bounded(x):
        return x

    assert bare(1) == 1 and bare.__wrapped__(5) == 5 and bare.__name__ == "bare"
    assert bare.cache_parameters()["maxsize"] is None
    assert bounded.cache_parameters() == {
        "maxsize": 2,
        "typed": False,
        "per_instance": False,
        "backend": "sim",
    }
    for i in (1, 2, 3):
        bounded(i)
    assert bounded.cache_info().currsize == 2 and bounded.cache_info().maxsize == 2
    assert isinstance(bounded.cache, VolatileCache)
    assert (
        pickle.loads(pickle.dumps(test_bare_and_with_options_and_lru_cache_attributes)) is not None
    )


def test_an_existing_cache_and_a_key_function():
    cache = VolatileCache(backend="sim")

    @cached(cache, key=lambda x, _ignored: x)
    def first(x, _ignored):
        return (x, _ignored)

    assert first(1, "a") == (1, "a") and first(1, "b") == (1, "a")
    assert first.cache is cache and (1,) not in cache and 1 in cache
    with pytest.raises(TypeError, match="cache options"):
        cached(cache, maxsize=3)
    with pytest.raises(TypeError, match="key"):
        cached(key=5)
    cache.close()


def test_unhashable_arguments_are_a_typeerror():
    @cached(backend="sim")
    def f(x):
        return x

    with pytest.raises(TypeError, match="unhashable"):
        f([1, 2])
    assert f((1, 2)) == (1, 2)


def test_exceptions_are_not_cached():
    attempts = []

    @cached(backend="sim")
    def flaky(x):
        attempts.append(x)
        if len(attempts) == 1:
            raise ValueError("first time")
        return x

    with pytest.raises(ValueError, match="first time"):
        flaky(1)
    assert flaky(1) == 1 and flaky(1) == 1 and attempts == [1, 1]


def test_results_too_large_for_maxsize_are_returned_not_cached():
    @cached(maxsize=10, getsizeof=len, backend="sim")
    def blob(n):
        return b"x" * n

    assert blob(100) == b"x" * 100 and blob.cache_info().currsize == 0


# -- purges --------------------------------------------------------------------------------


def test_a_purged_result_is_computed_again_with_the_same_arguments(backend_name):
    @cached(backend=backend_name, hot_bytes=0)
    @counting
    def expensive(name, times=1):
        return name.encode() * 5000 * times

    assert expensive("ab", times=2) == b"ab" * 10000
    purge_everything(expensive.cache)
    assert expensive("ab", times=2) == b"ab" * 10000
    assert expensive.__wrapped__.calls == [(("ab",), {"times": 2})] * 2
    info = expensive.cache_info()
    assert (info.hits, info.misses, info.purged, info.regenerated) == (0, 2, 1, 1)
    assert expensive("ab", times=2) == b"ab" * 10000 and expensive.cache_info().hits == 1
    expensive.cache.close()


def test_buffer_results_are_stored_raw():
    numpy = pytest.importorskip("numpy")

    @cached(backend="sim", hot_bytes=0)
    def make(kind):
        return b"bytes" * 1000 if kind == "bytes" else numpy.arange(1000, dtype=numpy.int16)

    for kind in ("bytes", "array"):
        first = make(kind)
        with make.cache.pin((kind,)) as view:  # raw bytes can be pinned; pickles cannot
            assert bytes(view) == (first if kind == "bytes" else first.tobytes())
    again = make("array")
    assert again.dtype == numpy.int16 and (again == numpy.arange(1000)).all()


# -- methods -------------------------------------------------------------------------------


class Account:
    def __init__(self, owner):
        self.owner = owner
        self.computed = 0

    @cached(backend="sim")
    def statement(self, month):
        self.computed += 1
        return f"{self.owner}:{month}".encode()

    @cached(backend="sim", per_instance=True)
    def summary(self, year):
        self.computed += 1
        return f"{self.owner}/{year}"


@pytest.mark.parametrize("method", ["statement", "summary"])
def test_methods_cache_per_instance_and_do_not_keep_self_alive(method):
    alice, bob = Account("alice"), Account("bob")
    call = lambda who, arg: getattr(who, method)(arg)  # noqa: E731
    assert call(alice, 1) != call(bob, 1)
    assert call(alice, 1) == call(alice, 1) and alice.computed == 1 and bob.computed == 1
    wrapper = getattr(Account, method)
    before = wrapper.cache_info().currsize
    ref = __import__("weakref").ref(alice)
    del alice
    gc.collect()
    assert ref() is None  # the cache did not keep it alive
    assert wrapper.cache_info().currsize == before - 1  # and its entries went with it


@pytest.mark.parametrize("method", ["statement", "summary"])
def test_a_method_called_through_its_class_is_the_call_through_the_instance(method):
    """Account.method(obj, x) makes and finds obj.method(x)'s entry, and does not keep obj."""
    alice = Account("alice")
    wrapper = getattr(Account, method)
    before = wrapper.cache_info().currsize
    assert wrapper(alice, 1) == getattr(alice, method)(1) == wrapper(alice, 1)
    assert alice.computed == 1 and wrapper.cache_info().currsize == before + 1
    assert wrapper.cache_invalidate(alice, 1) and not getattr(alice, method).cache_invalidate(1)
    wrapper(alice, 2)
    ref = weakref.ref(alice)
    del alice
    gc.collect()
    assert ref() is None  # the cache did not keep it alive
    assert wrapper.cache_info().currsize == before  # and its entries went with it
    with pytest.raises(TypeError, match="instance"):
        wrapper()


def test_a_memoized_function_assigned_to_a_class_attribute_stays_a_function():
    @cached(backend="sim", typed=True)
    def double(x):
        return 2 * x

    class Holder:
        twice = double

    assert Holder.twice(21) == double(21) == 42 and double.cache_info().currsize == 1


def test_methods_need_weak_references():
    class Slotted:
        __slots__ = ()

        @cached(backend="sim")
        def value(self):
            return 1

    with pytest.raises(TypeError, match="__weakref__"):
        Slotted().value()


# -- single flight -------------------------------------------------------------------------


def test_threads_with_the_same_arguments_compute_once():
    started, release = threading.Event(), threading.Event()

    @cached(backend="sim")
    @counting
    def slow(x):
        started.set()
        release.wait(10)
        return x * 2

    results = []
    crowd(lambda: results.append(slow(21)), 8, started, release)
    assert results == [42] * 8 and len(slow.__wrapped__.calls) == 1


def test_an_exception_reaches_every_waiting_thread_and_is_not_cached():
    started, release = threading.Event(), threading.Event()
    attempts = []

    @cached(backend="sim")
    def failing(x):
        attempts.append(x)
        started.set()
        release.wait(10)
        if len(attempts) == 1:
            raise KeyError("gone")
        return x

    errors = []

    def call():
        try:
            failing(1)
        except KeyError as exc:
            errors.append(exc)

    crowd(call, 4, started, release)
    assert len(errors) == 4 and attempts == [1]
    assert failing(1) == 1 and attempts == [1, 1]


def test_async_functions_compute_once_for_concurrent_tasks():
    calls = []

    @cached(backend="sim")
    async def fetch(x):
        calls.append(x)
        await asyncio.sleep(0.02)
        return x.encode() * 3

    async def main():
        first = await asyncio.gather(*[fetch("a") for _ in range(10)], fetch("b"))
        return first, await fetch("a")

    results, later = asyncio.run(main())
    assert results == [b"aaa"] * 10 + [b"bbb"] and later == b"aaa"
    assert sorted(calls) == ["a", "b"] and fetch.cache_info().hits == 1


def test_async_exceptions_reach_every_task_and_are_not_cached():
    calls = []

    @cached(backend="sim")
    async def broken(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return x

    async def main():
        first = await asyncio.gather(*[broken(1) for _ in range(3)], return_exceptions=True)
        return first, await broken(1)

    first, second = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) for e in first) and second == 1 and calls == [1, 1]


def test_a_cancelled_caller_does_not_cancel_the_computation_for_the_others():
    @cached(backend="sim")
    async def slow(x):
        await asyncio.sleep(0.05)
        return x

    async def main():
        impatient = asyncio.ensure_future(slow(7))
        patient = asyncio.ensure_future(slow(7))
        await asyncio.sleep(0.01)
        impatient.cancel()
        return await patient, impatient.cancelled()

    assert asyncio.run(main()) == (7, True)
    assert slow.cache_info().currsize == 1


def test_async_methods():
    class Service:
        @cached(backend="sim")
        async def lookup(self, x):
            await asyncio.sleep(0)
            return x + 1

    service = Service()
    assert asyncio.run(service.lookup(1)) == 2
    assert asyncio.run(service.lookup(1)) == 2
    assert Service.lookup.cache_info().hits == 1


# -- what the correctness review found --------------------------------------------------------


def test_instances_dying_in_cycles_never_deadlock_a_call():
    """Review finding 1: the cyclic GC may free an instance inside any allocation,
    even one made under the wrapper's lock; its finalizer must not wait for that lock.

    A low GC threshold makes collections run inside nearly every call.
    """
    script = """
import faulthandler, gc
from volcache import cached
faulthandler.dump_traceback_later(60, exit=True)
gc.set_threshold(7)

class Node:
    def __init__(self):
        self.parent = self  # a cycle: only the cyclic GC frees it

    @cached(backend="sim")
    def value(self, x):
        return x * 2

for i in range(20_000):
    assert Node().value(i) == i * 2
    Node.value.cache_info()
print("ok")
"""
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_a_live_instance_keeps_no_arguments_past_the_caches_bound():
    """Review finding 6: the cache's bound is the bound; nothing else remembers the keys."""

    class Arg:
        def __init__(self, n):
            self.n = n

        def __hash__(self):
            return self.n

        def __eq__(self, other):
            return self.n == other.n

    class Service:
        @cached(backend="sim", maxsize=10)
        def handle(self, arg):
            return arg.n

    service = Service()
    refs = []
    for i in range(2000):
        arg = Arg(i)
        refs.append(weakref.ref(arg))
        assert service.handle(arg) == i
        del arg
    gc.collect()
    assert len(Service.handle.cache) == 10
    assert sum(ref() is not None for ref in refs) <= 10
    Service.handle.cache.close()


def test_entries_of_dead_instances_are_swept_from_the_shared_cache():
    """What dies goes: the shared cache does not keep many dead instances' entries."""

    class Thing:
        @cached(backend="sim")
        def get(self, x):
            return x

    for i in range(3000):
        assert Thing().get(i) == i  # each instance dies at once
    gc.collect()
    Thing().get(-1)  # a call drains what the finalizers queued
    assert len(Thing.get.cache) <= 2 * 64  # swept at most every 64 deaths (or a 64th)
    Thing.get.cache.close()


def test_a_fork_while_a_thread_computes_leaves_the_child_a_working_wrapper():
    """The wrapper's lock and flights, held at fork by another thread, are the child's anew."""
    started, release = threading.Event(), threading.Event()

    @cached(backend="sim")
    def slow(x):
        if x == "slow":
            started.set()
            release.wait(10)
        return x

    thread = threading.Thread(target=slow, args=("slow",))
    thread.start()
    started.wait(10)
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = 0 if slow("slow") == "slow" and slow(2) == 2 else 2
        finally:
            os._exit(status)
    release.set()
    thread.join()
    assert wait_child(pid) == 0  # None: the child hung on the wrapper's flight
    slow.cache.close()


def test_static_and_class_methods_in_either_order():
    """@cached over or under @staticmethod and @classmethod: called through the class or an
    instance, one entry per call, and cache_invalidate takes the arguments after cls."""
    from volcache import lru_cache

    made = []

    class Shape:
        @cached(backend="sim")
        @staticmethod
        def area(side: int) -> int:
            made.append(("area", side))
            return side * side

        @staticmethod
        @lru_cache
        def perimeter(side: int) -> int:
            made.append(("perimeter", side))
            return 4 * side

        @cached(backend="sim")
        @classmethod
        def named(cls, n: int) -> str:
            made.append((cls.__name__, n))
            return f"{cls.__name__}{n}"

        @classmethod
        @cached(backend="sim")
        def labelled(cls, n: int) -> str:
            made.append(("labelled", n))
            return f"<{cls.__name__}{n}>"

    class Square(Shape):
        pass

    assert Shape.area(3) == Shape().area(3) == 9
    assert Shape.perimeter(2) == Shape().perimeter(2) == 8
    assert Shape.named(1) == Shape().named(1) == "Shape1"
    assert Square.named(1) == "Square1"  # its own class: its own entry
    assert Shape.labelled(2) == Shape().labelled(2) == "<Shape2>"
    assert made == [("area", 3), ("perimeter", 2), ("Shape", 1), ("Square", 1), ("labelled", 2)]
    assert Shape.area.cache_info().hits == 1 and Shape.named.cache_info().currsize == 2
    assert Shape.area.cache_invalidate(3) and not Shape.area.cache_invalidate(3)
    assert Shape.named.cache_invalidate(1) and Square.named.cache_invalidate(1)
    assert not Shape.named.cache_invalidate(1)
    if sys.version_info < (3, 13):  # classmethod passes its class to Memoized.__get__ here
        assert Shape.labelled.cache_invalidate(2)
    Shape.named(1)
    assert made[-1] == ("Shape", 1)


def test_cache_info_fields_are_whole_numbers_as_functools_gives():
    """maxsize=1e3 is reported as 1000 (an int), and _make keeps the extra attributes."""
    from volcache.wrappers import CacheInfo

    f = cached(backend="sim", maxsize=1e3)(lambda x: x)
    f(1)
    info = f.cache_info()
    assert info.maxsize == 1000 and isinstance(info.maxsize, int)
    assert isinstance(info.currsize, int) and info == (0, 1, 1000, 1)
    made = CacheInfo._make([1, 2, None, 3])
    assert (made.purged, made.regenerated) == (0, 0) and made == (1, 2, None, 3)


def test_a_bound_memoized_method_reads_and_pickles_as_a_bound_method():
    """Its docstring and signature (without self or cls), and pickled as obj.method."""
    import inspect

    class Doc:
        @cached(backend="sim")
        @classmethod
        def make(cls, n: int) -> str:
            """Make n of them."""
            return cls.__name__ * n

    assert Doc.make.__doc__ == "Make n of them."
    assert list(inspect.signature(Doc.make).parameters) == ["n"]
    assert inspect.signature(Doc.make.__wrapped__).parameters.keys() == {"cls", "n"}
    assert Doc.make(2) == "DocDoc"
    stored = vars(Doc)["make"]  # the descriptor in the class: copied by reference
    assert copy.copy(stored) is stored and copy.deepcopy(stored) is stored
    assert copy.deepcopy(Doc.make).__self__ is Doc
    globals()["Doc"] = Doc  # picklable by name for this test
    try:
        Doc.__qualname__ = "Doc"
        again = pickle.loads(pickle.dumps(Doc.make))
        assert again(1) == "Doc" and again.__self__ is Doc
    finally:
        del globals()["Doc"]


def test_static_and_class_method_wrappers_refuse_what_cannot_work_and_stack_with_abc():
    """per_instance has no instance on a staticmethod; @abstractmethod stacks over them;
    a memoized staticmethod is callable in its class body, as a staticmethod is."""
    import abc

    with pytest.raises(TypeError, match="per_instance is for methods"):

        class Bad:
            @cached(backend="sim", per_instance=True)
            @staticmethod
            def f(x: int) -> int:
                return x

    class Base(abc.ABC):
        @abc.abstractmethod
        @cached(backend="sim")
        @classmethod
        def make(cls, n: int) -> str: ...

        @cached(backend="sim")
        @staticmethod
        def double(x: int) -> int:
            return 2 * x

        SIX = double(3)

    with pytest.raises(TypeError, match="abstract"):
        Base()
    assert Base.SIX == 6 and Base.double(4) == 8
