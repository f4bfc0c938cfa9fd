"""The backend contract: every registered backend must pass every test here.

The ``backend`` fixture (conftest.py) runs each test on each backend that works
here; a new backend is done when it passes this file unchanged.
"""

from __future__ import annotations

import errno
import mmap
import random
import threading
import time

import pytest

from volcache.backends import (
    NONVOLATILE,
    VOLATILE,
    Backend,
    Capabilities,
    Mode,
    VRange,
    available_backends,
    get_backend,
)


def pattern(backend: Backend, page: int, salt: int = 0) -> bytes:
    """A page of bytes unique to (page, salt), never starting with a zero word."""
    data = random.Random(page * 1_000_003 + salt).randbytes(backend.page_size)
    return b"\x01" + data[1:]


def fill(region, salt: int = 0) -> None:
    ps = region.page_size
    for page in range(region.pages):
        region.view[page * ps : (page + 1) * ps] = pattern(region.backend, page, salt)


def intact_pages(region, salt: int = 0) -> list[int]:
    ps = region.page_size
    return [
        page
        for page in range(region.pages)
        if region.view[page * ps : (page + 1) * ps] == pattern(region.backend, page, salt)
    ]


def mark_pages(backend, region, pages, mode=VOLATILE) -> None:
    for page in pages:
        result = backend.vrange(region, page * backend.page_size, backend.page_size, mode)
        assert result.count == backend.page_size


def test_identity(backend):
    """A backend has its registered name, a page size and its capabilities."""
    assert backend.name in available_backends()
    assert backend.page_size >= mmap.PAGESIZE
    assert backend.page_size & (backend.page_size - 1) == 0
    assert isinstance(backend.capabilities, Capabilities)
    assert Mode.VOLATILE == VOLATILE == 0 and Mode.NONVOLATILE == NONVOLATILE == 1


def test_new_region_is_zero_filled_page_aligned_and_writable(backend):
    """allocate() rounds up to pages and gives zeroed, writable, aligned memory."""
    ps = backend.page_size
    region = backend.allocate(ps * 3 + 1)
    assert region.size == ps * 4 == len(region.view) and region.pages == 4
    assert region.address % mmap.PAGESIZE == 0
    assert not region.view.readonly
    assert bytes(region.view) == bytes(region.size)
    region.view[:5] = b"hello"
    assert bytes(region.view[:5]) == b"hello"


def test_new_region_is_nonvolatile(backend):
    """Fresh pages are pinned: nothing to reclaim, re-pinning reports nothing purged."""
    region = backend.allocate(backend.page_size * 4)
    assert backend.reclaim(region.size) == 0
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    assert result.count == region.size and not result.purged


def test_result_unpacks_as_count_and_purged(backend):
    """A VRange unpacks as (count, purged), like the C call's return and out-parameter."""
    region = backend.allocate(backend.page_size * 2)
    count, purged = backend.vrange(region, 0, region.size, VOLATILE)
    assert (count, purged) == (region.size, False)
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    assert isinstance(result, VRange) and result.purged_pages == ()


def test_round_trip_without_pressure_keeps_every_byte(backend):
    """Volatile then non-volatile with no reclaim: not purged, every byte intact."""
    region = backend.allocate(backend.page_size * 16)
    fill(region)
    assert backend.vrange(region, 0, region.size, VOLATILE).count == region.size
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    assert result.count == region.size and not result.purged
    assert intact_pages(region) == list(range(16))


def test_zero_pages_are_tracked_like_any_other(backend):
    """Pages never written (all zeros) are detected as purged, and as intact."""
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    assert bytes(region.view) == bytes(region.size)
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.reclaim(ps * 2) == ps * 2
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1)
    assert bytes(region.view[2 * ps :]) == bytes(2 * ps)


def test_length_is_rounded_up_to_whole_pages(backend):
    """A length that is not a page multiple covers the page it ends in."""
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    assert backend.vrange(region, ps, 1, VOLATILE).count == ps
    assert backend.vrange(region, ps * 2, ps + 1, VOLATILE).count == ps * 2
    assert backend.reclaim(region.size) == ps * 3
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    assert result.purged_pages == (1, 2, 3)


def test_zero_length_changes_nothing(backend):
    """A zero length returns a count of 0 and marks nothing."""
    region = backend.allocate(backend.page_size * 2)
    assert backend.vrange(region, backend.page_size, 0, VOLATILE).count == 0
    assert backend.vrange(region, region.size, 0, VOLATILE).count == 0
    assert backend.reclaim(region.size) == 0


