"""The slab allocator: page-aligned extents carved from large backend regions.

Volatility is per page, so where an entry lives decides what a purge takes
with it. Entries of more than half a page get a run of pages of their own;
smaller ones share pages of one size class. A page is made volatile only when
every entry on it is idle, and a purged page loses exactly the entries on it.

The unit of activation is a large extent or a shared small page: activating a
unit re-pins its volatile pages (or takes them off the pending list), and the
last entry going idle puts them on the pending list, which :meth:`flush` marks
volatile in as few vrange calls as possible (adjacent pages merged, as vrange
merges adjacent vmas). Free pages are marked volatile too: they hold nothing,
so the kernel may have them.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from .backends import NONVOLATILE, VOLATILE, Backend, Region

_RUNS = re.compile(b"\x01+")


def size_classes(page_size: int) -> list[int]:
    """Slot sizes for small entries: 16 bytes up to half a page, four per doubling."""
    classes = [16, 32, 48, 64]
    size = 64
    while size < page_size // 2:
        classes.extend(size + size // 4 * i for i in range(1, 5))
        size *= 2
    return [c for c in classes if c <= page_size // 2]


class Extent:
    """Where one entry's bytes live: ``nbytes`` at ``offset`` in a slab's region."""

    __slots__ = (
        "active",
        "capacity",
        "first",
        "nbytes",
        "npages",
        "offset",
        "owner",
        "slab",
        "slot",
        "small",
    )

    def __init__(
        self,
        slab: _Slab | None,
        first: int,
        npages: int,
        offset: int,
        nbytes: int,
        capacity: int,
        owner: Any,
    ) -> None:
        self.slab = slab
        self.first = first
        self.npages = npages
        self.offset = offset
        self.nbytes = nbytes
        self.capacity = capacity
        self.owner = owner
        self.small: _SmallPage | None = None
        self.slot = -1
        self.active = False  # counted in its unit (its own pages, or its small page)

    def view(self) -> memoryview:
        """A writable view of the entry's bytes (a new view: release it when done)."""
        if self.slab is None:
            return memoryview(b"")
        return self.slab.region.view[self.offset : self.offset + self.nbytes]


class _SmallPage:
    """A page shared by slots of one size class."""

    __slots__ = ("active", "owners", "page", "size", "slab", "vacant")

    def __init__(self, slab: _Slab, page: int, size: int, page_size: int) -> None:
        self.slab = slab
        self.page = page
        self.size = size
        slots = page_size // size
        self.vacant = list(range(slots - 1, -1, -1))
        self.owners: list[Extent | None] = [None] * slots
        self.active = 0  # active entries on the page


class _Slab:
    """One backend region and the state of its pages."""

    __slots__ = (
        "free_end",
        "free_start",
        "ident",
        "lost",
        "nlost",
        "npages",
        "npending",
        "owners",
        "pending",
        "region",
        "used",
        "volatile",
    )

    def __init__(self, region: Region, ident: int) -> None:
        self.region = region
        self.ident = ident
        self.npages = region.pages
        self.volatile = bytearray(self.npages)  # marked volatile in the backend
        self.pending = bytearray(self.npages)  # idle, waiting to be marked
        self.used = bytearray(self.npages)  # holds an entry
        # Found purged by a re-pin whose activation then failed: reported by the
        # next activation, so that a purge once seen is never forgotten.
        self.lost = bytearray(self.npages)
        self.nlost = 0
        self.npending = 0
        self.owners: list[Extent | _SmallPage | None] = [None] * self.npages
        self.free_start: dict[int, int] = {0: self.npages}
        self.free_end: dict[int, int] = {self.npages: 0}


def _bucket(npages: int) -> int:
    return npages.bit_length() - 1


