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
from volcache.backends import NONVOLATILE, VOLATILE, clib, get_backend
from volcache.backends.kernel import TAG

from .conftest import WORKING

SIZES = {"4 KiB": 4 << 10, "64 KiB": 64 << 10, "1 MiB": 1 << 20}


@pytest.fixture(autouse=True, scope="module")
def _large_allocations_alike():
    # glibc serves large blocks with mmap until the first one is freed, then
    # raises its threshold and serves them from the heap, already faulted in:
    # without this, whichever benchmark of a 1 MiB value runs first pays
    # 256 page faults a round more than the others.
    block = bytes(8 << 20)
    del block


def idle(cache):
    """A benchmark setup that makes every entry volatile (and returns no arguments)."""

    def setup():
        cache.volatilize()

    return setup


def marked_afresh(cache, key):
    """A setup that re-pins an entry and marks it volatile again: its pages were
    given MADV_FREE just before the timed read, as the floor's are."""

    def setup():
        with cache.pin(key):
            pass
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


def test_hot_hit_volcache_with_ttl(benchmark, backend):
    """With a TTL every hit takes the lock and checks the time."""
    benchmark.group = "hot hit"
    with VolatileCache(backend=backend, ttl=3600) as cache:
        cache["key"] = b"v" * 100
        assert benchmark(cache.__getitem__, "key") == b"v" * 100


def test_hot_hit_cachetools_ttl(benchmark):
    benchmark.group = "hot hit"
    ttl = cachetools.TTLCache(1000, 3600)
    ttl["key"] = b"v" * 100
    assert benchmark(ttl.__getitem__, "key") == b"v" * 100


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
    """A hit on an idle entry: read it out of volatile memory without re-pinning."""
    benchmark.group = f"volatile hit {size}"
    value = b"v" * SIZES[size]
    cache["key"] = value
    setup = marked_afresh(cache, "key")
    result = benchmark.pedantic(cache.__getitem__, args=("key",), setup=setup, rounds=300)
    assert result == value and cache.info().purged == 0 and cache.info().hot_entries == 0


@pytest.mark.parametrize("size", list(SIZES))
def test_volatile_hit_floor(benchmark, size):
    """The floor of a volatile hit, in C: check the pages' tags, copy the bytes into
    a new ``bytes``, check the tags again, on pages given MADV_FREE just before."""
    benchmark.group = f"volatile hit {size}"
    if "kernel" not in WORKING:
        pytest.skip("the floor is measured on the kernel backend, unavailable here")
    nbytes = SIZES[size]
    with get_backend("kernel") as backend:
        region = backend.allocate(nbytes)
        region.view[:] = b"v" * nbytes

        def setup():
            backend.vrange(region, 0, nbytes, NONVOLATILE)
            backend.vrange(region, 0, nbytes, VOLATILE)

        def floor():
            into = bytes(nbytes)
            return clib.floor_read(region.address, nbytes, backend.page_size, TAG, into), into

        lost, data = benchmark.pedantic(floor, setup=setup, rounds=300)
        ps = backend.page_size
        assert lost == 0  # and the bytes, but for the tag standing in each page's first word:
        assert all(data[p + 8 : p + ps] == b"v" * (ps - 8) for p in range(0, nbytes, ps))


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
