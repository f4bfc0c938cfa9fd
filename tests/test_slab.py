"""The slab allocator over each backend: placement, merging, batching, purges."""

from __future__ import annotations

import errno

import pytest

from volcache import VolatileCache
from volcache.backends import get_backend
from volcache.slab import SlabAllocator, offset_of, size_classes


@pytest.fixture
def slabs(backend):
    allocator = SlabAllocator(backend, slab_bytes=64 * backend.page_size)
    yield allocator
    allocator.close()


class Placed:
    """An allocation as the cache keeps it: its id, loc and length."""

    def __init__(self, slabs: SlabAllocator, nbytes: int, ident: int) -> None:
        self.slabs, self.nbytes, self.ident = slabs, nbytes, ident
        self.loc, self.lost = slabs.allocate(nbytes, ident)

    @property
    def page(self) -> tuple[int, int]:
        return self.slabs.page_of(self.loc)

    def deactivate(self) -> None:
        self.slabs.deactivate(self.loc, self.nbytes)

    def activate(self) -> list[int]:
        return self.slabs.activate(self.loc, self.nbytes)

    def free(self, active: bool = True) -> None:
        self.slabs.free(self.loc, self.nbytes, self.ident, active)

    def view(self) -> memoryview:
        return self.slabs.view(self.loc, self.nbytes)


def test_size_classes_are_four_per_doubling_from_a_64th_to_half_a_page():
    assert size_classes(4096)[:5] == [64, 80, 96, 112, 128]
    assert size_classes(4096)[-1] == 2048
    assert size_classes(16384)[0] == 256 and size_classes(16384)[-1] == 8192


def test_large_entries_get_pages_of_their_own_small_ones_share(slabs):
    ps = slabs.page_size
    big = Placed(slabs, ps + 1, 0)
    assert offset_of(big.loc) % ps == 0 and big.lost == []
    a, b, c = Placed(slabs, 100, 1), Placed(slabs, 100, 2), Placed(slabs, 1000, 3)
    assert a.page == b.page and a.loc != b.loc and b.loc - a.loc == 112
    assert c.page != a.page  # another size class, another page
    assert slabs.stats()["wasted_bytes"] == (2 * ps - ps - 1) + 2 * 12 + 24


def test_a_shared_page_reuses_freed_slots_and_is_given_back_when_empty(slabs):
    ps = slabs.page_size
    placed = [Placed(slabs, 64, i) for i in range(64)]  # one full page of 64-byte slots
    assert len({p.page for p in placed}) == 1
    assert Placed(slabs, 64, 64).page != placed[0].page  # full: a new page
    placed[10].free()
    placed[40].free()
    again = Placed(slabs, 60, 65)
    assert again.loc == placed[10].loc  # the lowest free slot of the newest page with one
    for p in placed[:10] + placed[11:40] + placed[41:] + [again]:
        p.free()
    stats = slabs.stats()
    assert stats["used_bytes"] == ps and stats["stored_bytes"] == 64  # only id 64's page


def test_freed_runs_merge_so_a_slab_does_not_fragment(slabs):
    """Free neighbours merge: after freeing, a run of the whole slab fits again."""
    ps = slabs.page_size
    placed = [Placed(slabs, ps * 4, i) for i in range(16)]  # the whole 64-page slab
    assert slabs.stats()["slabs"] == 1
    for p in placed[::2] + placed[1::2]:  # holes first, then the rest
        p.free()
    assert slabs.stats()["slabs"] == 0  # empty slabs go back to the backend
    whole = Placed(slabs, ps * 64, 99)
    assert offset_of(whole.loc) == 0 and slabs.stats()["slabs"] == 1


def test_an_entry_larger_than_a_slab_gets_a_region_of_its_own(slabs):
    ps = slabs.page_size
    huge = Placed(slabs, ps * 100, 0)
    assert slabs.stats()["slab_bytes"] == 100 * ps
    huge.free()
    assert slabs.stats()["slab_bytes"] == 0


