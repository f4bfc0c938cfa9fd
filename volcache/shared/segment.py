"""A segment of shared memory holding a cache's entries, opened by name.

The segment is a file in ``/dev/shm`` (mode 0600: the processes of one
user), mapped ``MAP_SHARED`` by each process at its own address. Its layout
and invariants are in :mod:`.layout`. Every operation holds the segment's
lock (:mod:`.lock`) from its first read to its last write, and marks the
header ``dirty`` while it changes anything: a process killed mid-change
leaves the segment to the next holder, which recovers it (:meth:`Segment._recover`)
before going on. Recovery may lose entries (a cache may), never serve a
wrong byte: a record is LIVE only once its pages are written, and a read
checks the pages' CRC-32 before it returns them.

A purge gives the pages of the least recently used entries back to the
system at once for every process (``MADV_REMOVE`` punches them out of the
file): their records stay PURGED, so that the next lookup of the key
learns it was purged, not that it was never stored.
"""

from __future__ import annotations

import contextlib
import heapq
import mmap
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import layout as L
from .attached import AttachedTable
from .lock import SegmentLock
from .pins import PinTable

_SCAN_BYTES = 1 << 20
_EMPTY_CHUNK = bytes(L.PAGE)
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
#: Where segments live: a tmpfs, so that pages punched out are memory given back.
DIRECTORY = Path("/dev/shm")


class SegmentError(ValueError):
    """The file is not a segment this volcache can use (another format or version)."""


