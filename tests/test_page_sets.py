"""The C core's PageSet (core/pages.c) against the kernel backend's own Python calls.

Two regions of one kernel backend get the same writes, marks, re-pins,
reads and purges (a page dropped with ``MADV_DONTNEED`` behind the book's
back, as the kernel's reclaim drops a lazily freed page): one region through
the backend's ``vrange`` and ``read_bytes`` (the reference), the other
through its PageSet. Every answer, every page state and the book's counts
must agree.
"""

from __future__ import annotations

import mmap
import os
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from volcache import VolatileCache
from volcache.backends import NONVOLATILE, VOLATILE, clib, get_backend
from volcache.backends.kernel import KernelBackend
from volcache.backends.pages import NONVOL, PURGED, VOL
from volcache.coremodule import core

from .conftest import need_backend, require

PS = os.sysconf("SC_PAGE_SIZE")
NPAGES = 12


def needs_kernel_and_core() -> None:
    need_backend("kernel")
    require("kernel", None if core is not None else "the C core was not built")


def allow_marks(backend: KernelBackend) -> None:
    """As if every CPU was drained just now: the PageSet's marks are not deferred."""
    backend._drained[0] = time.monotonic()
    backend._undrained.clear()


class PageSetAsBackend(RuleBasedStateMachine):
    """Region 0 through the backend's Python calls, region 1 through its PageSet."""

    @initialize()
    def make(self) -> None:
        needs_kernel_and_core()
        self.backend = get_backend("kernel")
        self.regions = [self.backend.allocate(NPAGES * PS) for _ in range(2)]
        self.pages = self.backend.page_set(self.regions[1])
        assert self.pages is not None and self.backend.page_set(self.regions[0]) is not None

    def states(self, i: int) -> bytes:
        return bytes(self.backend._book.states(self.regions[i].ident))

    @rule(page=st.integers(0, NPAGES - 1), data=st.binary(min_size=1, max_size=40))
    def write(self, page, data):
        """Both regions get the same bytes on a pinned page (the word the tag covers too)."""
        if self.states(0)[page] != NONVOL or self.states(1)[page] != NONVOL:
            return
        for region in self.regions:
            region.view[page * PS : page * PS + len(data)] = data

    @rule(first=st.integers(0, NPAGES - 1), n=st.integers(1, NPAGES))
    def mark(self, first, n):
        n = min(n, NPAGES - first)
        done = self.backend.vrange(self.regions[0], first * PS, n * PS, VOLATILE).count // PS
        allow_marks(self.backend)
        with self.backend._lock:
            mine = self.pages.mark(first, n)
        assert mine == done

    @rule(first=st.integers(0, NPAGES - 1), n=st.integers(1, NPAGES))
    def repin(self, first, n):
        n = min(n, NPAGES - first)
        result = self.backend.vrange(self.regions[0], first * PS, n * PS, NONVOLATILE)
        with self.backend._lock:
            mine = self.pages.repin(first, n)
        assert mine == list(result.purged_pages)

    @rule(page=st.integers(0, NPAGES - 1))
    def dropped(self, page):
        """The kernel drops a lazily freed page of both (the book is not told)."""
        if self.states(0)[page] == VOL and self.states(1)[page] == VOL:
            for region in self.regions:
                clib.madvise(region.address + page * PS, PS, mmap.MADV_DONTNEED)

    @rule(page=st.integers(0, NPAGES - 1))
    def reclaimed(self, page):
        """The backend's own reclaim drops a page of both, and its book says so."""
        if self.states(0)[page] == VOL and self.states(1)[page] == VOL:
            for region in self.regions:
                clib.madvise(region.address + page * PS, PS, mmap.MADV_DONTNEED)
                self.backend._book.set_purged(region.ident, page, 1)

    @rule(start=st.integers(0, NPAGES * PS - 1), length=st.integers(0, 3 * PS))
    def read(self, start, length):
        length = min(length, NPAGES * PS - start)
        data, purged = self.backend.read_bytes(self.regions[0], start, length)
        assert self.pages.read(start, length) == (None if purged else data)

    @invariant()
    def same_pages(self):
        if not hasattr(self, "pages"):
            return
        assert self.states(0) == self.states(1)
        book = self.backend._book
        states = self.states(0) + self.states(1)
        assert book.volatile == len(states) - states.count(NONVOL)
        assert book.purged == states.count(PURGED)
        for region in self.regions:  # a pinned page has left its run
            stamps = book.stamps(region.ident)
            states = book.states(region.ident)
            assert all(stamps[i] == 0 for i in range(NPAGES) if states[i] == NONVOL)
        for page in range(NPAGES):  # the same bytes on every page the book calls pinned
            if self.states(0)[page] == NONVOL:
                views = [r.view[page * PS : (page + 1) * PS] for r in self.regions]
                assert views[0] == views[1]

    def teardown(self) -> None:
        if hasattr(self, "backend"):
            self.backend.close()


PageSetAsBackend.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)
TestPageSetAsBackend = PageSetAsBackend.TestCase


