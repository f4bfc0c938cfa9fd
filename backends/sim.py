"""The ``sim`` backend: a deterministic pure-Python model of volatile memory.

It runs everywhere and makes tests exact: a simulated physical memory size
decides when volatile pages are purged, a seeded random source drives the
``random`` policy and random faults, and purged pages are overwritten with a
poison pattern so that reading purged memory without re-pinning shows.
"""

from __future__ import annotations

import ctypes
import mmap
import operator
import random
from collections import deque
from errno import ENOMEM
from typing import Any

from .contract import Backend, Capabilities, Region
from .pages import PURGED

_POLICIES = ("oldest", "random")


def _address_of(mapping: mmap.mmap) -> int:
    anchor = ctypes.c_char.from_buffer(mapping)
    address = ctypes.addressof(anchor)
    del anchor  # it holds a buffer export that would keep the map from closing
    return address


def _clip(
    spans: list[tuple[int, int, int]], exclude: tuple[int, int, int] | None
) -> list[tuple[int, int, int]]:
    """The parts of ``spans`` outside ``exclude`` = (ident, first, stop)."""
    if exclude is None:
        return spans
    ident_x, first_x, stop_x = exclude
    clipped = []
    for ident, first, count in spans:
        stop = first + count
        if ident != ident_x or stop <= first_x or first >= stop_x:
            clipped.append((ident, first, count))
            continue
        if first < first_x:
            clipped.append((ident, first, first_x - first))
        if stop > stop_x:
            clipped.append((ident, stop_x, stop - stop_x))
    return clipped


