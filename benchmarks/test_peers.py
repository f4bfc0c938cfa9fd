"""volcache beside what users would pick instead, operation by operation.

Each operation is timed for every contestant in one test, in alternating
rounds (one round of each, again and again), and each contestant's median
round is kept: these machines drift, so only numbers taken side by side are
compared. ``extra_info`` holds every contestant's nanoseconds and the ratio to
cachetools; ``-s`` prints the rows of the README's table. Nothing is asserted
about speed. A peer that is not installed is left out of its row.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import cachetools
import pytest

from volcache import VolatileCache, cached
from volcache.bench import speed
from volcache.bench.speed import bounded_caches, has

from .conftest import WORKING

ROUNDS = 15
MAXSIZE = 1000

pytestmark = pytest.mark.skipif("kernel" not in WORKING, reason="measured on the kernel backend")


def alternate(contestants: dict[str, Callable[[], object]], calls: int) -> dict[str, float]:
    """Median seconds a call of each contestant, over alternating rounds of ``calls``."""
    return speed.alternate(contestants, calls, ROUNDS)


def report(benchmark, operation: str, medians: dict[str, float]) -> None:
    base = medians["cachetools"]
    benchmark.extra_info.update({f"{name}_ns": round(t * 1e9) for name, t in medians.items()})
    benchmark.extra_info["ratio"] = medians["volcache"] / base
    cells = " | ".join(f"{name} {t * 1e9:,.0f} ns" for name, t in medians.items())
    print(f"\n{operation}: {cells}; volcache/cachetools {medians['volcache'] / base:.2f}x")


@pytest.mark.parametrize("nbytes", [256, 4096], ids=["256B", "4KiB"])
def test_insert_of_a_new_key_into_a_full_bounded_cache(benchmark, nbytes):
    benchmark.group = "peers"
    value = b"v" * nbytes
    caches = bounded_caches()
    counters = {name: itertools.count() for name in caches}
    for cache in caches.values():
        for i in range(MAXSIZE):  # full: every insert evicts
            cache[-1 - i] = value  # type: ignore[index]

    def inserting(cache, counter):
        return lambda: cache.__setitem__(next(counter), value)

    medians = alternate({n: inserting(c, counters[n]) for n, c in caches.items()}, 200)
    report(benchmark, f"insert {nbytes} B, evicting", medians)
    benchmark(inserting(caches["volcache"], counters["volcache"]))
    caches["volcache"].close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("bounded", [True, False], ids=["bounded", "unbounded"])
def test_hot_hit(benchmark, bounded):
    benchmark.group = "peers"
    if bounded:
        caches = bounded_caches()
    else:
        caches = {"volcache": VolatileCache(backend="kernel"), "cachetools": cachetools.Cache(1e18)}
        if has("cachebox"):
            import cachebox

            caches["cachebox"] = cachebox.Cache(0)  # 0: unbounded
    for cache in caches.values():
        cache["key"] = b"v" * 100  # type: ignore[index]
        cache["key"], cache["key"]  # type: ignore[index]  # read twice: hot in volcache

    def hitting(cache):
        # Subscripts, as users write them: a C mapping's bound __getitem__ is a
        # slot wrapper, slower to call than the slot, and a Python one the reverse.
        return lambda: (cache["key"], cache["key"], cache["key"], cache["key"], cache["key"])

    medians = alternate({n: hitting(c) for n, c in caches.items()}, 2000)
    medians = {n: t / 5 for n, t in medians.items()}
    report(benchmark, f"hot hit ({'bounded' if bounded else 'unbounded'})", medians)
    benchmark(caches["volcache"].__getitem__, "key")  # type: ignore[attr-defined]
    caches["volcache"].close()  # type: ignore[attr-defined]


def decorated(bounded: bool) -> dict[str, Callable[[int], int]]:
    """A memoized x * x of each kind."""
    size = MAXSIZE if bounded else None

    def square(x: int) -> int:
        return x * x

    functions: dict[str, Callable[[int], int]] = {
        "volcache": cached(maxsize=size, backend="kernel")(square),
        "cachetools": cachetools.cached(
            cachetools.LRUCache(MAXSIZE) if bounded else cachetools.Cache(1e18)
        )(square),
        "functools": functools.lru_cache(maxsize=size)(square),
    }
    if has("cachebox"):
        import cachebox

        functions["cachebox"] = cachebox.cached(
            cachebox.LRUCache(MAXSIZE) if bounded else cachebox.Cache(0)
        )(square)
    return functions


@pytest.mark.parametrize("bounded", [False, True], ids=["unbounded", "bounded"])
@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_decorated_call(benchmark, kind, bounded):
    benchmark.group = "peers"
    functions = decorated(bounded)
    if kind == "hit":
        for f in functions.values():
            f(12), f(12)
        medians = alternate({n: functools.partial(f, 12) for n, f in functions.items()}, 2000)
    else:
        counters = {n: itertools.count() for n in functions}
        medians = alternate(
            {n: (lambda f=f, c=counters[n]: f(next(c))) for n, f in functions.items()}, 300
        )
    report(benchmark, f"decorated {kind} ({'bounded' if bounded else 'unbounded'})", medians)
    benchmark(functions["volcache"], 12)