def test_idle_pages_are_marked_in_merged_runs(slabs, backend):
    """Adjacent idle entries become volatile in one vrange call."""
    ps = slabs.page_size
    placed = [Placed(slabs, ps * 2, i) for i in range(5)]
    for p in placed:
        p.deactivate()
    calls = backend.stats()["vrange_calls"]
    assert slabs.flush() == 10
    assert backend.stats()["vrange_calls"] == calls + 1
    assert slabs.stats()["volatile_bytes"] == 10 * ps


def test_a_small_page_goes_volatile_only_when_all_its_entries_are_idle(slabs):
    ps = slabs.page_size
    a, b = Placed(slabs, 100, 0), Placed(slabs, 100, 1)
    a.deactivate()
    assert slabs.flush() == 0
    b.deactivate()
    assert slabs.flush() == 1
    assert slabs.stats()["volatile_bytes"] == ps


def test_a_purge_loses_exactly_the_entries_on_purged_pages(slabs, backend):
    ps = slabs.page_size
    a, b = Placed(slabs, 100, 0), Placed(slabs, 100, 1)
    big, other = Placed(slabs, 3 * ps, 2), Placed(slabs, 2 * ps, 3)
    for p in (a, b, big, other):
        p.deactivate()
    slabs.flush()
    backend.reclaim(ps)  # the oldest volatile page: the small page with a and b
    assert sorted(slabs.purged_ids()) == [0, 1]  # known without re-pinning
    assert sorted(a.activate()) == [0, 1]
    assert big.activate() == [] and other.activate() == []


def test_a_purged_large_entry_reports_only_itself(slabs, backend):
    ps = slabs.page_size
    first, second = Placed(slabs, 2 * ps, 7), Placed(slabs, 2 * ps, 8)
    first.deactivate()
    slabs.flush()
    second.deactivate()
    slabs.flush()
    backend.reclaim(ps)  # the first page of "first"
    assert slabs.purged_ids() == [7]
    assert second.activate() == []
    assert first.activate() == [7]


def test_reactivating_a_pending_entry_needs_no_vrange(slabs, backend):
    placed = Placed(slabs, slabs.page_size * 4, 0)
    placed.deactivate()
    calls = backend.stats()["vrange_calls"]
    assert placed.activate() == []
    assert backend.stats()["vrange_calls"] == calls
    assert slabs.flush() == 0


def test_freed_pages_are_given_to_the_kernel_and_reused(slabs):
    ps = slabs.page_size
    Placed(slabs, ps, 0)  # so that the slab is not emptied and given back
    gone = Placed(slabs, 4 * ps, 1)
    gone.free()
    assert slabs.flush() == 4  # free pages hold nothing: volatile
    again = Placed(slabs, 4 * ps, 2)
    assert again.loc == gone.loc
    view = again.view()
    view[:] = b"\x07" * (4 * ps)
    assert view == b"\x07" * (4 * ps)
    view.release()


def test_a_failed_repin_changes_nothing_and_can_be_retried():
    """ENOMEM while re-pinning: the extent stays idle and volatile; a retry works."""
    with get_backend("sim") as sim:
        slabs = SlabAllocator(sim, slab_bytes=16 * sim.page_size)
        placed = Placed(slabs, 4 * sim.page_size, 0)
        view = placed.view()
        view[:] = b"\x42" * view.nbytes
        view.release()
        placed.deactivate()
        slabs.flush()
        sim.inject_fault(after=0, errno=errno.ENOMEM)
        with pytest.raises(OSError):
            placed.activate()
        assert slabs.stats()["volatile_bytes"] == 4 * sim.page_size
        sim.inject_fault(after=sim.page_size)  # a short count: the allocator goes on
        assert placed.activate() == []
        assert slabs.stats()["volatile_bytes"] == 0
        view = placed.view()
        assert view == b"\x42" * view.nbytes
        view.release()
        slabs.close()


def test_a_failed_mark_stays_pending_for_the_next_flush():
    with get_backend("sim") as sim:
        slabs = SlabAllocator(sim, slab_bytes=16 * sim.page_size)
        Placed(slabs, 4 * sim.page_size, 0).deactivate()
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
