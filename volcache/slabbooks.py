"""The slab allocator's books: which pages of which slab hold what, in integers only.

:class:`SlabBooks` decides where an entry goes and keeps each page's state
(volatile, pending, used, lost), the free runs, the size classes' shared
pages and the chains of entries on them. It never calls a backend: where a
call needs one (a new slab, volatile pages to re-pin) it says so and changes
nothing, and :class:`~volcache.slab.SlabAllocator` makes the backend call,
tells the books what came of it, and asks again. That split is the boundary
of the native core: the books are integers, so C can keep them (see
``core/``), and this class is the reference it is tested against.

Addresses are ``loc``\\ s: a slab's index and a byte offset in it.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left

_RUNS = re.compile(b"\x01+")
_NONE = -1
OFFSET_BITS = _OFFSET_BITS = 40  # a loc is (slab index << 40) | byte offset
OFFSET_MASK = (1 << _OFFSET_BITS) - 1
MAX_ENTRY = 1 << _OFFSET_BITS  # bytes of a slab or an entry, at most (a loc's offset)
_MAX_SLOTS = 64  # slots of a shared page: a 64-bit mask says which are taken
#: Bytes of books per page of slab (four state bytes, owner, class, slot mask, count,
#: flag); the C books take 16 (a byte of state bits).
PAGE_BOOK_BYTES = 4 + 4 + 1 + 8 + 2 + 1
#: Bytes of books per entry id up to the highest in use (its link in its shared page's
#: chain; the links go when no entry is left).
ENTRY_BOOK_BYTES = 4
#: What a call needs before it can be made again (a negative first item of its answer).
NEED_SLAB = -1  # (NEED_SLAB, npages): a new slab of at least that many pages
NEED_REPIN = -2  # (NEED_REPIN, (index, first, npages)): re-pin those pages' volatile ones
NEED_ROOM = -3  # (NEED_ROOM, None): the record table is full (the C books' fused put)


def size_classes(page_size: int) -> list[int]:
    """Slot sizes for small entries: from a 64th of a page to half a page, four per doubling."""
    size = smallest = max(16, page_size // _MAX_SLOTS)
    classes = [size]
    while size < page_size // 2:
        classes.extend(size + size // 4 * i for i in range(1, 5))
        size *= 2
    return [c for c in classes if smallest <= c <= page_size // 2]


def _bucket(npages: int) -> int:
    return npages.bit_length() - 1


class _Pages:
    """The books of one slab's pages."""

    __slots__ = (
        "active", "free_end", "free_start", "instack", "klass", "lost", "mask", "nlost",
        "npages", "npending", "owner", "pending", "used", "volatile",
    )  # fmt: skip

    def __init__(self, n: int) -> None:
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
        self.free_start: dict[int, int] = {}  # a free run's first page: its length
        self.free_end: dict[int, int] = {}  # the page after a free run: its first