def path_of(name: str) -> Path:
    """The file of segment ``name`` for this user."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"a segment's name is 1-100 of A-Z a-z 0-9 _ . -, got {name!r}")
    return DIRECTORY / f"volcache-{os.getuid()}-{name}"


class Segment:
    """One mapping of a named segment (made if absent) in this process.

    ``size``: the segment's bytes when this call makes it (an existing
    segment keeps its own). Its memory is what it holds: pages never written
    or purged cost nothing.
    """

    def __init__(self, name: str, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise TypeError(f"size must be a positive int of bytes, got {size!r}")
        self.name = name
        self.path = path_of(name)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self.lock = SegmentLock(self._fd)
            with self.lock:
                if os.fstat(self._fd).st_size == 0:
                    L.geometry(size)  # a size too small raises before the file grows
                    os.ftruncate(self._fd, size)
                    try:
                        self._map(size)
                    except OSError:
                        os.ftruncate(self._fd, 0)  # as it was: another size may map
                        raise
                    self._format(size)
                else:
                    self._map(os.fstat(self._fd).st_size)
                    if self.mm[: len(L.MAGIC)] == bytes(len(L.MAGIC)):
                        # Its maker died between sizing it and writing the header.
                        L.geometry(self.size)
                        self._format(self.size)
                    self._check()
                self._attach()
        except BaseException:
            if hasattr(self, "mm"):
                self.mm.close()
            if hasattr(self, "lock"):
                self.lock.forget()
            os.close(self._fd)
            raise

    # -- opening -------------------------------------------------------------------------

    def _map(self, size: int) -> None:
        self.size = size
        self.mm = mmap.mmap(self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.processes = AttachedTable(self.mm)
        self.pins = PinTable(self.mm, self.processes.alive)

    def _format(self, size: int) -> None:
        slots, index_at, map_at, data_at, pages = L.geometry(size)
        L.HEADER.pack_into(
            self.mm, 0, L.MAGIC, L.VERSION, L.PAGE, size, slots, index_at, map_at, data_at,
            pages, 0, 0, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
        self._geometry()

    def _check(self) -> None:
        if self.size < L.PAGE:
            raise SegmentError(f"{self.path} is too short to be a volcache segment")
        fields = L.HEADER.unpack_from(self.mm, 0)
        if fields[0] != L.MAGIC:
            raise SegmentError(f"{self.path} is not a volcache segment (magic {fields[0]!r})")
        if fields[1] != L.VERSION or fields[2] != L.PAGE:
            raise SegmentError(
                f"{self.path} is a segment of layout version {fields[1]} (page {fields[2]}), "
                f"this volcache reads version {L.VERSION} (page {L.PAGE}): remove it "
                "(volcache.SharedVolatileCache.unlink) or use another name"
            )
        if fields[3] != self.size or L.geometry(self.size)[:4] != fields[4:8]:
            raise SegmentError(f"{self.path}: its header does not match its size")
        self._geometry()

    def _geometry(self) -> None:
        fields = L.HEADER.unpack_from(self.mm, 0)
        self.slots, self.index_at, self.map_at, self.data_at, self.pages = fields[4:9]
        self._mask = self.slots - 1

    def _attach(self) -> None:
        """This process's row among the attached ones (under the lock)."""
        if self.pins.forget_dead():  # a dead process's row may be reused: its pins go first
            self._begin()
            self._recover()  # the runs they kept are given back
            self._end()
        self.row = self.processes.attach()

    def attached(self) -> list[int]:
        """The pids of the live processes that opened the segment."""
        with self.lock:
            return self.processes.pids()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` unmapped it in this process."""
        return self._fd < 0

    def close(self) -> None:
        """Unmap (the segment stays for the other processes). Idempotent."""
        if self._fd < 0:
            return
        with contextlib.suppress(BufferError):  # a view still refers to it: unmapped when collected
            self.mm.close()
        self.lock.forget()
        os.close(self._fd)
        self._fd = -1

    def unlink(self) -> None:
        """Remove the segment's name (mappings stay valid until closed)."""
        self.path.unlink(missing_ok=True)

    # -- the header ------------------------------------------------------------------------

    def _get(self, at: int) -> int:
        return L.Q.unpack_from(self.mm, at)[0]  # type: ignore[no-any-return]

    def _set(self, at: int, value: int) -> None:
        L.Q.pack_into(self.mm, at, value)

    def _tick(self) -> int:
        clock = self._get(L.CLOCK_AT) + 1
        self._set(L.CLOCK_AT, clock)
        return clock

    def _begin(self) -> None:
        """Under the lock, before a change: recover a dead holder's, then mark dirty."""
        if self._get(L.DIRTY_AT):
            self._recover()
        self._set(L.DIRTY_AT, 1)

    def _end(self) -> None:
        self._set(L.DIRTY_AT, 0)

    # -- records ---------------------------------------------------------------------------

    def _slot_at(self, slot: int) -> int:
        return self.index_at + slot * L.RECORD.size

    def _record(self, slot: int) -> tuple[int, ...]:
        # Read with pread, not through the mapping: a read fault on a hole of
        # shared memory allocates a page (there is no zero page for it), and
        # probes and scans would fill the index with pages of empty slots.
        return L.RECORD.unpack(os.pread(self._fd, L.RECORD.size, self._slot_at(slot)))

    def _scan(self) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(slot, record) of every slot, read a chunk at a time (no page allocated)."""
        per = _SCAN_BYTES // L.RECORD.size
        for start in range(0, self.slots, per):
            n = min(per, self.slots - start)
            chunk = os.pread(self._fd, n * L.RECORD.size, self._slot_at(start))
            yield from enumerate(L.RECORD.iter_unpack(chunk), start)

    def _state(self, slot: int, state: int) -> None:
        L.STATE.pack_into(self.mm, self._slot_at(slot), state)

    def _find(self, key: bytes, h: int) -> tuple[int, int]:
        """(the key's LIVE or PURGED slot or -1, the first reusable slot on its path)."""
        slot, reusable = h & self._mask, -1
        for _ in range(self.slots):
            state, key_len, rh, first, *_ = self._record(slot)
            if state == L.EMPTY:
                return -1, slot if reusable < 0 else reusable
            if state in (L.TOMBSTONE, L.BUSY):
                if reusable < 0 and state == L.TOMBSTONE:
                    reusable = slot
            elif rh == h and (state == L.PURGED or self._key_is(first, key_len, key)):
                return slot, reusable
            slot = (slot + 1) & self._mask
        return -1, reusable

    def _key_is(self, first: int, key_len: int, key: bytes) -> bool:
        at = self.data_at + first * L.PAGE
        stable = L.HEAD.unpack_from(self.mm, at)[0]
        return stable == len(key) and self.mm[at + L.HEAD.size : at + L.HEAD.size + stable] == key

    def _free_slot(self, slot: int) -> None:
        """A slot that held a record becomes reusable; a run of tombstones that
        ends at an empty slot becomes empty (no probe passes through it)."""
        self._state(slot, L.TOMBSTONE)
        nxt = (slot + 1) & self._mask
        if self._record(nxt)[0] != L.EMPTY:
            return
        while self._record(slot)[0] == L.TOMBSTONE:
            self._state(slot, L.EMPTY)
            slot = (slot - 1) & self._mask

    # -- pages -----------------------------------------------------------------------------

    def _take_pages(self, n: int) -> int:
        """The first page of a free run of ``n``, marked taken; -1 if there is none."""
        at = self.mm.find(b"\x00" * n, self.map_at, self.map_at + self.pages)
        if at < 0:
            return -1
        self.mm[at : at + n] = b"\x01" * n
        self._set(L.TAKEN_AT, self._get(L.TAKEN_AT) + n)
        return at - self.map_at

    def _give_pages(self, first: int, n: int, held: dict[int, int] | None = None) -> None:
        """Pages free again, and their memory given back to the system; a run a live
        process pins stays taken (its last unpin gives it back)."""
        if first in (self.pins.held() if held is None else held):
            return
        self.mm.madvise(mmap.MADV_REMOVE, self.data_at + first * L.PAGE, n * L.PAGE)
        at = self.map_at + first
        self.mm[at : at + n] = b"\x00" * n
        self._set(L.TAKEN_AT, self._get(L.TAKEN_AT) - n)

    # -- the operations --------------------------------------------------------------------

    def get(self, key: bytes, h: int, now: float = 0.0) -> tuple[int, int, bytes | None]:
        """(LIVE, tag, value) if the key is here; (PURGED, 0, None) if its entry was
        purged (or its bytes failed their check); (EMPTY, 0, None) if absent or
        expired at ``now`` (then removed)."""
        with self.lock:
            state, record = self._live(key, h, now, copy=True)
            if state != L.LIVE:
                return state, 0, None
            return L.LIVE, record[9], record[-1]

    def pin(self, key: bytes, h: int, now: float) -> tuple[int, int, int, memoryview | None]:
        """(LIVE, first page, tag, a read-only view of the value in place) with the
        entry's run pinned; (PURGED or EMPTY, 0, 0, None) if it is not here."""
        if self.row < 0:
            raise MemoryError("this process has no row among the segment's attached ones")
        with self.lock:
            state, record = self._live(key, h, now, copy=False)
            if state != L.LIVE:
                return state, 0, 0, None
            _, key_len, _, first, npages, value_len, *_ = record
            self.pins.add(first, npages, self.row)
        at = self.data_at + first * L.PAGE + key_len
        return L.LIVE, first, record[9], memoryview(self.mm)[at : at + value_len].toreadonly()

    def _live(self, key: bytes, h: int, now: float, copy: bool) -> tuple[int, tuple[Any, ...]]:
        """(LIVE, the record and, with ``copy``, a copy of the value) if the key's
        entry is here, its bytes pass their check and it has not expired at
        ``now``; else (PURGED or EMPTY, ()). Under the lock."""
        if self._get(L.DIRTY_AT):  # a holder died mid-change
            self._begin()
            self._end()
        slot, _ = self._find(key, h)
        if slot < 0:
            return L.EMPTY, ()
        record = self._record(slot)
        state, key_len, _, first, _, value_len, _, _, crc, _ = record
        if state == L.PURGED:
            return L.PURGED, ()
        at = self.data_at + first * L.PAGE
        expires = L.HEAD.unpack_from(self.mm, at)[1]
        if expires and now >= expires:
            self._begin()
            self._drop(slot, purged=False)
            self._end()
            return L.EMPTY, ()
        head = self.mm[at : at + key_len]
        if copy:
            data: Any = self.mm[at + key_len : at + key_len + value_len]  # the one copy
        else:
            data = memoryview(self.mm)[at + key_len : at + key_len + value_len]
        good = zlib.crc32(data, zlib.crc32(head)) == crc
        if not copy:
            data.release()
            data = None
        if not good:  # never served: as if purged
            self._begin()
            self._drop(slot, purged=True)
            self._end()
            return L.PURGED, ()
        L.LAST_USE.pack_into(self.mm, self._slot_at(slot) + L.LAST_USE_AT, self._tick())
        return L.LIVE, (*record, data)

    def put(
        self, key: bytes, pickled_key: bytes, h: int, tag: int, value: bytes, expires: float = 0.0
    ) -> None:
        """Store ``value`` under ``key`` (its stable bytes and its pickle), evicting
        the least recently used entries if its pages are not free. ``ValueError``
        if it can never fit."""
        head = L.HEAD.pack(len(key), expires) + key + pickled_key
        need = -(-(len(head) + len(value)) // L.PAGE)
        if need > self.pages // 2:
            raise ValueError(
                f"an entry of {len(head) + len(value)} bytes does not fit a segment whose "
                f"data is {self.pages * L.PAGE} bytes (at most half of it per entry)"
            )
        with self.lock:
            self._begin()
            first = self._take_pages(need)
            while first < 0:
                if not self._evict(max(need, self.pages // 64)):
                    self._end()  # nothing changed that needs a repair
                    raise MemoryError("the segment has no free run of pages for the entry")
                first = self._take_pages(need)
            at = self.data_at + first * L.PAGE
            self.mm[at : at + len(head)] = head
            self.mm[at + len(head) : at + len(head) + len(value)] = value
            crc = zlib.crc32(value, zlib.crc32(head))
            slot, reusable = self._find(key, h)
            old = None
            if slot >= 0:
                record = self._record(slot)
                if record[0] == L.LIVE:
                    old = record[3], record[4]
                else:  # PURGED: live again
                    self._set(L.PURGED_AT, self._get(L.PURGED_AT) - 1)
                    self._set(L.LIVE_AT, self._get(L.LIVE_AT) + 1)
                self._state(slot, L.BUSY)  # first: a half-written record is never LIVE
            elif reusable >= 0:
                slot = reusable
                self._set(L.LIVE_AT, self._get(L.LIVE_AT) + 1)
            else:
                self._give_pages(first, need)
                self._end()
                raise MemoryError("the segment's index is full")
            clock = self._tick()
            L.RECORD.pack_into(
                self.mm, self._slot_at(slot), L.BUSY, len(head), h, first, need, len(value),
                clock, clock, crc, tag,
            )  # fmt: skip
            self._state(slot, L.LIVE)  # last
            if old is not None:
                self._give_pages(*old)
            self._end()

    def unpin(self, key: bytes, h: int, first: int) -> None:
        """One pin of the run at ``first`` less; a run no entry owns any more, and
        nobody pins, is given back."""
        with self.lock:
            self._begin()
            still, pages = self.pins.release(first, self.row)
            if not still and pages:
                slot, _ = self._find(key, h)
                record = self._record(slot) if slot >= 0 else (L.EMPTY, 0, 0, -1)
                if record[0] != L.LIVE or record[3] != first:  # replaced or removed meanwhile
                    self._give_pages(first, pages, held={})
            self._end()

    def delete(self, key: bytes, h: int) -> bool:
        """Remove the key's entry; whether it had one (a purged one counts)."""
        with self.lock:
            slot, _ = self._find(key, h)
            if slot < 0:
                return False
            self._begin()
            self._drop(slot, purged=False)
            self._end()
            return True

    def _drop(self, slot: int, purged: bool) -> None:
        """A record's pages given back; the record PURGED, or gone."""
        state, _, _, first, npages, *_ = self._record(slot)
        if purged and state == L.LIVE:
            self._state(slot, L.PURGED)
            self._set(L.LIVE_AT, self._get(L.LIVE_AT) - 1)
            self._set(L.PURGED_AT, self._get(L.PURGED_AT) + 1)
        elif not purged:
            self._free_slot(slot)
            counter = L.LIVE_AT if state == L.LIVE else L.PURGED_AT
            self._set(counter, self._get(counter) - 1)
        if state == L.LIVE:
            self._give_pages(first, npages)

    def _victims(self, state: int) -> list[tuple[int, int, int]]:
        """(last use, slot, pages) of every record in ``state``."""
        return [(record[7], slot, record[4]) for slot, record in self._scan() if record[0] == state]

    def _evict(self, pages: int) -> bool:
        """Removes entries the clock hand finds unused until ``pages`` pages were
        freed; whether any was (under the lock, dirty)."""
        return self._sweep(pages, purged=False) > 0

    def _sweep(self, pages: int, purged: bool) -> int:
        """CLOCK: from the hand on, a LIVE record used since the hand last passed it
        is marked passed; one not used is dropped (purged, or removed), until
        ``pages`` were freed or two turns found nothing more; the pages freed."""
        hand, clock, freed = self._get(L.HAND_AT) % self.slots, self._get(L.CLOCK_AT), 0
        if self.pins.forget_dead():  # their runs may be kept taken by nobody now
            self._recover()
        held = self.pins.held()
        per = L.PAGE // L.RECORD.size
        for _ in range(0, 2 * self.slots, per):
            n = min(per, self.slots - hand)
            chunk = os.pread(self._fd, n * L.RECORD.size, self._slot_at(hand))
            if chunk == _EMPTY_CHUNK:  # most of a large index: a compare, not 64 records
                hand = (hand + n) % self.slots
                continue
            for slot, record in enumerate(L.RECORD.iter_unpack(chunk), hand):
                if record[0] != L.LIVE or record[3] in held:
                    continue
                if record[7] > record[6]:  # used since: a second chance
                    L.Q.pack_into(self.mm, self._slot_at(slot) + L.SEEN_AT, clock)
                    continue
                self._drop(slot, purged)
                freed += record[4]
                if freed >= pages:
                    self._set(L.HAND_AT, (slot + 1) % self.slots)
                    return freed
            hand = (hand + n) % self.slots
        self._set(L.HAND_AT, hand)
        return freed

    def evict_to(self, count: int, batch: int) -> int:
        """Past ``count`` entries, removes the least recently used ones, ``batch - 1``
        more than needed (one scan of the index serves several stores); how many."""
        with self.lock:
            excess = self._get(L.LIVE_AT) - count
            if excess <= 0:
                return 0
            self._begin()
            held = self.pins.held()
            victims = heapq.nsmallest(
                excess + batch - 1,
                [v for v in self._victims(L.LIVE) if not held or self._record(v[1])[3] not in held],
            )
            for _, slot, _ in victims:
                self._drop(slot, purged=False)
            self._end()
            return len(victims)

    def purge(self, nbytes: int) -> int:
        """Purges the least recently used entries until ``nbytes`` of their pages
        went back to the system; the bytes that did."""
        pages = -(-nbytes // L.PAGE)
        if pages <= 0:
            return 0
        with self.lock:
            if not self._get(L.TAKEN_AT):
                return 0
            self._begin()
            freed = self._sweep(pages, purged=True)
            if freed:
                self._set(L.PURGES_AT, self._get(L.PURGES_AT) + 1)
            self._forget_purged()
            self._end()
        return freed * L.PAGE

    def _forget_purged(self) -> None:
        """Purged records past a quarter of the index are forgotten, oldest first
        (their keys are then absent, not purged): the index keeps room."""
        excess = self._get(L.PURGED_AT) - self.slots // 4
        if excess > 0:
            for _, slot, _ in heapq.nsmallest(excess, self._victims(L.PURGED)):
                self._drop(slot, purged=False)

    def clear(self) -> None:
        """Every entry removed, every page given back."""
        with self.lock:
            self._begin()
            self._set(L.DIRTY_AT, L.CLEARING)  # a holder killed mid-way: the next finishes it
            self._wipe()
            self._end()

    def _wipe(self) -> None:
        # Punched, not written: a hole reads as zeros (EMPTY, free) and costs nothing.
        # Pinned runs stay, taken, for their readers.
        held = self.pins.held()
        self.mm.madvise(mmap.MADV_REMOVE, self.index_at, self.data_at - self.index_at)
        page = 0
        for first, pages in sorted(held.items()):
            if first > page:
                self.mm.madvise(
                    mmap.MADV_REMOVE, self.data_at + page * L.PAGE, (first - page) * L.PAGE
                )
            self.mm[self.map_at + first : self.map_at + first + pages] = b"\x01" * pages
            page = max(page, first + pages)
        if page < self.pages:
            self.mm.madvise(
                mmap.MADV_REMOVE, self.data_at + page * L.PAGE, (self.pages - page) * L.PAGE
            )
        for at in (L.LIVE_AT, L.PURGED_AT):
            self._set(at, 0)
        self._set(L.TAKEN_AT, sum(held.values()))

    def pickled_keys(self, now: float) -> Iterator[bytes]:
        """The pickled keys of the LIVE entries not expired at ``now`` (a snapshot)."""
        with self.lock:
            found = []
            for _, slot, _ in self._victims(L.LIVE):
                _, key_len, _, first, *_ = self._record(slot)
                at = self.data_at + first * L.PAGE
                stable, expires = L.HEAD.unpack_from(self.mm, at)
                if not expires or now < expires:
                    found.append(self.mm[at + L.HEAD.size + stable : at + key_len])
        return iter(found)

    def counts(self) -> dict[str, int]:
        """The segment's counters, as every process sees them."""
        with self.lock:
            fields = L.HEADER.unpack_from(self.mm, 0)
            held = self.pins.held()
        return {
            "live": fields[11], "purged": fields[12], "pages": fields[13],
            "purges": fields[14], "recoveries": fields[15], "pinned_runs": len(held),
            "pinned_pages": sum(held.values()),
        }  # fmt: skip

    # -- recovery -------------------------------------------------------------------------

    def _recover(self) -> None:
        """The holder before died mid-change: make the invariants hold again. A
        BUSY record is dropped; a LIVE one whose pages fall outside the data
        or overlap another's is dropped; the page map and counters are rebuilt
        from the LIVE records, and every page not theirs is given back. A
        clear killed mid-way is finished."""
        if self._get(L.DIRTY_AT) == L.CLEARING:
            self._wipe()
            self._set(L.RECOVERIES_AT, self._get(L.RECOVERIES_AT) + 1)
            return
        owner = bytearray(self.pages)
        live = purged = 0
        for slot, record in self._scan():
            state, key_len, _, first, npages, value_len, *_ = record
            if state == L.BUSY:
                self._state(slot, L.TOMBSTONE)
            elif state == L.LIVE:
                fits = (
                    npages > 0 and first + npages <= self.pages
                    and key_len + value_len <= npages * L.PAGE
                    and not any(owner[first : first + npages])
                )  # fmt: skip
                if fits:
                    owner[first : first + npages] = b"\x01" * npages
                    live += 1
                else:
                    self._state(slot, L.TOMBSTONE)
            elif state == L.PURGED:
                purged += 1
        self.pins.forget_dead()
        for first, pages in self.pins.held().items():  # runs read in place: kept
            owner[first : first + pages] = b"\x01" * min(pages, self.pages - first)
        taken = owner.count(1)
        self.mm[self.map_at : self.map_at + self.pages] = bytes(owner)
        page = 0
        while page < self.pages:
            if owner[page]:
                page += 1
                continue
            end = owner.find(b"\x01", page)
            end = self.pages if end < 0 else end
            self.mm.madvise(mmap.MADV_REMOVE, self.data_at + page * L.PAGE, (end - page) * L.PAGE)
            page = end
        self._set(L.LIVE_AT, live)
        self._set(L.PURGED_AT, purged)
        self._set(L.TAKEN_AT, taken)
        self._set(L.RECOVERIES_AT, self._get(L.RECOVERIES_AT) + 1)