@pytest.mark.parametrize(
    ("start", "length", "mode", "message"),
    [
        (1, 4096, VOLATILE, "multiple of the page size"),
        (-4096, 4096, VOLATILE, "multiple of the page size"),
        (0, -1, VOLATILE, "negative"),
        (0, 10**9, VOLATILE, "outside"),
        ("page", 0, VOLATILE, "outside"),
        (0, 4096, 2, "mode"),
        (0, 4096, -1, "mode"),
        (0, 4096, "volatile", "mode"),
    ],
)
def test_bad_arguments_raise_valueerror_and_change_nothing(backend, start, length, mode, message):
    """EINVAL as ValueError with a message naming the problem; the region still works."""
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    fill(region)
    if start == "page":  # one page past the end
        start, length = region.size, 1
    if start == 1 and ps != 4096:
        start = ps // 2
    with pytest.raises(ValueError, match=message):
        backend.vrange(region, start, length, mode)
    assert backend.reclaim(region.size) == 0
    assert backend.vrange(region, 0, region.size, VOLATILE).count == region.size
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    assert intact_pages(region) == [0, 1, 2, 3]


def test_arguments_of_the_wrong_type_raise_typeerror(backend):
    """A float offset or a non-region is a TypeError, not a silent conversion."""
    region = backend.allocate(backend.page_size)
    with pytest.raises(TypeError):
        backend.vrange(region, 0.0, 10, VOLATILE)
    with pytest.raises(TypeError):
        backend.vrange(region.view, 0, 10, VOLATILE)
    with pytest.raises(TypeError):
        backend.allocate(4096.0)
    with pytest.raises(ValueError, match="positive"):
        backend.allocate(0)


def test_settle_changes_no_mode_and_no_byte(backend):
    """settle() finishes put-off marking work: pages keep their modes and bytes,
    a closed backend settles as a no-op."""
    region = backend.allocate(backend.page_size * 8)
    fill(region)
    for _ in range(3):  # marked more than once between drains, on the kernel backend
        backend.vrange(region, 0, region.size, VOLATILE)
        backend.vrange(region, 0, backend.page_size * 2, NONVOLATILE)
    backend.settle()
    backend.settle()
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    assert intact_pages(region) == list(range(8))
    backend.close()
    backend.settle()


def test_reclaim_purges_oldest_volatile_first_and_reports_exact_pages(backend):
    """reclaim() takes the oldest markings; re-pinning names exactly those pages."""
    ps = backend.page_size
    region = backend.allocate(ps * 8)
    fill(region)
    order = [5, 1, 6, 2, 0, 7]
    mark_pages(backend, region, order)
    assert backend.reclaim(ps * 3) == ps * 3
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    assert result.count == region.size and result.purged
    assert result.purged_pages == (1, 5, 6)
    assert intact_pages(region) == [0, 2, 3, 4, 7]


def test_reclaim_leaves_nonvolatile_pages_alone(backend):
    """Asking for more than is volatile purges only the volatile pages."""
    ps = backend.page_size
    region = backend.allocate(ps * 8)
    fill(region)
    mark_pages(backend, region, [1, 3, 4])
    assert backend.reclaim(region.size * 10) == ps * 3
    assert backend.reclaim(region.size) == 0
    assert intact_pages(region) == [0, 2, 5, 6, 7]
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (1, 3, 4)


def test_reclaim_across_regions_goes_by_age_not_address(backend):
    """The oldest volatile pages go first, whichever region they are in."""
    ps = backend.page_size
    a, b = backend.allocate(ps * 2), backend.allocate(ps * 2)
    fill(a, salt=1)
    fill(b, salt=2)
    backend.vrange(b, ps, ps, VOLATILE)
    backend.vrange(a, 0, ps * 2, VOLATILE)
    backend.vrange(b, 0, ps, VOLATILE)
    assert backend.reclaim(ps * 2) == ps * 2
    assert backend.vrange(b, 0, b.size, NONVOLATILE).purged_pages == (1,)
    assert backend.vrange(a, 0, a.size, NONVOLATILE).purged_pages == (0,)
    assert intact_pages(a, salt=1) == [1]
    assert intact_pages(b, salt=2) == [0]


def test_reclaim_rounds_up_and_rejects_negative(backend):
    """reclaim(1) purges a page; reclaim(0) nothing; a negative size is a ValueError."""
    ps = backend.page_size
    region = backend.allocate(ps * 2)
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.reclaim(0) == 0
    with pytest.raises(ValueError, match="negative"):
        backend.reclaim(-1)
    assert backend.reclaim(1) == ps
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0,)


def test_marking_volatile_pages_again_keeps_their_age_and_content(backend):
    """A range marked twice keeps its first marking's age and its saved bytes."""
    ps = backend.page_size
    region = backend.allocate(ps * 3)
    fill(region)
    mark_pages(backend, region, [0, 1])
    assert backend.vrange(region, 0, region.size, VOLATILE).count == region.size
    assert backend.reclaim(ps) == ps
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0,)
    assert intact_pages(region) == [1, 2]