class SlabBooks:
    """Where entries are and what state each page is in; no backend call.

    Not thread safe: the cache holds its lock. Calls that would need the
    backend answer ``(NEED_SLAB, npages)`` or ``(NEED_REPIN, (index, first,
    npages))`` and change nothing (see :class:`~volcache.slab.SlabAllocator`).
    """

    def __init__(self, page_size: int, slab_pages: int) -> None:
        self.page_size = page_size
        self.slab_pages = slab_pages
        self.classes = size_classes(page_size)
        self._full = [(1 << (page_size // size)) - 1 for size in self.classes]
        self.reset()

    def reset(self) -> None:
        """Forget every slab."""
        self._slabs: list[_Pages | None] = []  # by index; None: given back
        self._vacant_indexes: list[int] = []
        # Free runs by the bit length of their length: (index << 32 | start) in a
        # list each, and each one's place in its list (a run leaving a list is
        # replaced by the list's last: the C books keep them the same way).
        self._free: list[list[int]] = [[] for _ in range(64)]
        self._place: dict[int, int] = {}
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

    # -- slabs --------------------------------------------------------------------------

    def add_slab(self, npages: int) -> int:
        """A new slab of ``npages`` fresh pages (non-volatile, free): its index."""
        if not 0 < npages * self.page_size <= MAX_ENTRY:
            raise ValueError(f"slab books: add_slab refused ({npages} pages)")
        if self._vacant_indexes:
            index = self._vacant_indexes.pop()
        else:
            index = len(self._slabs)
            self._slabs.append(None)
        self._slabs[index] = _Pages(npages)
        self.total_pages += npages
        self._link_run(index, self._slabs[index], 0, npages)  # type: ignore[arg-type]
        return index

    def set_base(self, index: int, address: int) -> None:
        """Where a slab is mapped (the C books write there in their fused put; these
        books write nothing)."""
        self._pages(index)

    def drop_slab(self, index: int) -> None:
        """A slab that :meth:`free` said was empty went back to the backend."""
        slab = self._slabs[index]
        assert slab is not None and slab.free_start.get(0) == slab.npages
        self._unlink(index, slab, 0, slab.npages)
        self.npending -= slab.npending
        self.total_pages -= slab.npages
        self._slabs[index] = None
        self._vacant_indexes.append(index)
        if not self.total_pages:  # no slab left: the books start again (the C ones free all)
            mark_errors = self.mark_errors
            self.reset()
            self.mark_errors = mark_errors

    def slab_indexes(self) -> list[int]:
        """The indexes of the slabs in use."""
        return [i for i, slab in enumerate(self._slabs) if slab is not None]

    def npages(self, index: int) -> int:
        """The pages of a slab."""
        return self._pages(index).npages

    def _pages(self, index: int) -> _Pages:
        slab = self._slabs[index]
        assert slab is not None
        return slab

    # -- allocation -------------------------------------------------------------------

    def allocate(self, nbytes: int, ident: int) -> tuple[int, object]:
        """An active place for ``nbytes`` of entry ``ident``: (loc, ids a purge took),
        or what it needs first (see the class)."""
        if not 0 < nbytes <= MAX_ENTRY:
            raise ValueError(f"nbytes must be positive and at most 2**40, got {nbytes!r}")
        if nbytes > self.classes[-1]:
            return self._allocate_large(nbytes, ident)
        return self._allocate_small(bisect_left(self.classes, nbytes), nbytes, ident)

    def _allocate_large(self, nbytes: int, ident: int) -> tuple[int, object]:
        npages = -(-nbytes // self.page_size)
        found = self._find_run(npages)
        if found is None:
            return NEED_SLAB, max(npages, self.slab_pages)
        index, start, length = found
        slab = self._pages(index)
        if slab.volatile.find(1, start, start + npages) >= 0:
            return NEED_REPIN, (index, start, npages)
        self._split_run(index, slab, start, length, npages)
        self._activate_pages(slab, start, npages)  # free pages: a purge loses nothing
        stop = start + npages
        slab.owner[start:stop] = array("i", [ident]) * npages
        slab.used[start:stop] = b"\x01" * npages
        self._count_in(nbytes, npages * self.page_size)
        return index << _OFFSET_BITS | start * self.page_size, []

    def _allocate_small(self, klass: int, nbytes: int, ident: int) -> tuple[int, object]:
        size = self.classes[klass]
        lost: list[int] = []
        index, page = self._vacancy(klass)
        if index < 0:
            found = self._find_run(1)
            if found is None:
                return NEED_SLAB, self.slab_pages
            index, page, length = found
            slab = self._pages(index)
            if slab.volatile[page]:
                return NEED_REPIN, (index, page, 1)
            self._split_run(index, slab, page, length, 1)
            self._activate_pages(slab, page, 1)
            slab.klass[page] = klass + 1
            slab.mask[page] = 0
            slab.active[page] = 0
            slab.owner[page] = _NONE
            slab.used[page] = 1
            self._push(klass, index, slab, page)
        else:
            slab = self._pages(index)
            if slab.active[page] == 0:
                if slab.volatile[page]:
                    return NEED_REPIN, (index, page, 1)
                if self._activate_pages(slab, page, 1):
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
        self._count_in(nbytes, size)
        return index << _OFFSET_BITS | page * self.page_size + slot * size, lost

    def _count_in(self, nbytes: int, capacity: int) -> None:
        self.stored_bytes += nbytes
        self.capacity_bytes += capacity
        self.count += 1

    def _vacancy(self, klass: int) -> tuple[int, int]:
        """(index, page) of the newest shared page of a class with a free slot, or (-1, 0)."""
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
                return index, page
            stack.pop()
        return -1, 0

    def _push(self, klass: int, index: int, slab: _Pages, page: int) -> None:
        stack = self._stacks[klass]
        stack.append(index << 32 | page)
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

    def free(self, loc: int, nbytes: int, ident: int, active: bool) -> int:
        """Give an entry's place back (``active``: it was activated); the index of its
        slab if that is now wholly free (give it back, then :meth:`drop_slab`), else -1."""
        empty = self._free_entry(loc, nbytes, ident, active)
        if not self.count:
            self._link = array("i")  # no entry left: no link either
        return empty

    def _free_entry(self, loc: int, nbytes: int, ident: int, active: bool) -> int:
        if active:
            self.deactivate(loc, nbytes)
        index = loc >> _OFFSET_BITS
        slab = self._pages(index)
        offset = loc & OFFSET_MASK
        ps = self.page_size
        page = offset // ps
        klass = slab.klass[page] - 1
        self.stored_bytes -= nbytes
        self.capacity_bytes -= self.classes[klass] if klass >= 0 else -(-nbytes // ps) * ps
        self.count -= 1
        if klass < 0:
            npages = -(-nbytes // ps)
            slab.owner[page : page + npages] = array("i", [_NONE]) * npages
            slab.used[page : page + npages] = bytes(npages)
            return self._give_run(index, slab, page, npages)
        slot = (offset - page * ps) // self.classes[klass]
        taken = slab.mask[page] & ~(1 << slot)
        slab.mask[page] = taken
        self._unchain(slab, page, ident)
        if taken == 0:
            slab.klass[page] = 0
            slab.used[page] = 0
            slab.instack[page] = 0
            return self._give_run(index, slab, page, 1)
        if not slab.instack[page]:
            self._push(klass, index, slab, page)
        return -1

    def _chain(self, slab: _Pages, page: int) -> list[int]:
        """The ids of the entries on a shared page."""
        link = self._link
        found = []
        ident = slab.owner[page]
        while ident != _NONE:
            found.append(ident)
            ident = link[ident]
        return found

    def _unchain(self, slab: _Pages, page: int, ident: int) -> None:
        link = self._link
        current = slab.owner[page]
        if current == ident:
            slab.owner[page] = link[ident]
            return
        while link[current] != ident:
            current = link[current]
        link[current] = link[ident]

    def page_of(self, loc: int) -> tuple[int, int]:
        """(slab index, first page) of an entry: entries on one shared page share it."""
        return loc >> _OFFSET_BITS, (loc & OFFSET_MASK) // self.page_size

    def has_lost(self, index: int) -> bool:
        """Whether a slab has a purged page that a failed re-pin found, unreported."""
        return self._pages(index).nlost > 0

    def lost_in(self, loc: int, nbytes: int) -> bool:
        """Whether a purge that a failed re-pin found took any of these bytes (and no
        activation has reported it yet)."""
        slab = self._pages(loc >> _OFFSET_BITS)
        if not slab.nlost:
            return False
        offset, ps = loc & OFFSET_MASK, self.page_size
        return slab.lost.find(1, offset // ps, (offset + nbytes - 1) // ps + 1) >= 0

    # -- activity -----------------------------------------------------------------------

    def activate(self, loc: int, nbytes: int) -> tuple[int, object]:
        """Make an entry's pages active: (0, ids a purge took), or what it needs first.

        The ids include the entry's own if its bytes were purged (it is still
        allocated and active: free it); other ids in it shared a purged page
        and are idle: free them too.
        """
        index = loc >> _OFFSET_BITS
        slab = self._pages(index)
        page = (loc & OFFSET_MASK) // self.page_size
        if slab.klass[page]:
            if slab.active[page] == 0:
                if slab.volatile[page]:
                    return NEED_REPIN, (index, page, 1)
                purged = self._activate_pages(slab, page, 1)
            else:
                purged = []
            slab.active[page] += 1
            return 0, self._chain(slab, page) if purged else []
        npages = -(-nbytes // self.page_size)
        if slab.volatile.find(1, page, page + npages) >= 0:
            return NEED_REPIN, (index, page, npages)
        if self._activate_pages(slab, page, npages):
            return 0, [slab.owner[page]]
        return 0, []

    def deactivate(self, loc: int, nbytes: int) -> None:
        """The entry went idle: once its pages hold no active entry, they are pending."""
        slab = self._pages(loc >> _OFFSET_BITS)
        page = (loc & OFFSET_MASK) // self.page_size
        if slab.klass[page]:
            slab.active[page] -= 1
            if slab.active[page] == 0:
                self._idle_pages(slab, page, 1)
        else:
            self._idle_pages(slab, page, -(-nbytes // self.page_size))

    # -- pages --------------------------------------------------------------------------

    def _activate_pages(self, slab: _Pages, first: int, npages: int) -> list[int]:
        """Take non-volatile pages off the pending list: the purged ones a re-pin found."""
        stop = first + npages
        self._off_pending(slab, first, npages)
        if not slab.nlost:
            return []
        lost = [i for i in range(first, stop) if slab.lost[i]]
        if lost:
            slab.lost[first:stop] = bytes(npages)
            slab.nlost -= len(lost)
        return lost

    def _off_pending(self, slab: _Pages, first: int, npages: int) -> None:
        stop = first + npages
        pending = slab.pending.count(1, first, stop)
        if pending:
            slab.pending[first:stop] = bytes(npages)
            slab.npending -= pending
            self.npending -= pending

    def take_pending(self, index: int, first: int, npages: int) -> tuple[int, int]:
        """Before a re-pin: the pages leave the pending list; (low, high) of their volatile ones."""
        slab = self._pages(index)
        stop = first + npages
        self._off_pending(slab, first, npages)
        low = slab.volatile.find(1, first, stop)
        if low < 0:
            return first, first
        return low, slab.volatile.rfind(1, first, stop) + 1

    def repinned(self, index: int, first: int, count: int, purged: tuple[int, ...]) -> None:
        """A re-pin made ``count`` pages from ``first`` non-volatile; ``purged``: those of
        them (page indexes in the slab) that had been purged."""
        slab = self._pages(index)
        slab.volatile[first : first + count] = bytes(count)
        for page in purged:
            if not slab.lost[page]:
                slab.lost[page] = 1
                slab.nlost += 1

    def restore_pending(self, index: int, first: int, npages: int) -> None:
        """A re-pin failed part way: the pages that are not volatile are pending again."""
        slab = self._pages(index)
        stop = first + npages
        idle = bytes(slab.volatile[i] ^ 1 for i in range(first, stop))
        before = slab.pending.count(1, first, stop)
        slab.pending[first:stop] = idle
        added = idle.count(1) - before
        slab.npending += added
        self.npending += added

    def _idle_pages(self, slab: _Pages, first: int, npages: int) -> None:
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

    def pending_runs(self) -> list[tuple[int, int, int]]:
        """(index, first, stop) of each run of adjacent pending pages."""
        runs: list[tuple[int, int, int]] = []
        for index, slab in enumerate(self._slabs):
            if slab is None or not slab.npending:
                continue
            runs.extend((index, *match.span()) for match in _RUNS.finditer(slab.pending))
        return runs

    def marked(self, index: int, first: int, count: int) -> None:
        """``count`` pending pages from ``first`` were marked volatile."""
        slab = self._pages(index)
        slab.volatile[first : first + count] = b"\x01" * count
        slab.pending[first : first + count] = bytes(count)
        slab.npending -= count
        self.npending -= count

    def volatile_slabs(self) -> list[int]:
        """Indexes of the slabs with a volatile page."""
        return [i for i, s in enumerate(self._slabs) if s is not None and s.volatile.find(1) >= 0]

    def ids_on(self, index: int, pages: tuple[int, ...]) -> list[int]:
        """The ids of the idle entries on these pages (purged ones, found without re-pinning)."""
        slab = self._pages(index)
        found: dict[int, None] = {}
        for page in pages:
            if not (slab.volatile[page] and slab.used[page]):
                continue
            if slab.klass[page]:
                found.update(dict.fromkeys(self._chain(slab, page)))
            else:
                found[slab.owner[page]] = None
        return list(found)

    # -- free runs ----------------------------------------------------------------------

    def _find_run(self, npages: int) -> tuple[int, int, int] | None:
        """(index, start, length) of a free run of at least ``npages``, or None (then a
        new slab makes one, which the same search finds next: no other run fits)."""
        for bucket in range(_bucket(npages), len(self._free)):
            for run in self._free[bucket]:
                index, start = run >> 32, run & 0xFFFFFFFF
                length = self._pages(index).free_start[start]
                if length >= npages:
                    return index, start, length
        return None

    def _split_run(self, index: int, slab: _Pages, start: int, length: int, npages: int) -> None:
        self._unlink(index, slab, start, length)
        if length > npages:
            self._link_run(index, slab, start + npages, length - npages)

    def _give_run(self, index: int, slab: _Pages, first: int, npages: int) -> int:
        """Free pages, merged with free neighbours; the slab's index if it is all free."""
        stop = first + npages
        self._idle_pages(slab, first, npages)
        before = slab.free_end.get(first)
        if before is not None:
            self._unlink(index, slab, before, first - before)
            first = before
        after = slab.free_start.get(stop)
        if after is not None:
            self._unlink(index, slab, stop, after)
            stop += after
        self._link_run(index, slab, first, stop - first)
        return index if stop - first == slab.npages else -1

    def _link_run(self, index: int, slab: _Pages, start: int, length: int) -> None:
        slab.free_start[start] = length
        slab.free_end[start + length] = start
        bucket = self._free[_bucket(length)]
        run = index << 32 | start
        self._place[run] = len(bucket)
        bucket.append(run)

    def _unlink(self, index: int, slab: _Pages, start: int, length: int) -> None:
        del slab.free_start[start]
        del slab.free_end[start + length]
        bucket = self._free[_bucket(length)]
        place = self._place.pop(index << 32 | start)
        last = bucket.pop()
        if place < len(bucket):
            bucket[place] = last
            self._place[last] = place

    # -- accounting -------------------------------------------------------------------

    def nbytes(self) -> int:
        """The memory the books take: per page of slab, and per entry."""
        return self.total_pages * PAGE_BOOK_BYTES + len(self._link) * ENTRY_BOOK_BYTES

    def page_counts(self) -> tuple[int, int, int]:
        """(slab pages, used pages, used pages that are volatile)."""
        total = used = volatile = 0
        for slab in self._slabs:
            if slab is None:
                continue
            total += slab.npages
            used += slab.used.count(1)
            both = int.from_bytes(slab.used, "little") & int.from_bytes(slab.volatile, "little")
            volatile += both.bit_count()
        return total, used, volatile
