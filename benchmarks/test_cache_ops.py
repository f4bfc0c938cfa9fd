"""VolatileCache operations beside the caches people use today, in one run.

Groups: a hot hit (against cachetools' LRUCache and a dict), a hit on an idle
volatile entry by size (against copying the bytes), a pin of 1 MiB, an
insert, and the metadata each entry costs on the Python heap.
"""

from __future__ import annotations

import gc
import tracemalloc

import cachetools
import pytest

from volcache import VolatileCache

from .conftest import WORKING

SIZES = {"4 KiB": 4 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20}


def idle(cache):
    """A benchmark setup that makes every entry volatile (and returns no arguments)."""

    def setup():
        cache.volatilize()

    return setup


@pytest.fixture(params=WORKING)
def cache(request):
    with VolatileCache(backend=request.param, hot_bytes=16 << 20) as cache:
        yield cache


def test_hot_hit_volcache(benchmark, cache):
    benchmark.group = "hot hit"
    cache["key"] = b"v" * 100
    assert benchmark(cache.__getitem__, "key") == b"v" * 100


def test_hot_hit_volcache_bounded(benchmark, backend):
    benchmark.group = "hot hit"
    with VolatileCache(1000, backend=backend) as cache:
        cache["key"] = b"v" * 100
        assert benchmark(cache.__getitem__, "key") == b"v" * 100


def test_hot_hit_cachetools_lru(benchmark):
    benchmark.group = "hot hit"
    lru = cachetools.LRUCache(1000)
    lru["key"] = b"v" * 100
    assert benchmark(lru.__getitem__, "key") == b"v" * 100


def test_hot_hit_dict(benchmark):
    benchmark.group = "hot hit"
    plain = {"key": b"v" * 100}
    assert benchmark(plain.__getitem__, "key") == b"v" * 100


@pytest.mark.parametrize("size", list(SIZES))
def test_volatile_hit(benchmark, cache, size):
    """A hit on an idle entry: re-pin, find it intact, copy it out, make it hot."""
    benchmark.group = f"volatile hit {size}"
    value = b"v" * SIZES[size]
    cache["key"] = value
    result = benchmark.pedantic(cache.__getitem__, args=("key",), setup=idle(cache), rounds=300)
    assert result == value and cache.info().purged == 0


@pytest.mark.parametrize("size", list(SIZES))
def test_copy_of_the_same_bytes(benchmark, size):
    benchmark.group = f"volatile hit {size}"
    value = memoryview(b"v" * SIZES[size])
    benchmark(bytes, value)


def test_pin_one_mib(benchmark, cache):
    """Pin and unpin an idle 1 MiB entry: no copy."""
    benchmark.group = "volatile hit 1 MiB"
    cache["key"] = b"v" * (1 << 20)

    def pin():
        with cache.pin("key") as view:
            return view[-1]

    assert benchmark.pedantic(pin, setup=idle(cache), rounds=300) == ord("v")


def test_insert_volcache(benchmark, cache):
    benchmark.group = "insert 4 KiB"
    value = b"v" * 4096
    benchmark(cache.__setitem__, "key", value)


def test_insert_cachetools_lru(benchmark):
    benchmark.group = "insert 4 KiB"
    lru = cachetools.LRUCache(1000)
    benchmark(lru.__setitem__, "key", b"v" * 4096)


def test_metadata_bytes_per_entry(benchmark, cache):
    """Python heap per entry of 16 bytes (its bytes live in volatile memory, not here)."""
    benchmark.group = "metadata"
    n = 20_000
    values = [i.to_bytes(16, "little") for i in range(n)]
    cache.volatilize()

    def fill():
        for i, value in enumerate(values):
            cache[i] = value
        cache.volatilize()  # idle: the decoded values are dropped

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fill()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_entry = (after - before) / n
    benchmark.extra_info["python_bytes_per_entry"] = round(per_entry)
    lru = cachetools.LRUCache(n)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, value in enumerate(values):
        lru[i] = value
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    benchmark.extra_info["cachetools_lru_bytes_per_entry"] = round((after - before) / n)
    benchmark.pedantic(fill, rounds=3)
    assert per_entry < 1000