def test_a_repinned_page_ages_from_its_newest_marking(backend):
    """Re-pinning and marking again makes a page the youngest."""
    ps = backend.page_size
    region = backend.allocate(ps * 3)
    fill(region)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.vrange(region, 0, ps, NONVOLATILE)
    backend.vrange(region, 0, ps, VOLATILE)
    assert backend.reclaim(ps * 2) == ps * 2
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (1, 2)
    assert intact_pages(region) == [0]


def test_purged_is_reported_once(backend):
    """After a re-pin reported a purge, the pages are ordinary pinned pages again."""
    ps = backend.page_size
    region = backend.allocate(ps * 2)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.reclaim(region.size)
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1)
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()


def test_purged_pages_are_usable_after_repinning(backend):
    """Pages written after a reported purge keep their new bytes through later cycles."""
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    fill(region)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.reclaim(region.size)
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == (0, 1, 2, 3)
    fill(region, salt=9)
    backend.vrange(region, 0, region.size, VOLATILE)
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    assert intact_pages(region, salt=9) == [0, 1, 2, 3]


def test_volatile_pages_marked_in_one_call_can_be_repinned_in_parts(backend):
    """Re-pins of sub-ranges report the purged pages of each sub-range only."""
    ps = backend.page_size
    region = backend.allocate(ps * 6)
    fill(region)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.reclaim(ps * 2)  # pages 0 and 1: the oldest run starts at its first page
    assert backend.vrange(region, ps * 4, ps * 2, NONVOLATILE).purged_pages == ()
    assert backend.vrange(region, ps, ps * 2, NONVOLATILE).purged_pages == (1,)
    assert backend.vrange(region, 0, ps * 4, NONVOLATILE).purged_pages == (0,)
    assert intact_pages(region) == [2, 3, 4, 5]


# Partial results, through fault injection: only backends with the capability
# (the kernel backend's real partial failure is tested in test_kernel.py).


def test_partial_nonvolatile_reports_only_the_processed_part(faulty_backend):
    """A short re-pin: count stops early, purged speaks for the processed pages only."""
    backend = faulty_backend
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    fill(region)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.reclaim(ps)
    mark_pages(backend, region, [0])  # page 0 stays purged
    backend.inject_fault(after=ps * 2)
    result = backend.vrange(region, 0, region.size, NONVOLATILE)
    assert result.count == ps * 2 and result.purged_pages == (0,)
    # Pages past the count are still volatile: reclaim can take them.
    assert backend.reclaim(region.size) == ps * 2
    assert backend.vrange(region, ps * 2, ps * 2, NONVOLATILE).purged_pages == (2, 3)
    assert intact_pages(region)[:1] == [1]


def test_partial_result_can_say_not_purged(faulty_backend):
    """Stopping early over intact pages gives a short count and purged false."""
    backend = faulty_backend
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.reclaim(ps)
    backend.inject_fault(after=ps * 3)
    result = backend.vrange(region, ps, ps * 3, NONVOLATILE)
    assert (result.count, result.purged) == (ps * 3, False)


def test_partial_volatile_leaves_the_rest_pinned(faulty_backend):
    """A short mark: only pages within the count become volatile."""
    backend = faulty_backend
    ps = backend.page_size
    region = backend.allocate(ps * 4)
    fill(region)
    backend.inject_fault(after=ps)
    assert backend.vrange(region, 0, region.size, VOLATILE).count == ps
    assert backend.reclaim(region.size) == ps
    assert intact_pages(region) == [1, 2, 3]


def test_nothing_processed_raises_oserror_with_errno_and_changes_nothing(faulty_backend):
    """A call that can process nothing raises OSError(errno); modes are unchanged."""
    backend = faulty_backend
    ps = backend.page_size
    region = backend.allocate(ps * 2)
    fill(region)
    backend.inject_fault(after=0, errno=errno.ENOMEM)
    with pytest.raises(OSError) as raised:
        backend.vrange(region, 0, region.size, VOLATILE)
    assert raised.value.errno == errno.ENOMEM
    assert backend.reclaim(region.size) == 0
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.inject_fault(after=0, errno=errno.EAGAIN)
    with pytest.raises(OSError) as raised:
        backend.vrange(region, 0, region.size, NONVOLATILE)
    assert raised.value.errno == errno.EAGAIN
    assert backend.reclaim(region.size) == region.size


