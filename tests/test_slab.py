"""The slab allocator over each backend: placement, merging, batching, purges."""

from __future__ import annotations

import errno

import pytest

from volcache import VolatileCache
from volcache.backends import get_backend
from volcache.slab import SlabAllocator, size_classes


@pytest.fixture
def slabs(backend):
    allocator = SlabAllocator(backend, slab_bytes=64 * backend.page_size)
    yield allocator
    allocator.close()


def test_size_classes_are_four_per_doubling_up_to_half_a_page():
    assert size_classes(4096)[:8] == [16, 32, 48, 64, 80, 96, 112, 128]
    assert size_classes(4096)[-1] == 2048
    assert size_classes(16384)[-1] == 8192


def test_large_entries_get_pages_of_their_own_small_ones_share(slabs):
    ps = slabs.page_size
    big, lost = slabs.allocate(ps + 1, "big")
    assert (big.npages, big.offset % ps, big.capacity, lost) == (2, 0, 2 * ps, [])
    a, _ = slabs.allocate(100, "a")
    b, _ = slabs.allocate(100, "b")
    c, _ = slabs.allocate(1000, "c")
    assert a.first == b.first and a.offset != b.offset and a.capacity == b.capacity == 112
    assert c.first != a.first  # another size class, another page
    assert slabs.stats()["wasted_bytes"] == (2 * ps - ps - 1) + 2 * 12 + 24


def test_freed_runs_merge_so_a_slab_does_not_fragment(slabs):
    """Free neighbours merge: after freeing, a run of the whole slab fits again."""
    ps = slabs.page_size
    extents = [slabs.allocate(ps * 4, i)[0] for i in range(16)]  # the whole 64-page slab
    assert slabs.stats()["slabs"] == 1
    for extent in extents[::2] + extents[1::2]:  # holes first, then the rest
        slabs.free(extent)
    assert slabs.stats()["slabs"] == 0  # empty slabs go back to the backend
    whole, _ = slabs.allocate(ps * 64, "whole")
    assert whole.first == 0 and slabs.stats()["slabs"] == 1


def test_an_entry_larger_than_a_slab_gets_a_region_of_its_own(slabs):
    ps = slabs.page_size
    huge, _ = slabs.allocate(ps * 100, "huge")
    assert huge.slab.npages == 100
    slabs.free(huge)
    assert slabs.stats()["slab_bytes"] == 0


def test_idle_pages_are_marked_in_merged_runs(slabs, backend):
    """Adjacent idle extents become volatile in one vrange call."""
    ps = slabs.page_size
    extents = [slabs.allocate(ps * 2, i)[0] for i in range(5)]
    for extent in extents:
        slabs.deactivate(extent)
    calls = backend.stats()["vrange_calls"]
    assert slabs.flush() == 10
    assert backend.stats()["vrange_calls"] == calls + 1
    assert slabs.stats()["volatile_bytes"] == 10 * ps


def test_a_small_page_goes_volatile_only_when_all_its_entries_are_idle(slabs):
    ps = slabs.page_size
    a, _ = slabs.allocate(100, "a")
    b, _ = slabs.allocate(100, "b")
    slabs.deactivate(a)
    assert slabs.flush() == 0
    slabs.deactivate(b)
    assert slabs.flush() == 1
    assert slabs.stats()["volatile_bytes"] == ps


def test_a_purge_loses_exactly_the_entries_on_purged_pages(slabs, backend):
    ps = slabs.page_size
    a, _ = slabs.allocate(100, "a")
    b, _ = slabs.allocate(100, "b")
    big, _ = slabs.allocate(3 * ps, "big")
    other, _ = slabs.allocate(2 * ps, "other")
    for extent in (a, b, big, other):
        slabs.deactivate(extent)
    slabs.flush()
    backend.reclaim(ps)  # the oldest volatile page: the small page with a and b
    assert sorted(slabs.activate(a)) == ["a", "b"]
    assert slabs.activate(big) == [] and slabs.activate(other) == []


def test_a_purged_large_extent_reports_only_itself(slabs, backend):
    ps = slabs.page_size
    first, _ = slabs.allocate(2 * ps, "first")
    second, _ = slabs.allocate(2 * ps, "second")
    slabs.deactivate(first)
    slabs.flush()
    slabs.deactivate(second)
    slabs.flush()
    backend.reclaim(ps)  # the first page of "first"
    assert slabs.activate(second) == []
    assert slabs.activate(first) == ["first"]


