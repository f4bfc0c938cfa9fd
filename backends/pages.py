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
from collections import Counter, OrderedDict
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


class _Run:
    """Pages marked volatile by one call: the unit of age."""

    __slots__ = ("first", "ident", "live", "npages")

    def __init__(self, ident: int, first: int, npages: int) -> None:
        self.ident = ident
        self.first = first
        self.npages = npages
        self.live = npages  # pages of the run still volatile and not purged


class PageBook:
    """Page states of regions (by region ident) and volatile runs, oldest first.

    Not thread safe: the owning backend holds its lock around every call.
    """

    def __init__(self) -> None:
        self._states: dict[int, bytearray] = {}
        # For each page, the run that made it volatile (0: none), so that a page
        # re-pinned and marked again later ages from its newest marking.
        self._stamps: dict[int, array] = {}
        self._runs: OrderedDict[int, _Run] = OrderedDict()
        self._next_run = 1
        self.pages = 0
        self.volatile = 0  # VOL or PURGED
        self.purged = 0  # PURGED

    def add(self, ident: int, npages: int) -> None:
        """Track a new region of ``npages`` non-volatile pages."""
        self._states[ident] = bytearray(npages)
        self._stamps[ident] = array("Q", bytes(8 * npages))
        self.pages += npages

    def remove(self, ident: int) -> None:
        """Forget a region and every run that pointed into it."""
        states = self._states.pop(ident)
        stamps = self._stamps.pop(ident)
        self._unstamp(stamps, 0, len(stamps))
        self.pages -= len(states)
        self.volatile -= len(states) - states.count(NONVOL)
        self.purged -= states.count(PURGED)

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
        assert states.count(NONVOL, first, first + npages) == npages
        run = self._next_run
        self._next_run += 1
        self._runs[run] = _Run(ident, first, npages)
        states[first : first + npages] = bytes([VOL]) * npages
        self._stamps[ident][first : first + npages] = array("Q", [run]) * npages
        self.volatile += npages

    def set_nonvolatile(self, ident: int, first: int, npages: int) -> None:
        """Make pages non-volatile, whatever they were."""
        states = self._states[ident]
        stop = first + npages
        self.volatile -= npages - states.count(NONVOL, first, stop)
        self.purged -= states.count(PURGED, first, stop)
        states[first:stop] = bytes(npages)
        self._unstamp(self._stamps[ident], first, stop)

    def set_purged(self, ident: int, first: int, npages: int) -> None:
        """Record that volatile pages were purged."""
        states = self._states[ident]
        stop = first + npages
        assert states.count(VOL, first, stop) == npages
        states[first:stop] = bytes([PURGED]) * npages
        self._unstamp(self._stamps[ident], first, stop)
        self.purged += npages

    def oldest(self, npages: int) -> list[tuple[int, int, int]]:
        """Up to ``npages`` volatile, unpurged pages, oldest marking first.

        Returns spans ``(ident, first, npages)``; nothing is changed.
        """
        found: list[tuple[int, int, int]] = []
        for run_id, run in self._runs.items():
            if npages <= 0:
                break
            if run.live == run.npages:
                spans = [(run.first, run.npages)]
            else:
                spans = self._live_spans(run_id, run)
            for first, count in spans:
                take = min(count, npages)
                found.append((run.ident, first, take))
                npages -= take
                if npages <= 0:
                    break
        return found

    def volatile_spans(self) -> Iterator[tuple[int, int, int]]:
        """Every volatile, unpurged span ``(ident, first, npages)``, in address order."""
        for ident in self._states:
            for first, count in self.spans(ident, 0, len(self._states[ident]), bytes([VOL])):
                yield ident, first, count

    def _live_spans(self, run_id: int, run: _Run) -> list[tuple[int, int]]:
        stamps = self._stamps[run.ident]
        spans: list[tuple[int, int]] = []
        page = run.first
        stop = run.first + run.npages
        while page < stop:
            if stamps[page] != run_id:
                page += 1
                continue
            start = page
            while page < stop and stamps[page] == run_id:
                page += 1
            spans.append((start, page - start))
        return spans

    def _unstamp(self, stamps: array, first: int, stop: int) -> None:
        for run_id, count in Counter(stamps[first:stop]).items():
            if run_id == 0:
                continue
            run = self._runs[run_id]
            run.live -= count
            if run.live == 0:
                del self._runs[run_id]
        stamps[first:stop] = array("Q", bytes(8 * (stop - first)))
