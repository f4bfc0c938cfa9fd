"""A memoized function's miss made in one C call (``core/memo.c``): the same results,
counts and cache as the decorator's Python way, one computation per key at a time,
its errors raised and not cached."""

from __future__ import annotations

import functools
import os
import threading
import time

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from volcache import cached, coremodule

from .conftest import require


def needs_core() -> None:
    require("kernel", None if coremodule.core is not None else coremodule.WHY)


def square(x):
    if x == 13:
        raise ValueError("unlucky")
    return x * x if isinstance(x, int) else [x]


def flights_of(f):
    return f._memoized._flight._flights


calls = st.lists(
    st.one_of(st.integers(-5, 20), st.sampled_from(["a", "b", 1.0, True, None, b"x", (1, 2)])),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(calls=calls, maxsize=st.sampled_from([None, 1, 4, 16]))
def test_misses_made_in_c_are_the_python_ways(calls, maxsize):
    needs_core()
    made_in_c = cached(maxsize=maxsize, backend="sim")(square)
    # cache_if sends every miss the Python way (the reference): it stores everything.
    python_way = cached(maxsize=maxsize, backend="sim", cache_if=lambda value: True)(square)
    try:
        for x in calls:
            answers = []
            for f in (made_in_c, python_way):
                try:
                    answers.append(("ok", f(x)))
                except ValueError as exc:
                    answers.append(("raised", str(exc)))
            assert answers[0] == answers[1], (x, answers)
            assert made_in_c.cache_info() == python_way.cache_info()
            a, b = made_in_c.cache, python_way.cache
            assert list(a) == list(b) and a._counts == b._counts
            assert not flights_of(made_in_c)  # every flight ended
        assert python_way._memoized._memo_misses() == 0
    finally:
        made_in_c.cache.close()
        python_way.cache.close()


def test_a_miss_of_plain_arguments_is_made_in_c():
    needs_core()
    f = cached(backend="sim")(square)
    assert f(4) == 16 and f(4) == 16 and f((1,)) == [(1,)]  # a tuple argument: Python's
    assert f._memoized._memo_misses() == 1 and f.cache_info().misses == 2
    assert f.cache._counts["misses"] == 2
    f.cache_clear()
    assert f.cache_info().misses == 0 and f(4) == 16 and f.cache_info().misses == 1
    f.cache.close()


def test_an_error_is_raised_with_its_traceback_and_not_cached():
    needs_core()
    runs = []

    @cached(backend="sim")
    def fails(x):
        runs.append(x)
        raise KeyError(f"no {x}")

    for _ in range(2):
        with pytest.raises(KeyError, match="no 5") as caught:
            fails(5)
        assert caught.traceback[-1].name == "fails"
    assert runs == [5, 5] and len(fails.cache) == 0 and not flights_of(fails)
    assert fails.cache_info().misses == 2


def test_callers_of_a_key_being_computed_wait_for_that_computation():
    needs_core()
    entered, release = threading.Event(), threading.Event()
    runs = []

    @cached(backend="sim")
    def slow(x):
        runs.append(x)
        entered.set()
        release.wait(10)
        return x * 10

    results = []
    first = threading.Thread(target=lambda: results.append(slow(1)))
    first.start()
    assert entered.wait(10)
    (flight,) = flights_of(slow).values()  # registered by the miss made in C
    assert repr(flight.key) == f"{slow.__qualname__}(1,)" and flight.owner == first.ident
    second = threading.Thread(target=lambda: results.append(slow(1)))
    second.start()
    deadline = time.monotonic() + 10
    while flight.done is None and time.monotonic() < deadline:  # the second one waits
        time.sleep(0.001)
    assert flight.done is not None
    release.set()
    first.join(10)
    second.join(10)
    assert results == [10, 10] and runs == [1]
    assert slow.cache_info().misses == 2 and not flights_of(slow)


def test_a_call_needing_its_own_key_again_computes_it_again():
    needs_core()
    depth = []

    @cached(backend="sim")
    def again(x):
        depth.append(x)
        return again(x) + 1 if len(depth) == 1 else 1

    assert again(3) == 2 and depth == [3, 3] and again(3) == 2 and len(depth) == 2


@pytest.mark.parametrize(
    "function",
    [functools.partial(pow, 2), type("Triple", (), {"__call__": lambda self, x: 3 * x})()],
    ids=["partial", "callable object"],
)
def test_a_callable_without_a_qualname_is_memoized(function):
    f = cached(backend="sim")(function)
    assert f(5) == function(5) and f(5) == function(5)
    assert f.cache_info().hits == 1 and f.cache_info().misses == 1
    f.cache.close()


def test_a_cache_with_its_own_setitem_gets_every_result():
    needs_core()
    from volcache import VolatileCache

    seen = []

    class Logged(VolatileCache):
        def __setitem__(self, key, value):
            seen.append(key)
            super().__setitem__(key, value)

    f = cached(cache=Logged(backend="sim"))(square)
    assert f(1) == 1 and f(2) == 4 and f(1) == 1
    assert seen == [(1,), (2,)]
    f.cache.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork()")
def test_a_forked_childs_misses_share_its_own_flights():
    """After fork the decorator's flights are new: a miss made in C registers there,
    where a caller that takes the Python way looks (one computation)."""
    needs_core()
    entered, release = threading.Event(), threading.Event()

    @cached(backend="sim")
    def slow(x):
        entered.set()
        release.wait(10)
        return x

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            worker = threading.Thread(target=slow, args=(7,))
            worker.start()
            entered.wait(10)
            ok = len(flights_of(slow)) == 1  # the child's SingleFlight holds it
            release.set()
            worker.join(10)
        finally:
            os.write(write, b"1" if ok else b"0")
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
    slow.cache.close()