class SimBackend(Backend):
    """Volatile memory simulated in Python.

    Args:
        memory: simulated physical memory in bytes, or None for unlimited.
            When the resident pages (all pages but the purged ones) would
            exceed it, volatile pages are purged by ``policy``; when nothing
            volatile is left, :meth:`allocate` raises ``MemoryError`` and a
            re-pin stops short with ``ENOMEM``.
        policy: ``"oldest"`` purges the oldest volatile pages first, like
            :meth:`reclaim`; ``"random"`` picks them with the seeded random source.
        seed: seeds the random source (random policy, ``fault_rate``).
        poison: the byte pattern written over purged pages.
        fault_rate: the probability that a vrange call stops short at a
            random page (with ``ENOMEM`` if at the first).
        page_size: a power of two multiple of the system page size, to model
            machines with larger pages.
    """

    name = "sim"
    capabilities = Capabilities(
        purger="the simulation: pages over the `memory` size (by `policy`) and reclaim()",
        touch_purged="reads the poison pattern; nothing catches it",
        needs="nothing: pure Python",
        fault_injection=True,
    )

    def __init__(
        self,
        *,
        memory: int | None = None,
        policy: str = "oldest",
        seed: int = 0,
        poison: bytes = b"\xdb",
        fault_rate: float = 0.0,
        page_size: int | None = None,
    ) -> None:
        super().__init__(page_size=page_size)
        if memory is not None:
            memory = operator.index(memory)
            if memory < 0:
                raise ValueError(f"sim: memory must not be negative, got {memory}")
        if policy not in _POLICIES:
            raise ValueError(f"sim: policy must be one of {_POLICIES}, got {policy!r}")
        poison = bytes(poison)
        if not poison:
            raise ValueError("sim: poison must be a non-empty byte pattern")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"sim: fault_rate must be within [0, 1], got {fault_rate}")
        self._memory = memory
        self._limit_pages = None if memory is None else memory // self.page_size
        self._policy = policy
        self._rng = random.Random(seed)
        self._poison = (poison * (self.page_size // len(poison) + 1))[: self.page_size]
        self._fault_rate = fault_rate
        self._faults: deque[tuple[int, int]] = deque()
        self._sim = {"pressure_purged_bytes": 0, "faults_injected": 0}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """The simulation works everywhere."""
        return None

    def allocate(self, nbytes: int) -> Region:
        """A new region; purges volatile pages if the simulated memory is full."""
        with self._lock:
            region = super().allocate(nbytes)
            if not self._make_room(0, None):
                self._drop(region)
                raise MemoryError(
                    f"sim: {region.size} more bytes do not fit in the simulated memory "
                    f"of {self._memory} bytes, and nothing volatile is left to purge"
                )
        return region

    def inject_fault(self, *, after: int = 0, errno: int = ENOMEM, calls: int = 1) -> None:
        """Make the next ``calls`` vrange calls stop after ``after`` bytes.

        ``after`` is rounded down to pages; a call cut at its first page
        raises ``OSError(errno)``. A call shorter than ``after`` completes,
        but still uses up its fault.
        """
        after = operator.index(after)
        if after < 0 or calls < 1:
            raise ValueError("inject_fault: after must be >= 0 and calls >= 1")
        with self._lock:
            self._faults.extend([(after // self.page_size, errno)] * calls)

    def _limit(self, npages: int) -> tuple[int, int]:
        if self._faults:
            after, errno = self._faults.popleft()
            self._sim["faults_injected"] += 1
            return min(after, npages), errno
        if self._fault_rate and self._rng.random() < self._fault_rate:
            self._sim["faults_injected"] += 1
            return self._rng.randrange(npages), ENOMEM
        return npages, 0

    def _map(self, nbytes: int) -> tuple[mmap.mmap, int]:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return mapping, _address_of(mapping)

    def _mark(self, region: Region, first: int, npages: int) -> tuple[int, int]:
        return npages, 0

    def _unmark(self, region: Region, first: int, npages: int) -> tuple[int, list[int], int]:
        book = self._book
        err = 0
        wanted = book.count(region.ident, first, first + npages, PURGED)
        if not wanted:
            return npages, [], 0
        if not self._make_room(wanted, (region.ident, first, first + npages)):
            # Re-pin only as many purged pages as there is memory for.
            room = (self._limit_pages or 0) - self._resident()  # a limit is set: no room
            states = book.states(region.ident)
            page = first
            while page < first + npages:
                if states[page] == PURGED:
                    if room == 0:
                        break
                    room -= 1
                page += 1
            npages, err = page - first, ENOMEM
        purged = [
            page
            for span_first, count in book.spans(
                region.ident, first, first + npages, bytes([PURGED])
            )
            for page in range(span_first, span_first + count)
        ]
        return npages, purged, err

    def _purge(self, npages: int) -> int:
        return self._purge_spans(self._victims(npages, None))

    def _resident(self) -> int:
        return self._book.pages - self._book.purged

    def _make_room(self, extra: int, exclude: tuple[int, int, int] | None) -> bool:
        """Purge until ``extra`` more pages fit; False if they cannot."""
        if self._limit_pages is None:
            return True
        over = self._resident() + extra - self._limit_pages
        if over > 0:
            purged = self._purge_spans(self._victims(over, exclude))
            self._sim["pressure_purged_bytes"] += purged * self.page_size
        return self._resident() + extra <= self._limit_pages

    def _victims(
        self, npages: int, exclude: tuple[int, int, int] | None
    ) -> list[tuple[int, int, int]]:
        """Volatile spans to purge, outside ``exclude`` = (ident, first, stop)."""
        if self._policy == "oldest":
            # Ask for more to make up for the pages of the excluded range.
            extra = 0 if exclude is None else exclude[2] - exclude[1]
            spans = _clip(self._book.oldest(npages + extra), exclude)
            victims = []
            for ident, first, count in spans:
                take = min(count, npages)
                if take:
                    victims.append((ident, first, take))
                    npages -= take
            return victims
        pages = [
            (ident, page)
            for ident, first, count in _clip(list(self._book.volatile_spans()), exclude)
            for page in range(first, first + count)
        ]
        chosen = sorted(self._rng.sample(pages, min(npages, len(pages))))
        return [(ident, page, 1) for ident, page in chosen]

    def _purge_spans(self, spans: list[tuple[int, int, int]]) -> int:
        ps = self.page_size
        purged = 0
        for ident, first, count in spans:
            view = self._regions[ident].view
            for page in range(first, first + count):
                view[page * ps : (page + 1) * ps] = self._poison
            self._book.set_purged(ident, first, count)
            purged += count
        return purged

    def _stats(self) -> dict[str, Any]:
        return {
            "memory": self._memory,
            "resident_bytes": self._resident() * self.page_size,
            **self._sim,
        }
