"""The segment's pins: page runs that processes are reading in place.

A pin keeps an entry's pages from being purged, evicted or given back while
a process reads them through a view of the mapping (no copy). It is a row
of the table in page 0: the run's first page and length, the attached
process that holds it (its row in the table of attached processes) and how
many times. A run whose entry was replaced or removed while pinned stays
taken until its last pin goes.

A pin of a process that died counts for nothing: its row is cleared when
found, and the pages it kept are given back by a repair of the page map.

Invariants (under the segment's lock): a row with ``count`` 0 is free; no
two rows have the same run and holder; every run of a live holder's row is
marked taken in the page map.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable

PINS_AT, PINS = 3072, 64
ROW = struct.Struct("<QIHH")  # first page, pages, the holder's attached row, count


class PinTable:
    """The table of pins in one mapping. ``alive(row)``: whether the attached
    process of that row still runs."""

    def __init__(self, mm: mmap.mmap, alive: Callable[[int], bool]) -> None:
        self._mm = mm
        self._alive = alive

    def _rows(self) -> list[tuple[int, int, int, int, int]]:
        """(offset, first, pages, holder, count) of every row in use."""
        found = []
        for n in range(PINS):
            at = PINS_AT + n * ROW.size
            first, pages, holder, count = ROW.unpack_from(self._mm, at)
            if count:
                found.append((at, first, pages, holder, count))
        return found

    def held(self) -> dict[int, int]:
        """first page -> pages, of the runs pinned by live processes."""
        return {first: pages for _, first, pages, holder, _ in self._rows() if self._alive(holder)}

    def add(self, first: int, pages: int, holder: int) -> None:
        """One more pin of a run by ``holder``; ``MemoryError`` if the table is full."""
        free = None
        for n in range(PINS):
            at = PINS_AT + n * ROW.size
            r_first, _, r_holder, count = ROW.unpack_from(self._mm, at)
            if count and (r_first, r_holder) == (first, holder):
                ROW.pack_into(self._mm, at, first, pages, holder, count + 1)
                return
            if free is None and (not count or not self._alive(r_holder)):
                free = at
        if free is None:
            raise MemoryError(f"every one of the segment's {PINS} pins is held")
        ROW.pack_into(self._mm, free, first, pages, holder, 1)

    def release(self, first: int, holder: int) -> tuple[bool, int]:
        """One pin of a run by ``holder`` less: (whether a live process still pins
        it, its pages; 0 if this holder did not pin it)."""
        still, found = False, 0
        for at, r_first, pages, r_holder, count in self._rows():
            if r_first != first:
                continue
            if r_holder == holder:
                found = pages
                count -= 1
                ROW.pack_into(self._mm, at, first if count else 0, pages if count else 0,
                              holder if count else 0, count)  # fmt: skip
            if count and self._alive(r_holder):
                still = True
        return still, found

    def forget_dead(self) -> bool:
        """Rows of processes that died, cleared; whether there were any."""
        dead = [at for at, _, _, holder, _ in self._rows() if not self._alive(holder)]
        for at in dead:
            ROW.pack_into(self._mm, at, 0, 0, 0, 0)
        return bool(dead)