def test_a_mark_due_a_drain_is_left_to_the_backend():
    """The backend drains every CPU's batches every so often: its own mark does that."""
    needs_kernel_and_core()
    with get_backend("kernel") as backend:
        region = backend.allocate(4 * PS)
        pages = backend.page_set(region)
        backend._drained[0] = time.monotonic() - 3600
        with backend._lock:
            assert pages.mark(0, 4) is None
        assert bytes(backend._book.states(region.ident)) == bytes(4)  # nothing changed
        allow_marks(backend)
        with backend._lock:
            assert pages.mark(0, 4) == 4
        assert backend._undrained == [(region.ident, 0, 4)]
        assert backend.stats()["volatile_bytes"] == 4 * PS


def test_a_released_regions_page_set_refuses_every_call():
    needs_kernel_and_core()
    with get_backend("kernel") as backend:
        region = backend.allocate(2 * PS)
        pages = backend.page_set(region)
        backend.release(region)
        assert pages.released
        for call in (pages.read, pages.repin, pages.mark):
            with pytest.raises(ValueError, match="released"):
                call(0, 1)
        with pytest.raises(ValueError, match="stays released"):
            pages.released = False


def test_a_page_set_refuses_ranges_outside_its_region():
    needs_kernel_and_core()
    with get_backend("kernel") as backend:
        region = backend.allocate(2 * PS)
        pages = backend.page_set(region)
        with backend._lock:
            for first, n in ((-1, 1), (0, 3), (2, 1)):
                with pytest.raises(ValueError, match="outside"):
                    pages.repin(first, n)
                with pytest.raises(ValueError, match="outside"):
                    pages.mark(first, n)
        with pytest.raises(ValueError, match="outside"):
            pages.read(PS, 2 * PS)


def test_a_backend_with_its_own_calls_lends_no_page_set():
    """A subclass that re-pins its own way keeps its calls (the C core would skip them)."""
    needs_kernel_and_core()

    class Counting(KernelBackend):
        def _unmark(self, region, first, npages):
            return super()._unmark(region, first, npages)

    with Counting() as backend:
        assert backend.page_set(backend.allocate(PS)) is None


# -- a cache whose stores and idle reads go through PageSets ------------------------------


class PythonPages(KernelBackend):
    """The kernel backend without PageSets: the cache makes every call through Python."""

    def page_set(self, region):
        return None


def subscript(cache: VolatileCache, key: int) -> bytes | None:
    """``cache[key]`` (an idle entry's first read is the C core's), None if absent."""
    try:
        return cache[key]
    except KeyError:
        return None


def churn(cache: VolatileCache, n: int, nbytes: int) -> None:
    for i in range(n):
        cache[i] = bytes([i % 251]) * nbytes


@pytest.mark.parametrize("nbytes", [300, 5000, 70000])
def test_a_cache_on_page_sets_ends_as_one_on_python_calls(nbytes):
    """The same stores, evictions, marks, reads and purges: the same books, records,
    page states and values, whichever way the backend's work was made."""
    needs_kernel_and_core()
    backends = [KernelBackend(), PythonPages()]
    # One still clock for both: the idle work's timed parts happen alike.
    caches = [VolatileCache(50, backend=b, slab_bytes=64 * PS, clock=lambda: 0.0) for b in backends]
    try:
        for cache in caches:
            churn(cache, 200, nbytes)
            cache._maintain(flush=True)
        slabs = [cache._entries.store.slabs for cache in caches]
        assert any(slabs[0]._page_sets) and not any(slabs[1]._page_sets)
        for backend, allocator in zip(backends, slabs, strict=True):  # the kernel drops a few pages
            region = allocator.regions()[0]
            states = backend._book.states(region.ident)
            for page in [i for i in range(region.pages) if states[i] == VOL][::7]:
                clib.madvise(region.address + page * PS, PS, mmap.MADV_DONTNEED)
        answers = [[subscript(cache, i) for i in range(150, 200)] for cache in caches]
        assert answers[0] == answers[1]
        assert None in answers[0]
        for i, value in zip(range(150, 200), answers[0], strict=True):
            assert value is None or value == bytes([i % 251]) * nbytes
        for cache in caches:
            churn(cache, 120, nbytes)
        books = [s.books for s in slabs]
        for name in ("npending", "stored_bytes", "capacity_bytes", "count", "total_pages"):
            assert getattr(books[0], name) == getattr(books[1], name), name
        assert caches[0]._counts == caches[1]._counts
        states = [
            [bytes(b._book.states(r.ident)) for r in s.regions()]
            for b, s in zip(backends, slabs, strict=True)
        ]
        assert states[0] == states[1]
        assert backends[0]._core_calls[0] > 0 and backends[1]._core_calls[0] == 0
        stats = [b.stats() for b in backends]
        for name in ("vrange_calls", "purged_bytes", "volatile_bytes", "pinned_bytes"):
            assert stats[0][name] == stats[1][name], name
    finally:
        for cache, backend in zip(caches, backends, strict=True):
            cache.close()
            backend.close()
