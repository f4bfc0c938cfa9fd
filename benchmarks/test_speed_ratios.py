"""The speed issue's ratios, measured as alternating rounds in one test each.

These machines drift: a contestant timed a minute after another can read
twice as fast for nothing it did. Each test here alternates rounds of
volcache and of its peer (or of the floor), takes each side's median round,
and records the ratio in ``extra_info`` (``--benchmark-json`` keeps it); the
timed benchmark is the volcache side. Nothing is asserted about speed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import cachetools
import pytest

from volcache import VolatileCache, cached
from volcache.bench import speed

from .conftest import WORKING

ROUNDS = 31

pytestmark = pytest.mark.skipif("kernel" not in WORKING, reason="measured on the kernel backend")


def alternate(
    ours: Callable[[], object], theirs: Callable[[], object], calls: int,
    setup: Callable[[], object] | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Median seconds a call of each, over alternating rounds of ``calls`` calls."""
    medians = speed.alternate({"ours": ours, "theirs": theirs}, calls, ROUNDS, setup)
    return medians["ours"], medians["theirs"]


def record(benchmark, name: str, ours: float, theirs: float, peer: str) -> None:
    benchmark.extra_info.update(
        {"ours_ns": round(ours * 1e9), f"{peer}_ns": round(theirs * 1e9), "ratio": ours / theirs}
    )
    print(f"\n{name}: {ours * 1e9:,.0f} ns against {peer} {theirs * 1e9:,.0f} ns: "
          f"{ours / theirs:.2f}x")  # fmt: skip


@pytest.mark.parametrize("maxsize", [None, 1000], ids=["unbounded", "maxsize=1000"])
def test_hot_hit_against_cachetools(benchmark, maxsize):
    benchmark.group = "ratios"
    cache = VolatileCache(maxsize or float("inf"), backend="kernel")
    cache["key"] = b"v" * 100
    cache["key"], cache["key"]  # read twice: hot
    lru = cachetools.LRUCache(1000)
    lru["key"] = b"v" * 100

    def ours():
        for _ in range(100):
            cache["key"]

    def theirs():
        for _ in range(100):
            lru["key"]

    mine, its = alternate(ours, theirs, 20)
    record(benchmark, f"hot hit ({maxsize=}), per 100", mine, its, "cachetools")
    benchmark(cache.__getitem__, "key")
    cache.close()


@pytest.mark.parametrize("kind", ["hit", "miss"])
def test_decorated_call_against_cachetools(benchmark, kind):
    benchmark.group = "ratios"
    ours = cached(backend="kernel")(lambda x: x * x)
    theirs = cachetools.cached(cachetools.LRUCache(1 << 22))(lambda x: x * x)
    mine_args, their_args = itertools.count(), itertools.count()
    if kind == "hit":
        ours(12), ours(12), theirs(12)
        mine, its = alternate(lambda: ours(12), lambda: theirs(12), 2000)
    else:
        mine, its = alternate(lambda: ours(next(mine_args)), lambda: theirs(next(their_args)), 500)
    record(benchmark, f"decorated {kind}", mine, its, "cachetools")
    benchmark(ours, 12)


def test_insert_4k_against_cachetools(benchmark):
    benchmark.group = "ratios"
    value = b"v" * 4096
    cache = VolatileCache(backend="kernel")
    lru = cachetools.LRUCache(1000)
    mine, its = alternate(lambda: cache.__setitem__("key", value),
                          lambda: lru.__setitem__("key", value), 500)  # fmt: skip
    record(benchmark, "insert 4 KiB", mine, its, "cachetools")
    benchmark(cache.__setitem__, "key", value)
    cache.close()


@pytest.mark.parametrize("nbytes", [4 << 10, 64 << 10, 1 << 20], ids=["4KiB", "64KiB", "1MiB"])
def test_idle_hit_against_the_floor(benchmark, nbytes):
    """Both sides read pages given MADV_FREE just before; the floor is C checking
    the tags, copying into a new ``bytes``, checking again."""
    benchmark.group = "ratios"
    with speed.idle_read(nbytes) as idle:
        cache = idle.cache
        mine, its = alternate(lambda: cache["key"], idle.floor, 10, idle.setup)
        assert cache.info().hot_entries == 0 and cache.info().purged == 0
        record(benchmark, f"idle hit {nbytes} B", mine, its, "floor")
        benchmark.pedantic(cache.__getitem__, args=("key",), setup=idle.setup, rounds=50)