def test_release_makes_the_region_unusable(backend):
    """A released region's view and every call on it raise ValueError."""
    region = backend.allocate(backend.page_size)
    view = region.view
    backend.release(region)
    assert region.released
    with pytest.raises(ValueError):
        region.view  # noqa: B018
    with pytest.raises(ValueError):
        view[0]
    with pytest.raises(ValueError, match="released"):
        backend.vrange(region, 0, 1, VOLATILE)
    with pytest.raises(ValueError, match="released"):
        backend.release(region)
    assert backend.stats()["regions"] == 0


def test_release_forgets_volatile_pages(backend):
    """Pages of a released region are not counted and not reclaimed."""
    ps = backend.page_size
    keep, drop = backend.allocate(ps), backend.allocate(ps * 3)
    backend.vrange(drop, 0, drop.size, VOLATILE)
    backend.vrange(keep, 0, keep.size, VOLATILE)
    backend.release(drop)
    stats = backend.stats()
    assert (stats["allocated_bytes"], stats["volatile_bytes"]) == (ps, ps)
    assert backend.reclaim(ps * 10) == ps


def test_a_region_of_another_backend_is_rejected(backend_name):
    """Regions are not interchangeable between backend instances."""
    with get_backend(backend_name) as one, get_backend(backend_name) as other:
        region = one.allocate(one.page_size)
        with pytest.raises(ValueError, match="another backend"):
            other.vrange(region, 0, 1, VOLATILE)
        with pytest.raises(ValueError, match="another backend"):
            other.release(region)


def test_close_releases_everything_and_refuses_further_use(backend):
    """After close(), regions are released, calls raise, stats still answer."""
    region = backend.allocate(backend.page_size * 2)
    backend.vrange(region, 0, region.size, VOLATILE)
    backend.close()
    assert backend.closed and region.released
    with pytest.raises(ValueError, match="closed"):
        backend.allocate(1)
    with pytest.raises(ValueError, match="closed"):
        backend.vrange(region, 0, 1, NONVOLATILE)
    with pytest.raises(ValueError, match="closed"):
        backend.reclaim(1)
    backend.close()
    assert backend.stats()["regions"] == 0


def test_context_manager_closes(backend_name):
    """A backend used in a with-block is closed at its end."""
    with get_backend(backend_name) as backend:
        region = backend.allocate(1)
    assert backend.closed and region.released


def test_stats_account_for_every_page(backend):
    """allocated = pinned + volatile; purged and reclaimed bytes and calls are counted."""
    ps = backend.page_size
    region = backend.allocate(ps * 8)
    backend.vrange(region, 0, ps * 5, VOLATILE)
    backend.vrange(region, ps * 3, ps * 3, VOLATILE)  # pages 3-4 already volatile
    stats = backend.stats()
    assert stats["backend"] == backend.name and stats["page_size"] == ps
    assert stats["regions"] == 1 and stats["allocated_bytes"] == ps * 8
    assert (stats["volatile_bytes"], stats["pinned_bytes"]) == (ps * 6, ps * 2)
    assert backend.reclaim(ps * 2) == ps * 2
    backend.vrange(region, 0, region.size, NONVOLATILE)
    stats = backend.stats()
    assert (stats["volatile_bytes"], stats["pinned_bytes"]) == (0, ps * 8)
    assert stats["reclaimed_bytes"] == ps * 2 and stats["purged_bytes"] == ps * 2
    assert stats["vrange_calls"] == 3


def test_a_large_region_round_trips(backend):
    """64 MiB marked and re-pinned in one call each, every byte intact."""
    region = backend.allocate(64 << 20)
    data = random.Random(7).randbytes(1 << 20) * 64
    region.view[:] = data
    assert backend.vrange(region, 0, region.size, VOLATILE).count == region.size
    assert backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages == ()
    assert region.view == data


def test_threads_see_their_own_bytes_while_another_reclaims(backend):
    """Concurrent marking, re-pinning and reclaim: intact pages exact, purges reported."""
    ps = backend.page_size
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(salt: int) -> None:
        try:
            region = backend.allocate(ps * 8)
            fill(region, salt)
            backend.vrange(region, 0, region.size, VOLATILE)
            for _ in range(200):
                time.sleep(0.0005)  # volatile while idle: the reclaimer's chance
                purged = backend.vrange(region, 0, region.size, NONVOLATILE).purged_pages
                intact = intact_pages(region, salt)
                assert set(intact).isdisjoint(purged)
                assert set(intact) | set(purged) == set(range(8))
                for page in purged:
                    region.view[page * ps : (page + 1) * ps] = pattern(backend, page, salt)
                backend.vrange(region, 0, region.size, VOLATILE)
        except BaseException as exc:
            errors.append(exc)

    def reclaimer() -> None:
        while not stop.is_set():
            backend.reclaim(ps * 3)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    purger = threading.Thread(target=reclaimer)
    purger.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    purger.join()
    assert not errors, errors[0]
    assert backend.stats()["reclaimed_bytes"] > 0