def test_reactivating_a_pending_extent_needs_no_vrange(slabs, backend):
    extent, _ = slabs.allocate(slabs.page_size * 4, "x")
    slabs.deactivate(extent)
    calls = backend.stats()["vrange_calls"]
    assert slabs.activate(extent) == []
    assert backend.stats()["vrange_calls"] == calls
    assert slabs.flush() == 0


def test_freed_pages_are_given_to_the_kernel_and_reused(slabs):
    ps = slabs.page_size
    slabs.allocate(ps, "keep")  # so that the slab is not emptied and given back
    gone, _ = slabs.allocate(4 * ps, "gone")
    slabs.free(gone)
    assert slabs.flush() == 4  # free pages hold nothing: volatile
    again, _ = slabs.allocate(4 * ps, "again")
    assert again.first == gone.first
    view = again.view()
    view[:] = b"\x07" * (4 * ps)
    assert view == b"\x07" * (4 * ps)
    view.release()


def test_a_failed_repin_changes_nothing_and_can_be_retried():
    """ENOMEM while re-pinning: the extent stays idle and volatile; a retry works."""
    with get_backend("sim") as sim:
        slabs = SlabAllocator(sim, slab_bytes=16 * sim.page_size)
        extent, _ = slabs.allocate(4 * sim.page_size, "x")
        view = extent.view()
        view[:] = b"\x42" * view.nbytes
        view.release()
        slabs.deactivate(extent)
        slabs.flush()
        sim.inject_fault(after=0, errno=errno.ENOMEM)
        with pytest.raises(OSError):
            slabs.activate(extent)
        assert not extent.active and slabs.stats()["volatile_bytes"] == 4 * sim.page_size
        sim.inject_fault(after=sim.page_size)  # a short count: the allocator goes on
        assert slabs.activate(extent) == []
        assert extent.active and slabs.stats()["volatile_bytes"] == 0
        view = extent.view()
        assert view == b"\x42" * view.nbytes
        view.release()
        slabs.close()


def test_a_failed_mark_stays_pending_for_the_next_flush():
    with get_backend("sim") as sim:
        slabs = SlabAllocator(sim, slab_bytes=16 * sim.page_size)
        extent, _ = slabs.allocate(4 * sim.page_size, "x")
        slabs.deactivate(extent)
        sim.inject_fault(after=sim.page_size)
        assert slabs.flush() == 1
        assert slabs.stats()["pending_bytes"] == 3 * sim.page_size
        assert slabs.flush() == 3
        assert slabs.stats()["mark_errors"] == 1
        slabs.close()


def test_a_purge_found_by_a_repin_that_then_fails_is_not_forgotten():
    """Review finding 2: the first vrange call re-pins a purged page, the second fails.

    The purge it found is reported by the next activation, so the entry is
    regenerated, never decoded from purged (poisoned) bytes.
    """
    with get_backend("sim") as sim:
        ps = sim.page_size
        cache = VolatileCache(
            backend=sim, hot_bytes=0, mark_batch=1, regenerate=lambda key: b"made again"
        )
        value = bytes(range(256)) * (3 * ps // 256)  # 3 pages
        cache["k"] = value
        cache.maintain()  # all three pages volatile
        assert sim.reclaim(ps) == ps  # the oldest: the entry's first page
        sim.inject_fault(after=ps)  # the first re-pin call: one page, found purged
        sim.inject_fault(after=0)  # the second: nothing, OSError
        with pytest.raises(OSError):
            cache["k"]
        assert cache["k"] == b"made again"
        assert cache.info().purged == 1
        cache.close()


@pytest.mark.parametrize("seed", range(0, 200, 40))
def test_random_faults_never_return_wrong_bytes(seed):
    """The sim backend's fault_rate: short counts and failures in any order, never a wrong byte."""
    wrong = 0
    for run in range(seed, seed + 40):
        sim = get_backend("sim", fault_rate=0.3, seed=run)
        ps = sim.page_size
        cache = VolatileCache(backend=sim, hot_bytes=0, mark_batch=1)
        value = b"\x42" * (8 * ps)
        try:
            cache["k"] = value
            cache.maintain()
        except OSError:
            cache.close()
            sim.close()
            continue
        sim.reclaim(2 * ps)
        for _ in range(6):
            try:
                got = cache.get("k")
            except OSError:
                continue
            wrong += got is not None and got != value
        cache.close()
        sim.close()
    assert wrong == 0
