"""The slab allocator: page-aligned runs and shared-page slots carved from large backend regions.

Volatility is per page, so where an entry lives decides what a purge takes
with it. Entries of more than half a page get a run of pages of their own;
smaller ones share pages of one size class. A page is made volatile only when
every entry on it is idle, and a purged page loses exactly the entries on it.

Entries are known by the integer id their owner gives them (the cache's record
ids) and addressed by an integer ``loc``: the slab's index and the byte
offset. The books are arrays per slab (a few bytes a page) and one link per
entry, chaining the entries of a shared page, so that an idle entry costs no
Python object here either.

The unit of activation is a large run or a shared page: activating a unit
re-pins its volatile pages (or takes them off the pending list), and the last
entry going idle puts them on the pending list, which :meth:`flush` marks
volatile in as few vrange calls as possible (adjacent pages merged, as vrange
merges adjacent vmas). Free pages are marked volatile too: they hold nothing,
so the kernel may have them.

The books (:class:`~volcache.slabbooks.SlabBooks`: integers only) decide
and remember; this class makes the backend calls they ask for: a new slab,
a re-pin, a mark, a release.
"""

from __future__ import annotations

from collections.abc import Callable

from .backends import NONVOLATILE, VOLATILE, Backend, Region
from .coremodule import core
from .slabbooks import (
    ENTRY_BOOK_BYTES,
    NEED_SLAB,
    OFFSET_BITS,
    OFFSET_MASK,
    PAGE_BOOK_BYTES,
    SlabBooks,
    size_classes,
)

__all__ = [
    "ENTRY_BOOK_BYTES", "OFFSET_MASK", "PAGE_BOOK_BYTES", "SlabAllocator", "offset_of",
    "size_classes", "slab_of",
]  # fmt: skip

_OFFSET_BITS = OFFSET_BITS


def slab_of(loc: int) -> int:
    """The slab index part of a ``loc``."""
    return loc >> _OFFSET_BITS


def offset_of(loc: int) -> int:
    """The byte offset part of a ``loc``."""
    return loc & OFFSET_MASK


def new_books(page_size: int, slab_pages: int) -> SlabBooks:
    """The books in C (``volcache._core``) where it is in use, else the Python ones."""
    if core is None:
        return SlabBooks(page_size, slab_pages)
    return core.SlabBooks(page_size, slab_pages)  # type: ignore[no-any-return]


