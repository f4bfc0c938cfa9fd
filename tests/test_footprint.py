"""The cache's own memory is bounded: compact idle records, and memory_budget.

Values and keys are volatile; an idle entry's record is not (a few dozen
bytes), and the budget (an eighth of the memory limit by default) evicts the
least recently used entries past it. Under a real 128 MiB memory cgroup, many
small entries finish with every value right, where ``functools.lru_cache``
meets the OOM killer.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from volcache import VolatileCache, cached, cgroups
from volcache.backends.limits import process_limit
from volcache.bench.many_small import CONTESTANTS
from volcache.budget import default_memory_budget

from .conftest import need_backend, require

LIMIT = 128 << 20


def test_the_budget_evicts_the_least_recently_used_entries(backend_name):
    cache = VolatileCache(backend=backend_name, memory_budget=64 << 10, slab_bytes=64 << 10)
    for n in range(3000):
        cache[f"key-{n}"] = bytes([n % 251]) * 100
        assert cache["key-0"] == bytes(100)  # used all along: never the one evicted
    info = cache.info()
    assert 0 < len(cache) < 3000 and info.evictions == 3000 - len(cache)
    assert info.nonvolatile_bytes <= info.memory_budget == 64 << 10
    assert "key-1" not in cache and "key-2999" in cache and "key-0" in cache
    # Reading makes entries hot, whose objects count too: others may be evicted meanwhile.
    got = {k: cache.get(k) for k in list(cache)}
    assert all(v is None or v == bytes([int(k[4:]) % 251]) * 100 for k, v in got.items())
    assert sum(v is not None for v in got.values()) > len(got) // 2
    cache.close()


def test_with_a_maxsize_the_budget_evicts_the_least_recently_used(backend_name):
    cache = VolatileCache(10_000, backend=backend_name, memory_budget=32 << 10)
    cache["first"] = b"kept"
    for n in range(400):
        cache[f"key-{n}"] = b"x" * 50
        assert cache["first"] == b"kept"  # used all along: never the one evicted
    assert "first" in cache and "key-0" not in cache and cache.info().evictions > 0
    cache.close()


def test_the_default_budget_is_an_eighth_of_the_process_limit_and_bad_ones_are_refused():
    assert default_memory_budget() == process_limit() // 8
    cache = VolatileCache(backend="sim")
    assert cache.info().memory_budget == default_memory_budget()
    cache.close()
    for bad in (0, -1, 1.5, True, "1M"):
        with pytest.raises(ValueError, match="memory_budget"):
            VolatileCache(backend="sim", memory_budget=bad)
    wrapper = cached(backend="sim", memory_budget=1 << 20)(lambda x: x)
    assert wrapper.cache.info().memory_budget == 1 << 20
    wrapper.cache.close()


def _run(workload: str, calls: int, budget: int | None = None, contestant: str = "volcache"):
    """The bench's many-small worker, volcache's contestant by default, in a 128 MiB cgroup."""
    contestant = next(n for n in CONTESTANTS[workload] if n.startswith(contestant))
    with cgroups.MemoryCgroup(LIMIT, name="volcache-test") as group:
        argv = [sys.executable, "-m", "volcache.bench.many_small", workload, contestant,
                str(calls), str(LIMIT)]  # fmt: skip
        if budget is not None:
            argv.append(str(budget))
        run = subprocess.run(group.command(argv), capture_output=True, text=True, timeout=300)
        kills = group.oom_kills()
    lines = run.stdout.splitlines()
    return run, kills, json.loads(lines[-1]) if run.returncode == 0 else None


def test_many_small_memoized_results_finish_under_a_128_mib_limit():
    """500,000 distinct calls returning 256 B (with revisits): 0 wrong, nobody killed.

    The control: ``functools.lru_cache(maxsize=None)``, the same calls, is killed.
    """
    need_backend("kernel")
    require("kernel", cgroups.unavailable_reason())
    run, kills, result = _run("memoize", 500_000)
    assert run.returncode == 0 and kills == 0, run.stderr[-2000:]
    assert result["done"] and result["wrong"] == 0 and result["checked"] == 500_000
    assert result["memory_budget"] == LIMIT // 8
    assert result["nonvolatile_bytes"] <= LIMIT // 8
    run, kills, _ = _run("memoize", 500_000, contestant="lru_cache")
    assert run.returncode == -9 and kills >= 1


def test_many_4_kib_entries_with_str_keys_finish_under_a_128_mib_limit():
    """250,000 entries of 4 KiB (about 1 GiB of values), read back now and then: 0 wrong."""
    need_backend("kernel")
    require("kernel", cgroups.unavailable_reason())
    run, kills, result = _run("mapping", 250_000)
    assert run.returncode == 0 and kills == 0, run.stderr[-2000:]
    assert result["done"] and result["wrong"] == 0 and result["checked"] > 10_000
    assert result["hits"] > 0


def test_purged_pages_are_known_without_repinning(backend_name):
    """The contract: what a purge took is listed, and stays volatile until re-pinned."""
    from volcache.backends import NONVOLATILE, VOLATILE, get_backend

    options = {"pressure": None} if backend_name == "uffd" else {}
    with get_backend(backend_name, **options) as backend:
        ps = backend.page_size
        region = backend.allocate(8 * ps)
        region.view[:] = b"p" * region.size
        backend.vrange(region, 0, region.size, VOLATILE)
        assert backend.purged_pages(region) == ()
        assert backend.reclaim(3 * ps) == 3 * ps
        assert backend.purged_pages(region) == (0, 1, 2)
        assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1, 2)
        assert backend.purged_pages(region) == ()


def test_the_kernel_backend_sees_pages_the_kernel_dropped_on_its_own():
    """No reclaim() of ours: the page is gone from the page tables, mincore says so."""
    import mmap

    from volcache.backends import NONVOLATILE, VOLATILE, clib, get_backend

    need_backend("kernel")
    with get_backend("kernel") as backend:
        ps = backend.page_size
        region = backend.allocate(4 * ps)
        region.view[:] = b"k" * region.size
        backend.vrange(region, 0, region.size, VOLATILE)
        clib.madvise(region.address + 2 * ps, ps, mmap.MADV_DONTNEED)  # as reclaim would
        assert backend.purged_pages(region) == (2,)
        assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (2,)


def test_the_idle_work_drops_entries_whose_pages_were_purged(backend_name):
    """They leave the mapping before anyone asks, records and pages freed; a cache
    that can regenerate makes the value again when the key is asked for."""
    for regenerate in (None, lambda key: b"again"):
        cache = VolatileCache(backend=backend_name, hot_bytes=0, regenerate=regenerate)
        for n in range(64):
            cache[f"k{n}"] = bytes([n]) * 5000  # two pages each
        cache["small"] = b"s" * 100  # a shared page
        cache.volatilize()
        cache.backend.reclaim(1 << 40)
        cache.maintain()
        info = cache.info()
        assert info.purged == 65 and info.stored_bytes == 0 and len(cache) == 0
        assert info.nonvolatile_bytes == info.index_bytes < 64  # an empty index: no slab left
        if regenerate is not None:
            assert cache["k3"] == b"again"
        cache.close()
