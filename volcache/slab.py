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
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from typing import cast

from .backends import NONVOLATILE, VOLATILE, Backend, Region

_RUNS = re.compile(b"\x01+")
_NONE = -1
_OFFSET_BITS = 40  # a loc is (slab index << 40) | byte offset
_OFFSET_MASK = OFFSET_MASK = (1 << _OFFSET_BITS) - 1
_MAX_SLOTS = 64  # slots of a shared page: a 64-bit mask says which are taken
#: Bytes of books per page of slab (four state bytes, owner, class, slot mask, count, flag).
PAGE_BOOK_BYTES = 4 + 4 + 1 + 8 + 2 + 1
#: Bytes of books per entry (its link in its shared page's chain).
ENTRY_BOOK_BYTES = 4


def size_classes(page_size: int) -> list[int]:
    """Slot sizes for small entries: from a 64th of a page to half a page, four per doubling."""
    size = smallest = max(16, page_size // _MAX_SLOTS)
    classes = [size]
    while size < page_size // 2:
        classes.extend(size + size // 4 * i for i in range(1, 5))
        size *= 2
    return [c for c in classes if smallest <= c <= page_size // 2]


def slab_of(loc: int) -> int:
    """The slab index part of a ``loc``."""
    return loc >> _OFFSET_BITS


def offset_of(loc: int) -> int:
    """The byte offset part of a ``loc``."""
    return loc & _OFFSET_MASK


class _Slab:
    """One backend region and the books of its pages."""

    __slots__ = (
        "active",
        "free_end",
        "free_start",
        "index",
        "instack",
        "klass",
        "lost",
        "mask",
        "nlost",
        "npages",
        "npending",
        "owner",
        "pending",
        "reader",
        "region",
        "used",
        "volatile",
    )

    def __init__(self, region: Region, index: int) -> None:
        n = region.pages
        self.region = region
        self.reader = region.backend.reader(region)  # dropped with the slab, before the region
        self.index = index
        self.npages = n
        self.volatile = bytearray(n)  # marked volatile in the backend
        self.pending = bytearray(n)  # idle, waiting to be marked
        self.used = bytearray(n)  # holds an entry
        # Found purged by a re-pin whose activation then failed: reported by the
        # next activation, so that a purge once seen is never forgotten.
        self.lost = bytearray(n)
        self.nlost = 0
        self.npending = 0
        # A large run's pages: its entry's id. A shared page: its chain's first id.
        self.owner = array("i", [_NONE]) * n
        self.klass = bytearray(n)  # a shared page's size class, plus one (0: not shared)
        self.mask = array("Q", [0]) * n  # a shared page's taken slots
        self.active = array("H", [0]) * n  # a shared page's active entries
        self.instack = bytearray(n)  # a shared page is on its class's stack of vacancies
        self.free_start: dict[int, int] = {0: n}
        self.free_end: dict[int, int] = {n: 0}


_VACANT = cast("_Slab", None)  # a free place in SlabAllocator._slabs


def _bucket(npages: int) -> int:
    return npages.bit_length() - 1


class SlabAllocator:
    """Carves entries out of backend regions of ``slab_bytes`` each.

    Not thread safe: the cache holds its lock around every call. Calls that
    re-pin return the ids of entries whose bytes a purge took (see
    :meth:`activate`). Callers pass each entry's ``loc`` and ``nbytes`` back,
    and keep activations balanced: an entry is activated once before it is
    deactivated.
    """

    def __init__(self, backend: Backend, slab_bytes: int = 4 << 20) -> None:
        self.backend = backend
        self.page_size = ps = backend.page_size
        self.slab_pages = max(1, slab_bytes // ps)
        self.classes = size_classes(ps)
        self._full = [(1 << (ps // size)) - 1 for size in self.classes]
        # By index; a slab given back leaves _VACANT (None) in its place until
        # reused. A loc always names a live slab, so lookups by loc need no test.
        self._slabs: list[_Slab] = []
        self._vacant_indexes: list[int] = []
        self._free: list[dict[tuple[int, int], None]] = [{} for _ in range(64)]
        # Per class, shared pages with a vacancy as (slab index << 32 | page),
        # the newest last; stale items are skipped when met, and dropped when
        # the stack has doubled since it was last rebuilt.
        self._stacks = [array("q") for _ in self.classes]
        self._stack_limits = [64] * len(self.classes)
        self._link = array("i")  # entry id -> the next entry id on its shared page
        self.npending = 0
        self.stored_bytes = 0
        self.capacity_bytes = 0
        self.mark_errors = 0
        self.count = 0
        self.total_pages = 0

    # -- allocation -------------------------------------------------------------

    def allocate(self, nbytes: int, ident: int) -> tuple[int, list[int]]:
        """An active place for ``nbytes`` (at least 1) of entry ``ident``: (loc, lost ids).

        Raises:
            MemoryError, OSError: from the backend; nothing is changed then.
        """
        if nbytes <= 0:
            raise ValueError(f"nbytes must be positive, got {nbytes!r}")
        lost: list[int] = []
        if nbytes > self.classes[-1]:
            loc = self._allocate_large(nbytes, ident)
        else:
            loc, lost = self._allocate_small(bisect_left(self.classes, nbytes), ident)
        self.stored_bytes += nbytes
        self.capacity_bytes += self._capacity(loc, nbytes)
        self.count += 1
        return loc, lost

    def _allocate_large(self, nbytes: int, ident: int) -> int:
        npages = -(-nbytes // self.page_size)
        slab, first = self._take_run(npages)
        try:
            self._activate_pages(slab, first, npages)  # free pages: a purge loses nothing
        except BaseException:
            self._give_run(slab, first, npages)
            raise
        stop = first + npages
        slab.owner[first:stop] = array("i", [ident]) * npages
        slab.used[first:stop] = b"\x01" * npages
        return slab.index << _OFFSET_BITS | first * self.page_size

    def _allocate_small(self, klass: int, ident: int) -> tuple[int, list[int]]:
        ps = self.page_size
        size = self.classes[klass]
        lost: list[int] = []
        slab, page = self._vacancy(klass)
        if slab is None:
            slab, page = self._take_run(1)
            try:
                self._activate_pages(slab, page, 1)
            except BaseException:
                self._give_run(slab, page, 1)
                raise
            slab.klass[page] = klass + 1
            slab.mask[page] = 0
            slab.active[page] = 0
            slab.owner[page] = _NONE
            slab.used[page] = 1
            self._push(klass, slab, page)
        elif slab.active[page] == 0 and self._activate_pages(slab, page, 1):
            lost = self._chain(slab, page)
        taken = slab.mask[page]
        vacant = ~taken & self._full[klass]
        slot = (vacant & -vacant).bit_length() - 1
        taken |= 1 << slot
        slab.mask[page] = taken
        if taken == self._full[klass]:
            self._stacks[klass].pop()  # the page used is the stack's top
            slab.instack[page] = 0
        slab.active[page] += 1
        link = self._link
        while len(link) <= ident:
            link.extend(array("i", [_NONE]) * max(64, len(link) // 16))
        link[ident] = slab.owner[page]
        slab.owner[page] = ident
        return slab.index << _OFFSET_BITS | page * ps + slot * size, lost

    def _vacancy(self, klass: int) -> tuple[_Slab | None, int]:
        """The newest shared page of a class with a free slot (likely active already)."""
        stack = self._stacks[klass]
        slabs = self._slabs
        while stack:
            item = stack[-1]
            index, page = item >> 32, item & 0xFFFFFFFF
            slab = slabs[index] if index < len(slabs) else None
            if (
                slab is not None
                and page < slab.npages
                and slab.klass[page] == klass + 1
                and slab.mask[page] != self._full[klass]
            ):
                return slab, page
            stack.pop()
        return None, 0

    def _push(self, klass: int, slab: _Slab, page: int) -> None:
        stack = self._stacks[klass]
        stack.append(slab.index << 32 | page)
        slab.instack[page] = 1
        if len(stack) > self._stack_limits[klass]:
            self._rebuild_stack(klass)

    def _rebuild_stack(self, klass: int) -> None:
        seen = set()
        fresh = array("q")
        for item in self._stacks[klass]:
            index, page = item >> 32, item & 0xFFFFFFFF
            slab = self._slabs[index] if index < len(self._slabs) else None
            if (
                item not in seen
                and slab is not None
                and page < slab.npages
                and slab.klass[page] == klass + 1
                and slab.mask[page] != self._full[klass]
            ):
                seen.add(item)
                fresh.append(item)
        self._stacks[klass] = fresh
        self._stack_limits[klass] = max(64, 2 * len(fresh))

    def free(self, loc: int, nbytes: int, ident: int, active: bool) -> None:
        """Give an entry's place back (``active``: it was activated). Its bytes are gone."""
        if active:
            self.deactivate(loc, nbytes)
        slab = self._slabs[loc >> _OFFSET_BITS]
        offset = loc & _OFFSET_MASK
        ps = self.page_size
        page = offset // ps
        self.stored_bytes -= nbytes
        self.capacity_bytes -= self._capacity(loc, nbytes)
        self.count -= 1
        klass = slab.klass[page] - 1
        if klass < 0:
            npages = -(-nbytes // ps)
            slab.owner[page : page + npages] = array("i", [_NONE]) * npages
            slab.used[page : page + npages] = bytes(npages)
            self._give_run(slab, page, npages)
            return
        slot = (offset - page * ps) // self.classes[klass]
        taken = slab.mask[page] & ~(1 << slot)
        slab.mask[page] = taken
        self._unchain(slab, page, ident)
        if taken == 0:
            slab.klass[page] = 0
            slab.used[page] = 0
            slab.instack[page] = 0
            self._give_run(slab, page, 1)
        elif not slab.instack[page]:
            self._push(klass, slab, page)

    def _capacity(self, loc: int, nbytes: int) -> int:
        slab = self._slabs[loc >> _OFFSET_BITS]
        klass = slab.klass[(loc & _OFFSET_MASK) // self.page_size]
        if klass:
            return self.classes[klass - 1]
        return -(-nbytes // self.page_size) * self.page_size

    def _chain(self, slab: _Slab, page: int) -> list[int]:
        """The ids of the entries on a shared page."""
        link = self._link
        found = []
        ident = slab.owner[page]
        while ident != _NONE:
            found.append(ident)
            ident = link[ident]
        return found

    def _unchain(self, slab: _Slab, page: int, ident: int) -> None:
        link = self._link
        current = slab.owner[page]
        if current == ident:
            slab.owner[page] = link[ident]
            return
        while link[current] != ident:
            current = link[current]
        link[current] = link[ident]

    def view(self, loc: int, nbytes: int) -> memoryview:
        """A writable view of an entry's bytes (a new view: release it when done)."""
        offset = loc & _OFFSET_MASK
        return self._slabs[loc >> _OFFSET_BITS].region.view[offset : offset + nbytes]

    def slab(self, loc: int) -> _Slab:
        """The slab of a ``loc``: its ``reader`` reads without the checks of :meth:`read`
        (if its ``nlost`` is 0)."""
        return self._slabs[loc >> _OFFSET_BITS]

    def read(self, loc: int, nbytes: int) -> bytes | None:
        """An entry's bytes, copied without re-pinning its pages; None if a purge took any.

        The pages keep their mode (see the backends' ``read``).
        """
        offset = loc & _OFFSET_MASK
        slab = self._slabs[loc >> _OFFSET_BITS]
        if slab.nlost:
            # A purge that a failed re-pin found, and no activation has reported yet.
            ps = self.page_size
            if slab.lost.find(1, offset // ps, (offset + nbytes - 1) // ps + 1) >= 0:
                return None
        return slab.reader(offset, nbytes)

    def page_of(self, loc: int) -> tuple[int, int]:
        """(slab index, first page) of an entry: entries on one shared page share it."""
        return loc >> _OFFSET_BITS, (loc & _OFFSET_MASK) // self.page_size

    # -- activity -------------------------------------------------------------

    def activate(self, loc: int, nbytes: int) -> list[int]:
        """Make an entry's pages non-volatile; returns the ids of entries a purge took.

        The list includes the entry's own id if its bytes were purged (it is
        still allocated and active: free it). Other ids in it shared a purged
        page and are idle: free them too.

        Raises:
            OSError: if the pages could not all be re-pinned; nothing changed.
        """
        slab = self._slabs[loc >> _OFFSET_BITS]
        page = (loc & _OFFSET_MASK) // self.page_size
        if slab.klass[page]:
            purged = self._activate_pages(slab, page, 1) if slab.active[page] == 0 else []
            slab.active[page] += 1
            return self._chain(slab, page) if purged else []
        npages = -(-nbytes // self.page_size)
        if self._activate_pages(slab, page, npages):
            return [slab.owner[page]]
        return []

    def deactivate(self, loc: int, nbytes: int) -> None:
        """The entry went idle: once its pages hold no active entry, they are pending."""
        slab = self._slabs[loc >> _OFFSET_BITS]
        page = (loc & _OFFSET_MASK) // self.page_size
        if slab.klass[page]:
            slab.active[page] -= 1
            if slab.active[page] == 0:
                self._idle_pages(slab, page, 1)
        else:
            self._idle_pages(slab, page, -(-nbytes // self.page_size))

    def flush(self) -> int:
        """Mark every pending page volatile; returns the pages marked.

        Adjacent pending pages go in one vrange call. A call that stops short
        or fails leaves the rest pending for the next flush.
        """
        ps = self.page_size
        marked = 0
        for slab in self._slabs:
            if slab is None or not slab.npending:
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

    def purged_ids(self) -> list[int]:
        """Ids of idle entries whose pages the backend knows purged, found without
        re-pinning; they stay allocated and volatile until freed."""
        found: dict[int, None] = {}
        for slab in self._slabs:
            if slab is None or slab.volatile.find(1) < 0:
                continue
            for page in self.backend.purged_pages(slab.region):
                if not (slab.volatile[page] and slab.used[page]):
                    continue
                if slab.klass[page]:
                    found.update(dict.fromkeys(self._chain(slab, page)))
                else:
                    found[slab.owner[page]] = None
        return list(found)

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
        if not added:  # each page pending or volatile already (an entry freed after it went idle)
            return
        slab.pending[first:stop] = (
            bytes(0 if slab.volatile[i] else 1 for i in range(first, stop))
            if added != npages
            else b"\x01" * npages
        )
        slab.npending += added
        self.npending += added

    # -- free runs ----------------------------------------------------------------

    def _take_run(self, npages: int) -> tuple[_Slab, int]:
        """A free run of ``npages``: from a slab's free pages, or a new slab."""
        if npages <= self.slab_pages:
            for bucket in range(_bucket(npages), len(self._free)):
                for index, start in self._free[bucket]:
                    slab = self._slabs[index]
                    length = slab.free_start[start]
                    if length >= npages:
                        self._unlink(slab, start, length)
                        if length > npages:
                            self._link_run(slab, start + npages, length - npages)
                        return slab, start
        slab = self._new_slab(max(npages, self.slab_pages))
        length = slab.free_start[0]
        self._unlink(slab, 0, length)
        if length > npages:
            self._link_run(slab, npages, length - npages)
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
        self._link_run(slab, first, stop - first)
        if stop - first == slab.npages:
            # Released first: if the backend refuses, the slab stays ours, free and whole.
            self.backend.release(slab.region)
            self._unlink(slab, 0, slab.npages)
            self.npending -= slab.npending
            self.total_pages -= slab.npages
            self._slabs[slab.index] = _VACANT
            self._vacant_indexes.append(slab.index)

    def _link_run(self, slab: _Slab, start: int, length: int) -> None:
        slab.free_start[start] = length
        slab.free_end[start + length] = start
        self._free[_bucket(length)][(slab.index, start)] = None

    def _unlink(self, slab: _Slab, start: int, length: int) -> None:
        del slab.free_start[start]
        del slab.free_end[start + length]
        del self._free[_bucket(length)][(slab.index, start)]

    def _new_slab(self, npages: int) -> _Slab:
        region = self.backend.allocate(npages * self.page_size)
        if self._vacant_indexes:
            index = self._vacant_indexes.pop()
        else:
            index = len(self._slabs)
            self._slabs.append(_VACANT)
        slab = self._slabs[index] = _Slab(region, index)
        self.total_pages += slab.npages
        self._free[_bucket(slab.npages)][(index, 0)] = None
        return slab

    # -- accounting -----------------------------------------------------------------

    def nbytes(self) -> int:
        """The memory the books take: per page of slab, and per entry."""
        return self.total_pages * PAGE_BOOK_BYTES + self.count * ENTRY_BOOK_BYTES

    def stats(self) -> dict[str, int]:
        """Slab, used, volatile and pending bytes; stored bytes and bytes lost to rounding."""
        ps = self.page_size
        total = used = volatile = 0
        for slab in self._slabs:
            if slab is None:
                continue
            total += slab.npages
            used += slab.used.count(1)
            both = int.from_bytes(slab.used, "little") & int.from_bytes(slab.volatile, "little")
            volatile += both.bit_count()
        return {
            "slabs": sum(1 for slab in self._slabs if slab is not None),
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
        for slab in self._slabs:
            if slab is not None and not slab.region.released:
                self.backend.release(slab.region)
        self._slabs = []
        self._vacant_indexes = []
        self._free = [{} for _ in range(64)]
        self._stacks = [array("q") for _ in self.classes]
        self._link = array("i")
        self.npending = 0
        self.total_pages = 0
        self.count = 0