class SlabAllocator:
    """Carves entries out of backend regions of ``slab_bytes`` each.

    Not thread safe: the cache holds its lock around every call. Calls that
    re-pin return the ids of entries whose bytes a purge took (see
    :meth:`activate`). Callers pass each entry's ``loc`` and ``nbytes`` back,
    and keep activations balanced: an entry is activated once before it is
    deactivated.
    """

    def __init__(
        self, backend: Backend, slab_bytes: int = 4 << 20, books: SlabBooks | None = None
    ) -> None:
        self.backend = backend
        self.page_size = ps = backend.page_size
        self.slab_pages = max(1, slab_bytes // ps)
        # ``books``: the tests' own; else the C ones where they were built.
        self.books = books if books is not None else new_books(ps, self.slab_pages)
        self.classes = self.books.classes
        self._regions: list[Region | None] = []  # by slab index
        self._readers: list[Callable[[int, int], bytes | None] | None] = []
        # The backend's PageSet of each slab (None: its Python calls), through
        # which the C store re-pins and reads (core/pages.h).
        self._page_sets: list[object | None] = []
        self._native_marks = hasattr(self.books, "mark_pending")  # the C books

    @property
    def npending(self) -> int:
        """Pages waiting to be marked volatile."""
        return self.books.npending

    @property
    def count(self) -> int:
        """Entries allocated."""
        return self.books.count

    @property
    def mark_errors(self) -> int:
        """Marks the backend refused or made short."""
        return self.books.mark_errors

    # -- allocation -------------------------------------------------------------

    def allocate(self, nbytes: int, ident: int) -> tuple[int, list[int]]:
        """An active place for ``nbytes`` (at least 1) of entry ``ident``: (loc, lost ids).

        Raises:
            MemoryError, OSError: from the backend; nothing is changed then.
        """
        books = self.books
        while True:
            loc, more = books.allocate(nbytes, ident)
            if loc >= 0:
                return loc, more  # type: ignore[return-value]
            if loc == NEED_SLAB:
                self._new_slab(more)  # type: ignore[arg-type]
            else:
                self._repin(*more)  # type: ignore[misc]

    def serve(self, need: int, more: object) -> None:
        """Make the backend call the books asked for (``NEED_SLAB`` or ``NEED_REPIN``)."""
        if need == NEED_SLAB:
            self._new_slab(more)  # type: ignore[arg-type]
        else:
            self._repin(*more)  # type: ignore[misc]

    def free(self, loc: int, nbytes: int, ident: int, active: bool) -> None:
        """Give an entry's place back (``active``: it was activated). Its bytes are gone."""
        empty = self.books.free(loc, nbytes, ident, active)
        if empty >= 0:
            self.release_slab(empty)

    def release_slab(self, index: int) -> None:
        """A slab the books found wholly free goes back to the backend."""
        # Released first: if the backend refuses, the slab stays ours, free and whole.
        region = self._regions[index]
        assert region is not None
        self.backend.release(region)
        self.books.drop_slab(index)
        self._regions[index] = None
        self._readers[index] = None
        self._page_sets[index] = None

    def view(self, loc: int, nbytes: int) -> memoryview:
        """A writable view of an entry's bytes (a new view: release it when done)."""
        offset = loc & OFFSET_MASK
        region = self._regions[loc >> _OFFSET_BITS]
        assert region is not None
        return region.view[offset : offset + nbytes]

    def fast_reader(self, loc: int) -> Callable[[int, int], bytes | None] | None:
        """The backend's reader of a ``loc``'s slab (offsets in the slab), or None if a
        purge found by a failed re-pin is still unreported there (use :meth:`read`)."""
        index = loc >> _OFFSET_BITS
        return None if self.books.has_lost(index) else self._readers[index]

    def read(self, loc: int, nbytes: int) -> bytes | None:
        """An entry's bytes, copied without re-pinning its pages; None if a purge took any.

        The pages keep their mode (see the backends' ``read``).
        """
        if self.books.lost_in(loc, nbytes):
            return None
        reader = self._readers[loc >> _OFFSET_BITS]
        assert reader is not None
        return reader(loc & OFFSET_MASK, nbytes)

    def page_of(self, loc: int) -> tuple[int, int]:
        """(slab index, first page) of an entry: entries on one shared page share it."""
        return self.books.page_of(loc)

    def regions(self) -> list[Region]:
        """The backend regions of the slabs in use."""
        return [r for r in self._regions if r is not None]

    # -- activity -------------------------------------------------------------

    def activate(self, loc: int, nbytes: int) -> list[int]:
        """Make an entry's pages non-volatile; returns the ids of entries a purge took.

        The list includes the entry's own id if its bytes were purged (it is
        still allocated and active: free it). Other ids in it shared a purged
        page and are idle: free them too.

        Raises:
            OSError: if the pages could not all be re-pinned; nothing changed.
        """
        books = self.books
        while True:
            done, more = books.activate(loc, nbytes)
            if done >= 0:
                return more  # type: ignore[return-value]
            self._repin(*more)  # type: ignore[misc]

    def deactivate(self, loc: int, nbytes: int) -> None:
        """The entry went idle: once its pages hold no active entry, they are pending."""
        self.books.deactivate(loc, nbytes)

    def flush(self) -> int:
        """Mark every pending page volatile; returns the pages marked.

        Adjacent pending pages go in one vrange call. A call that stops short
        or fails leaves the rest pending for the next flush.
        """
        ps = self.page_size
        books = self.books
        marked = 0
        if self._native_marks and any(self._page_sets):
            # Marked in C where the backend lent its pages (the kernel's);
            # what is left (another backend's slab, a drain due) goes on here.
            marked, finished = books.mark_pending(self._page_sets)  # type: ignore[attr-defined]
            if finished:
                return marked
        for index, first, stop in books.pending_runs():
            region = self._regions[index]
            assert region is not None
            try:
                count = self.backend.vrange(region, first * ps, (stop - first) * ps, VOLATILE).count
            except OSError:
                books.mark_errors += 1
                continue
            count //= ps
            if count < stop - first:
                books.mark_errors += 1
            books.marked(index, first, count)
            marked += count
        return marked

    def purged_ids(self) -> list[int]:
        """Ids of idle entries whose pages the backend knows purged, found without
        re-pinning; they stay allocated and volatile until freed."""
        found: dict[int, None] = {}
        for index in self.books.volatile_slabs():
            region = self._regions[index]
            assert region is not None
            pages = tuple(self.backend.purged_pages(region))
            if pages:
                found.update(dict.fromkeys(self.books.ids_on(index, pages)))
        return list(found)

    # -- backend calls the books ask for --------------------------------------------------

    def _repin(self, index: int, first: int, npages: int) -> None:
        """Re-pin the volatile ones of these pages (off the pending list), telling the
        books each purge as soon as a call reports it; a failure part way puts the
        pages that are not volatile back on the pending list."""
        books = self.books
        region = self._regions[index]
        assert region is not None
        ps = self.page_size
        low, high = books.take_pending(index, first, npages)
        try:
            while low < high:
                result = self.backend.vrange(region, low * ps, (high - low) * ps, NONVOLATILE)
                done = result.count // ps
                books.repinned(index, low, done, tuple(result.purged_pages))
                low += done
        except BaseException:
            books.restore_pending(index, first, npages)
            raise

    def _new_slab(self, npages: int) -> None:
        region = self.backend.allocate(npages * self.page_size)
        try:
            index = self.books.add_slab(region.pages)
        except BaseException:  # no memory for the books: the region goes back
            self.backend.release(region)
            raise
        self.books.set_base(index, region.address)
        while len(self._regions) <= index:
            self._regions.append(None)
            self._readers.append(None)
            self._page_sets.append(None)
        self._regions[index] = region
        self._readers[index] = self.backend.reader(region)  # dropped with the slab
        self._page_sets[index] = self.backend.page_set(region)

    # -- accounting -----------------------------------------------------------------

    def nbytes(self) -> int:
        """The memory the books take: per page of slab, and per entry."""
        return self.books.nbytes()

    def stats(self) -> dict[str, int]:
        """Slab, used, volatile and pending bytes; stored bytes and bytes lost to rounding."""
        ps = self.page_size
        books = self.books
        total, used, volatile = books.page_counts()
        return {
            "slabs": sum(1 for r in self._regions if r is not None),
            "slab_bytes": total * ps,
            "used_bytes": used * ps,
            "volatile_bytes": volatile * ps,
            "pending_bytes": books.npending * ps,
            "stored_bytes": books.stored_bytes,
            "wasted_bytes": books.capacity_bytes - books.stored_bytes,
            "mark_errors": books.mark_errors,
        }

    def close(self) -> None:
        """Give every slab back to the backend."""
        for region in self._regions:
            if region is not None and not region.released:
                self.backend.release(region)
        self._regions = []
        self._readers = []
        self._page_sets = []
        self.books.reset()