class SlabAllocator:
    """Carves entries out of backend regions of ``slab_bytes`` each.

    Not thread safe: the cache holds its lock around every call. Calls that
    re-pin return the owners whose bytes a purge took (see :meth:`activate`).
    """

    def __init__(self, backend: Backend, slab_bytes: int = 4 << 20) -> None:
        self.backend = backend
        self.page_size = ps = backend.page_size
        self.slab_pages = max(1, slab_bytes // ps)
        self.classes = size_classes(ps)
        self._slabs: dict[int, _Slab] = {}
        self._next_slab = 1
        self._free: list[dict[tuple[int, int], None]] = [{} for _ in range(64)]
        self._partial: dict[int, OrderedDict[_SmallPage, None]] = {
            c: OrderedDict() for c in self.classes
        }
        self.npending = 0
        self.stored_bytes = 0
        self.capacity_bytes = 0
        self.mark_errors = 0

    # -- allocation -------------------------------------------------------------

    def allocate(self, nbytes: int, owner: Any) -> tuple[Extent, list[Any]]:
        """An active extent of ``nbytes`` for ``owner``, and the owners a re-pin found lost.

        Raises:
            MemoryError, OSError: from the backend; nothing is changed then.
        """
        if nbytes == 0:
            return Extent(None, 0, 0, 0, 0, 0, owner), []
        if nbytes <= self.classes[-1]:
            extent, lost = self._allocate_small(nbytes, owner)
        else:
            extent, lost = self._allocate_large(nbytes, owner)
        self.stored_bytes += nbytes
        self.capacity_bytes += extent.capacity
        return extent, lost

    def _allocate_large(self, nbytes: int, owner: Any) -> tuple[Extent, list[Any]]:
        ps = self.page_size
        npages = -(-nbytes // ps)
        slab, first = self._take_run(npages)
        extent = Extent(slab, first, npages, first * ps, nbytes, npages * ps, owner)
        try:
            self._activate_pages(slab, first, npages)  # free pages: a purge loses nothing
        except BaseException:
            self._give_run(slab, first, npages)
            raise
        slab.owners[first : first + npages] = [extent] * npages
        slab.used[first : first + npages] = b"\x01" * npages
        extent.active = True
        return extent, []

    def _allocate_small(self, nbytes: int, owner: Any) -> tuple[Extent, list[Any]]:
        size = next(c for c in self.classes if c >= nbytes)
        partial = self._partial[size]
        lost: list[Any] = []
        if partial:
            # The most recently used page: likely active already, so no re-pin.
            small = next(reversed(partial))
            if small.active == 0:
                purged = self._activate_pages(small.slab, small.page, 1)
                lost = [e.owner for e in self._lost_on(small, purged)]
        else:
            slab, page = self._take_run(1)
            try:
                self._activate_pages(slab, page, 1)
            except BaseException:
                self._give_run(slab, page, 1)
                raise
            small = _SmallPage(slab, page, size, self.page_size)
            slab.owners[page] = small
            slab.used[page] = 1
            partial[small] = None
        slot = small.vacant.pop()
        if not small.vacant:
            del partial[small]
        else:
            partial.move_to_end(small)
        offset = small.page * self.page_size + slot * size
        extent = Extent(small.slab, small.page, 1, offset, nbytes, size, owner)
        extent.small = small
        extent.slot = slot
        extent.active = True
        small.owners[slot] = extent
        small.active += 1
        return extent, lost

    def free(self, extent: Extent) -> None:
        """Give an extent back (active or not). Its bytes are gone."""
        if extent.slab is None:
            return
        self.deactivate(extent)
        self.stored_bytes -= extent.nbytes
        self.capacity_bytes -= extent.capacity
        slab = extent.slab
        small = extent.small
        extent.slab = None
        if small is None:
            slab.owners[extent.first : extent.first + extent.npages] = [None] * extent.npages
            slab.used[extent.first : extent.first + extent.npages] = bytes(extent.npages)
            self._give_run(slab, extent.first, extent.npages)
            return
        small.owners[extent.slot] = None
        small.vacant.append(extent.slot)
        partial = self._partial[small.size]
        if len(small.vacant) == len(small.owners):
            partial.pop(small, None)
            slab.owners[small.page] = None
            slab.used[small.page] = 0
            self._give_run(slab, small.page, 1)
        elif small not in partial:
            partial[small] = None
            partial.move_to_end(small, last=False)

    # -- activity -------------------------------------------------------------

    def activate(self, extent: Extent) -> list[Any]:
        """Make an extent's pages non-volatile; returns the owners a purge took.

        The list includes ``extent.owner`` if its own bytes were purged (the
        extent is still allocated and active: free it). Other owners in it
        shared a purged small page and are idle: free them too.

        Raises:
            OSError: if the pages could not all be re-pinned; nothing changed.
        """
        if extent.slab is None or extent.active:
            return []
        small = extent.small
        if small is None:
            purged = self._activate_pages(extent.slab, extent.first, extent.npages)
            extent.active = True
            return [extent.owner] if purged else []
        purged = self._activate_pages(small.slab, small.page, 1) if small.active == 0 else []
        small.active += 1
        extent.active = True
        return [e.owner for e in self._lost_on(small, purged)]

    def deactivate(self, extent: Extent) -> None:
        """The entry went idle: once its pages hold no active entry, they are pending."""
        if extent.slab is None or not extent.active:
            return
        extent.active = False
        small = extent.small
        if small is None:
            self._idle_pages(extent.slab, extent.first, extent.npages)
        else:
            small.active -= 1
            if small.active == 0:
                self._idle_pages(small.slab, small.page, 1)

    def flush(self) -> int:
        """Mark every pending page volatile; returns the pages marked.

        Adjacent pending pages go in one vrange call. A call that stops short
        or fails leaves the rest pending for the next flush.
        """
        ps = self.page_size
        marked = 0
        for slab in list(self._slabs.values()):
            if not slab.npending:
                continue
            for match in list(_RUNS.finditer(slab.pending)):
                first, stop = match.span()
                try:
                    count = (
                        self.backend.vrange(
                            slab.region, first * ps, (stop - first) * ps, VOLATILE
                        ).count
                        // ps
                    )
                except OSError:
                    self.mark_errors += 1
                    continue
                if count < stop - first:
                    self.mark_errors += 1
                slab.volatile[first : first + count] = b"\x01" * count
                slab.pending[first : first + count] = bytes(count)
                slab.npending -= count
                self.npending -= count
                marked += count
        return marked

    def purged_owners(self) -> list[Any]:
        """Owners of idle entries whose pages the backend knows purged, found without
        re-pinning; their extents stay allocated and volatile until freed."""
        owners: dict[int, Any] = {}
        for slab in self._slabs.values():
            if not slab.volatile.count(1):
                continue
            for page in self.backend.purged_pages(slab.region):
                if not (slab.volatile[page] and slab.used[page]):
                    continue
                holder = slab.owners[page]
                extents = [holder] if isinstance(holder, Extent) else holder.owners
                for extent in extents:
                    if extent is not None and not extent.active:
                        owners[id(extent.owner)] = extent.owner
        return list(owners.values())

    # -- pages ------------------------------------------------------------------

    def _activate_pages(self, slab: _Slab, first: int, npages: int) -> list[int]:
        """Take pages off the pending list and re-pin the volatile ones: purged pages.

        A re-pin that fails part way leaves the pages it re-pinned non-volatile
        and pending again, and the purges it found in ``slab.lost``: the next
        activation reports them, so that purged bytes are never decoded.
        """
        stop = first + npages
        pending = slab.pending.count(1, first, stop)
        if pending:
            slab.pending[first:stop] = bytes(npages)
            slab.npending -= pending
            self.npending -= pending
        low = slab.volatile.find(1, first, stop)
        if low >= 0:
            high = slab.volatile.rfind(1, first, stop) + 1
            try:
                self._repin(slab, low, high)
            except BaseException:
                # Put back what was taken off the pending list; re-pinned pages
                # that are not volatile any more go back to pending too.
                idle = bytes(slab.volatile[i] ^ 1 for i in range(first, stop))
                slab.pending[first:stop] = idle
                added = idle.count(1)
                slab.npending += added
                self.npending += added
                raise
        if not slab.nlost:
            return []
        lost = [i for i in range(first, stop) if slab.lost[i]]
        if lost:
            slab.lost[first:stop] = bytes(npages)
            slab.nlost -= len(lost)
        return lost

    def _repin(self, slab: _Slab, low: int, high: int) -> None:
        """Re-pin pages, recording each purge in ``slab.lost`` as soon as a call reports it."""
        ps = self.page_size
        while low < high:
            result = self.backend.vrange(slab.region, low * ps, (high - low) * ps, NONVOLATILE)
            done = result.count // ps
            slab.volatile[low : low + done] = bytes(done)
            for page in result.purged_pages:
                if not slab.lost[page]:
                    slab.lost[page] = 1
                    slab.nlost += 1
            low += done

    def _idle_pages(self, slab: _Slab, first: int, npages: int) -> None:
        stop = first + npages
        added = npages - slab.pending.count(1, first, stop) - slab.volatile.count(1, first, stop)
        slab.pending[first:stop] = (
            bytes(0 if slab.volatile[i] else 1 for i in range(first, stop))
            if added != npages
            else b"\x01" * npages
        )
        slab.npending += added
        self.npending += added

    def _lost_on(self, small: _SmallPage, purged: list[int]) -> list[Extent]:
        """Every extent on a small page whose page was purged."""
        if not purged:
            return []
        return [e for e in small.owners if e is not None]

    # -- free runs ----------------------------------------------------------------

    def _take_run(self, npages: int) -> tuple[_Slab, int]:
        """A free run of ``npages``: from a slab's free pages, or a new slab."""
        if npages <= self.slab_pages:
            for bucket in range(_bucket(npages), len(self._free)):
                for ident, start in self._free[bucket]:
                    slab = self._slabs[ident]
                    length = slab.free_start[start]
                    if length >= npages:
                        self._unlink(slab, start, length)
                        if length > npages:
                            self._link(slab, start + npages, length - npages)
                        return slab, start
        slab = self._new_slab(max(npages, self.slab_pages))
        length = slab.free_start[0]
        self._unlink(slab, 0, length)
        if length > npages:
            self._link(slab, npages, length - npages)
        return slab, 0

    def _give_run(self, slab: _Slab, first: int, npages: int) -> None:
        """Free pages, merged with free neighbours; an empty slab goes back to the backend."""
        stop = first + npages
        self._idle_pages(slab, first, npages)
        before = slab.free_end.get(first)
        if before is not None:
            self._unlink(slab, before, first - before)
            first = before
        after = slab.free_start.get(stop)
        if after is not None:
            self._unlink(slab, stop, after)
            stop += after
        self._link(slab, first, stop - first)
        if stop - first == slab.npages:
            # Released first: if the backend refuses, the slab stays ours, free and whole.
            self.backend.release(slab.region)
            self._unlink(slab, 0, slab.npages)
            self.npending -= slab.npending
            del self._slabs[slab.ident]

    def _link(self, slab: _Slab, start: int, length: int) -> None:
        slab.free_start[start] = length
        slab.free_end[start + length] = start
        self._free[_bucket(length)][(slab.ident, start)] = None

    def _unlink(self, slab: _Slab, start: int, length: int) -> None:
        del slab.free_start[start]
        del slab.free_end[start + length]
        del self._free[_bucket(length)][(slab.ident, start)]

    def _new_slab(self, npages: int) -> _Slab:
        region = self.backend.allocate(npages * self.page_size)
        slab = _Slab(region, self._next_slab)
        self._next_slab += 1
        self._slabs[slab.ident] = slab
        self._free[_bucket(slab.npages)][(slab.ident, 0)] = None
        return slab

    # -- accounting -----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Slab, used, volatile and pending bytes; stored bytes and bytes lost to rounding."""
        ps = self.page_size
        total = used = volatile = 0
        for slab in self._slabs.values():
            total += slab.npages
            used += slab.used.count(1)
            both = int.from_bytes(slab.used, "little") & int.from_bytes(slab.volatile, "little")
            volatile += both.bit_count()
        return {
            "slabs": len(self._slabs),
            "slab_bytes": total * ps,
            "used_bytes": used * ps,
            "volatile_bytes": volatile * ps,
            "pending_bytes": self.npending * ps,
            "stored_bytes": self.stored_bytes,
            "wasted_bytes": self.capacity_bytes - self.stored_bytes,
            "mark_errors": self.mark_errors,
        }

    def close(self) -> None:
        """Give every slab back to the backend."""
        for slab in self._slabs.values():
            if not slab.region.released:
                self.backend.release(slab.region)
        self._slabs.clear()
        self._free = [{} for _ in range(64)]
        for partial in self._partial.values():
            partial.clear()
        self.npending = 0
