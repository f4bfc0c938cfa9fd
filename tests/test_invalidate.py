"""Decorated functions: cache_invalidate for one call, cache_if for which results to keep."""

from __future__ import annotations

import asyncio

import pytest

from volcache import cached, lru_cache


def test_invalidating_one_call_of_a_function():
    calls = []

    @cached(backend="sim")
    def f(x, y=0):
        calls.append((x, y))
        return x + y

    f(1), f(2), f(1, y=5)
    assert f.cache_invalidate(1) is True and f.cache_invalidate(1) is False
    assert f.cache_invalidate(1, y=5) is True
    f(1), f(2), f(1, y=5)
    assert calls == [(1, 0), (2, 0), (1, 5), (1, 0), (1, 5)]
    assert f.cache_invalidate(99) is False


def test_invalidating_one_call_of_a_method_per_instance_or_shared():
    for per_instance in (False, True):
        calls: list[tuple[int, int]] = []

        class Thing:
            log = calls

            def __init__(self, n):
                self.n = n

            @cached(backend="sim", per_instance=per_instance)
            def scaled(self, x):
                self.log.append((self.n, x))
                return self.n * x

        a, b = Thing(2), Thing(3)
        assert b.scaled.cache_invalidate(1) is False  # nothing yet
        assert a.scaled(1) == 2 and b.scaled(1) == 3
        assert a.scaled.cache_invalidate(1) is True
        assert a.scaled(1) == 2 and b.scaled(1) == 3
        assert calls == [(2, 1), (3, 1), (2, 1)], per_instance


def test_invalidating_one_call_of_an_async_function_and_of_lru_cache():
    calls = []

    @cached(backend="sim")
    async def f(x):
        calls.append(x)
        return x

    async def main():
        await f(1)
        assert f.cache_invalidate(1)
        await f(1)
        await f(1)

    asyncio.run(main())
    assert calls == [1, 1]

    @lru_cache(backend="sim", typed=True)
    def g(x):
        calls.append(("g", x))
        return x

    g(1), g(1.0)
    assert g.cache_invalidate(1) and not g.cache_invalidate(1)
    g(1.0)
    assert calls[-2:] == [("g", 1), ("g", 1.0)]


def test_cache_if_keeps_only_the_results_it_accepts():
    calls = []

    @cached(backend="sim", cache_if=lambda result: result is not None)
    def find(x):
        calls.append(x)
        return None if x < 0 else x * 10

    assert find(-1) is None and find(-1) is None and find(2) == 20 and find(2) == 20
    assert calls == [-1, -1, 2]
    info = find.cache_info()
    assert (info.hits, info.misses, info.currsize) == (1, 3, 1)


def test_cache_if_on_an_async_function():
    calls = []

    @cached(backend="sim", cache_if=lambda result: result > 0)
    async def f(x):
        calls.append(x)
        return x

    async def main():
        for x in (0, 0, 5, 5):
            await f(x)

    asyncio.run(main())
    assert calls == [0, 0, 5]


def test_a_bad_cache_if_is_refused():
    with pytest.raises(TypeError, match="cache_if"):
        cached(cache_if=3)
