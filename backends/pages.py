"""Per-page modes of a backend's regions, and the age of volatile pages.

Every backend must know which pages are volatile (the kernel backend must not
overwrite saved words by marking a page twice; all of them must purge the
oldest volatile pages first), so the book is shared. Page states live in one
``bytearray`` per region and are scanned with regular expressions, which keeps
the per-page work in C: the re-pin path of a 1 MiB value must not loop over
256 pages in Python.
"""

from __future__ import annotations

import re
from array import array
from collections import OrderedDict
from collections.abc import Iterator

NONVOL = 0
VOL = 1
PURGED = 2  # volatile and known to be purged (by reclaim or a simulated purge)

_SPAN_PATTERNS: dict[bytes, re.Pattern[bytes]] = {}


def _pattern(states: bytes) -> re.Pattern[bytes]:
    pattern = _SPAN_PATTERNS.get(states)
    if pattern is None:
        pattern = re.compile(b"[" + re.escape(states) + b"]+")
        _SPAN_PATTERNS[states] = pattern
    return pattern


class PageBook:
    """Page states of regions (by region ident) and volatile runs, oldest first.

    A run is the pages one call made volatile. A page belongs to the run whose
    id is its stamp; a page re-pinned (stamp 0) or marked again later (a newer
    stamp) has left the run. Runs are checked against the stamps when reclaim
    walks them, and dead runs are swept in amortized constant time, so that
    re-pinning never has to find the runs it touches.

    Not thread safe: the owning backend holds its lock around every call.
    """

    def __init__(self) -> None:
        self._states: dict[int, bytearray] = {}
        self._stamps: dict[int, array] = {}
        self._runs: OrderedDict[int, tuple[int, int, int]] = OrderedDict()  # id -> ident, first, n
        # pages, volatile (VOL or PURGED), purged (PURGED), the next run's id,
        # the runs past which dead ones are swept: in an array, which the C
        # core's re-pins and marks (core/pages.h) update in place too.
        self.counts = array("q", [0, 0, 0, 1, 1024])

    @property
    def pages(self) -> int:
        """Pages of every region tracked."""
        return self.counts[0]

    @pages.setter
    def pages(self, value: int) -> None:
        self.counts[0] = value

    @property
    def volatile(self) -> int:
        """Pages volatile or purged."""
        return self.counts[1]

    @volatile.setter
    def volatile(self, value: int) -> None:
        self.counts[1] = value

    @property
    def purged(self) -> int:
        """Pages known purged."""
        return self.counts[2]

    @purged.setter
    def purged(self, value: int) -> None:
        self.counts[2] = value

    def add(self, ident: int, npages: int) -> None:
        """Track a new region of ``npages`` non-volatile pages."""
        self._states[ident] = bytearray(npages)
        self._stamps[ident] = array("Q", bytes(8 * npages))
        self.pages += npages

    def remove(self, ident: int) -> None:
        """Forget a region; its runs die with it."""
        states = self._states.pop(ident)
        del self._stamps[ident]
        self.pages -= len(states)
        self.volatile -= len(states) - states.count(NONVOL)
        self.purged -= states.count(PURGED)

    def stamps(self, ident: int) -> array:
        """The stamp of each page of a region (read them, do not write them)."""
        return self._stamps[ident]

    def states(self, ident: int) -> bytearray:
        """The state bytes of a region (read them, do not write them)."""
        return self._states[ident]

    def count(self, ident: int, first: int, stop: int, state: int) -> int:
        """How many pages in ``[first, stop)`` are in ``state``."""
        return self._states[ident].count(state, first, stop)

    def spans(self, ident: int, first: int, stop: int, states: bytes) -> Iterator[tuple[int, int]]:
        """Maximal spans ``(first, npages)`` in ``[first, stop)`` whose state is in ``states``."""
        for match in _pattern(states).finditer(self._states[ident], first, stop):
            yield match.start(), match.end() - match.start()

    def set_volatile(self, ident: int, first: int, npages: int) -> None:
        """Mark non-volatile pages volatile, as one run younger than all others."""
        states = self._states[ident]
        counts = self.counts
        run = counts[3]
        counts[3] = run + 1
        self._runs[run] = (ident, first, npages)
        states[first : first + npages] = bytes([VOL]) * npages
        self._stamps[ident][first : first + npages] = array("Q", [run]) * npages
        counts[1] += npages
        if len(self._runs) >= counts[4]:
            self._sweep()

    def renew(self, ident: int, first: int, npages: int) -> None:
        """Volatile pages that could not be purged now: as young as a new marking.

        So that the next walk for the oldest pages moves on to others instead
        of trying the same pages again (pages the kernel will not page out,
        pages whose purge failed).
        """
        counts = self.counts
        run = counts[3]
        counts[3] = run + 1
        self._runs[run] = (ident, first, npages)
        self._stamps[ident][first : first + npages] = array("Q", [run]) * npages
        if len(self._runs) >= counts[4]:
            self._sweep()

    def set_nonvolatile(self, ident: int, first: int, npages: int) -> None:
        """Make pages non-volatile, whatever they were."""
        states = self._states[ident]
        stop = first + npages
        self.volatile -= npages - states.count(NONVOL, first, stop)
        self.purged -= states.count(PURGED, first, stop)
        states[first:stop] = bytes(npages)
        self._stamps[ident][first:stop] = array("Q", bytes(8 * npages))

    def set_purged(self, ident: int, first: int, npages: int) -> None:
        """Record that volatile pages were purged."""
        states = self._states[ident]
        stop = first + npages
        assert states.count(VOL, first, stop) == npages
        states[first:stop] = bytes([PURGED]) * npages
        self._stamps[ident][first:stop] = array("Q", bytes(8 * npages))
        self.purged += npages

    def oldest(self, npages: int) -> list[tuple[int, int, int]]:
        """Up to ``npages`` volatile, unpurged pages, oldest marking first.

        Returns spans ``(ident, first, npages)``; page states are not changed.
        """
        found: list[tuple[int, int, int]] = []
        dead: list[int] = []
        for run, (ident, first, count) in self._runs.items():
            if npages <= 0:
                break
            spans = self._live_spans(run, ident, first, count)
            if not spans:
                dead.append(run)
            for span_first, span_pages in spans:
                take = min(span_pages, npages)
                found.append((ident, span_first, take))
                npages -= take
                if npages <= 0:
                    break
        for run in dead:  # the walk found them: spare the next walk
            del self._runs[run]
        return found

    def volatile_spans(self) -> Iterator[tuple[int, int, int]]:
        """Every volatile, unpurged span ``(ident, first, npages)``, in address order."""
        for ident in self._states:
            for first, count in self.spans(ident, 0, len(self._states[ident]), bytes([VOL])):
                yield ident, first, count

    def _live_spans(self, run: int, ident: int, first: int, npages: int) -> list[tuple[int, int]]:
        stamps = self._stamps.get(ident)
        if stamps is None:
            return []
        stop = first + npages
        window = stamps[first:stop]
        live = window.count(run)
        if live == npages:
            return [(first, npages)]
        spans: list[tuple[int, int]] = []
        if live == 0:
            return spans
        page = 0
        while page < npages:
            if window[page] != run:
                page += 1
                continue
            start = page
            while page < npages and window[page] == run:
                page += 1
            spans.append((first + start, page - start))
        return spans

    @property
    def runs(self) -> OrderedDict[int, tuple[int, int, int]]:
        """The live and dead runs, oldest first (the C core's marks add to it)."""
        return self._runs

    def sweep(self) -> None:
        """Drop the runs that have no live page left (see :meth:`_sweep`)."""
        self._sweep()

    def _sweep(self) -> None:
        """Drop runs with no live page; next sweep when the runs have doubled."""
        for run, (ident, first, npages) in list(self._runs.items()):
            stamps = self._stamps.get(ident)
            if stamps is None or run not in stamps[first : first + npages]:
                del self._runs[run]
        self.counts[4] = max(1024, 2 * len(self._runs))
