"""The ``kernel`` backend: ``MADV_FREE`` with exact, race-free purge detection.

Linux never merged vrange(); it has ``MADV_FREE``: lazily freed anonymous
pages that the kernel may drop under memory pressure, which read as zeros once
dropped, and which a write takes back. It cannot say whether a page was
dropped, so marking saves each page's first word aside and writes a non-zero
tag there; re-pinning atomically exchanges the tag with the saved word and
reads the tag back (intact, and the write took the page back) or zero
(purged). Re-pinning makes no system call.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import mmap
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

from ..coremodule import core
from . import clib
from .contract import Backend, Capabilities, Region
from .pages import PURGED, VOL

#: The word written at the start of each volatile page: any non-zero value.
TAG = int.from_bytes(b"volcache", "little")

MADV_PAGEOUT = 21  # Linux 5.4; Python's mmap module does not name it
_PURGE_PASSES = 8  # walks past pages the kernel keeps, per reclaim() call
# Draining every CPU's LRU batches disturbs every CPU that holds something
# (a work item each, waited for), so a backend drains at most this often; the
# pages marked in between are lazily freed again at the next drain.
_DRAIN_EVERY = 0.01  # seconds
_UNDRAINED_MAX = 256  # markings remembered until the next drain; more make the next mark drain


def try_advice(advice: int) -> tuple[str | None, bytes]:
    """madvise a written page of private anonymous memory with ``advice``.

    Returns (why it was refused or None, the page's first 8 bytes afterwards).
    Needs no native helper, so that ``volcache info`` can ask too.
    """
    mapping = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        mapping[:8] = b"volcache"
        try:
            mapping.madvise(advice)
        except OSError as exc:
            return exc.strerror, mapping[:8]
        return None, mapping[:8]
    finally:
        mapping.close()


@functools.cache
def _probe() -> tuple[str | None, bool]:
    """(why the backend cannot work here or None, whether MADV_PAGEOUT works)."""
    if not sys.platform.startswith("linux"):
        return "the kernel backend needs Linux (MADV_FREE); use the sim backend here", False
    reason = clib.unavailable_reason()
    if reason is not None:
        return reason, False
    refused, after = try_advice(mmap.MADV_FREE)
    if refused is not None:
        return (
            f"this kernel rejects MADV_FREE ({refused}); the kernel backend needs "
            "Linux 4.5 or later: use the uffd or sim backend",
            False,
        )
    if after != b"volcache":
        return (
            "MADV_FREE frees pages at once on this kernel (as Linux before 4.12 does "
            "without swap), so volatile memory would always be lost: use the uffd backend",
            False,
        )
    return None, try_advice(MADV_PAGEOUT)[0] is None


def _lazyfree_bytes() -> int | None:
    """The process's lazily freed memory, from /proc/self/smaps_rollup."""
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("LazyFree:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page indexes as (first, npages) runs."""
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return runs


class KernelBackend(Backend):
    """Volatile memory the Linux kernel purges, with exact purge detection.

    Args:
        huge_pages: allow transparent huge pages. Off by default: a huge page
            is purged all or nothing, and re-pinning one 4 KiB page of it pins
            all 2 MiB.
        page_size: must be the system page size (None).
    """

    name = "kernel"
    capabilities = Capabilities(
        purger="the Linux kernel, when memory runs short (reclaim() drops pages at once "
        "with MADV_PAGEOUT)",
        touch_purged="reads zeros (the kernel dropped the page); nothing catches it",
        needs="Linux 4.5+ with a lazy MADV_FREE, and the native helper built at install",
    )

    def __init__(self, *, huge_pages: bool = False, page_size: int | None = None) -> None:
        if page_size not in (None, mmap.PAGESIZE):
            raise ValueError(
                f"kernel: page_size must be the system page size ({mmap.PAGESIZE}), got {page_size}"
            )
        super().__init__()
        self._huge_pages = bool(huge_pages)
        self._native = clib.Counters()
        self._tagged: dict[int, clib.TaggedPages] = {}
        self._page_sets: dict[int, Any] = {}  # region ident -> volcache._core.PageSet
        self._core_calls = array("q", [0, 0])  # vrange calls, purged bytes: the PageSets'
        self._use_dontneed = not _probe()[1]
        # When every CPU was last drained (time.monotonic()), in an array the
        # C core's marks read (core/pageset.c): they leave a drain to this class.
        self._drained = array("d", [-math.inf])
        self._undrained: list[tuple[int, int, int]] = []  # (region, first page, pages) marked since

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Linux, a lazy MADV_FREE and the native helper, or why not."""
        return _probe()[0]

    def _map(self, nbytes: int) -> tuple[mmap.mmap, int]:
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        address = clib.address_of(mapping)
        self._native.count_syscalls()
        if not self._huge_pages:
            try:
                clib.no_huge_pages(address, nbytes)
            except BaseException:
                mapping.close()
                raise
            self._native.count_syscalls()
        return mapping, address

    def _pages_of(self, region: Region) -> clib.TaggedPages:
        tagged = self._tagged.get(region.ident)
        if tagged is None:
            tagged = clib.TaggedPages(region.address, region.pages, self.page_size)
            self._tagged[region.ident] = tagged
        return tagged

    def _mark(self, region: Region, first: int, npages: int) -> tuple[int, int]:
        # A page faulted in on one CPU waits in that CPU's LRU batch for a
        # while, and MADV_FREE from another CPU skips it: it would stay
        # ordinary memory, never purged. Hence the drain before the marking;
        # between drains, markings are remembered and redone after the next.
        now = time.monotonic()
        drain = now - self._drained[0] >= _DRAIN_EVERY or len(self._undrained) >= _UNDRAINED_MAX
        try:
            done, err = self._pages_of(region).mark(first, npages, TAG, drain, self._native)
        except OSError as exc:
            return 0, exc.errno or errno.EIO
        if drain:
            self._drained[0] = now
            self._free_again()
        elif done:
            self._undrained.append((region.ident, first, done))
        return done, err

    def _free_again(self) -> None:
        """Lazily free once more what was marked without a drain since the last one
        (a page skipped then is on the LRU now); pages re-pinned since are left alone."""
        undrained = sorted(self._undrained)  # emptied in place: the PageSets append to it
        self._undrained.clear()
        # Markings of neighbouring pages (a cache filling a slab in order) are
        # merged first: one madvise a span still volatile, not one a marking.
        merged: list[list[int]] = []
        for ident, first, npages in undrained:
            last = merged[-1] if merged else None
            if last is not None and last[0] == ident and first <= last[2]:
                last[2] = max(last[2], first + npages)
            else:
                merged.append([ident, first, first + npages])
        for ident, first, stop in merged:
            tagged = self._tagged.get(ident)
            if tagged is None:  # released since
                continue
            for span, count in self._book.spans(ident, first, stop, bytes([VOL])):
                with contextlib.suppress(OSError):  # as they were: marked, not lazily freed yet
                    tagged.free_again(span, count, self._native)

    def _settle(self) -> None:
        if self._undrained:
            clib.drain(self._native)
            self._drained[0] = time.monotonic()
            self._free_again()

    def _unmark(self, region: Region, first: int, npages: int) -> tuple[int, list[int], int]:
        stop = first + npages
        book = self._book
        if book.count(region.ident, first, stop, VOL) == npages:
            return npages, self._pages_of(region).unmark(first, npages, TAG, self._native), 0
        # Pages our own reclaim dropped are known: report them without a touch.
        purged = [
            page
            for span, count in book.spans(region.ident, first, stop, bytes([PURGED]))
            for page in range(span, span + count)
        ]
        tagged = self._pages_of(region)
        for span, count in book.spans(region.ident, first, stop, bytes([VOL])):
            purged.extend(tagged.unmark(span, count, TAG, self._native))
        purged.sort()
        return npages, purged, 0

    def _read(self, region: Region, start: int, length: int, into: Any) -> list[int]:
        # One native call: tags checked around the copy. The pages' accessed
        # bits, set by the copy, are the recency the kernel's reclaim uses.
        states = self._book.states(region.ident)
        return self._pages_of(region).read(start, length, TAG, states, into)

    def _read_bytes(self, region: Region, start: int, length: int) -> tuple[bytes, tuple[int, ...]]:
        if length == 0:
            return b"", ()
        # bytes(n) with n > 0 is a new object nobody else holds yet: filled in
        # place, it saves a second copy (a bytearray, then bytes of it).
        into = bytes(length)
        purged = self._pages_of(region).read(
            start, length, TAG, self._book.states(region.ident), into
        )
        return into, tuple(purged)

    def reader(self, region: Region) -> Callable[[int, int], bytes | None]:
        """One native call a read, without the lock: the owner of the region keeps
        its pages' modes still while it reads (the kernel's purges are what the
        tags catch), as the cache does under its own lock."""
        with self._lock:
            self._check_open()
            self._check_region(region)
            return self._pages_of(region).reader(TAG, self._book.states(region.ident), region)

    def _purge(self, npages: int) -> int:
        """Page out the oldest volatile pages; pages the kernel keeps are made young.

        ``MADV_PAGEOUT`` skips pages it will not drop (shared with a forked
        child, say): renewed, they stop standing in front of the private pages
        behind them, and the walk goes on for what is still asked.
        """
        self._settle()  # what waits to be lazily freed again: before the oldest pages go
        total = 0
        for _ in range(_PURGE_PASSES):
            spans = self._book.oldest(npages - total)
            if not spans:
                break
            dropped = 0  # pages renewed in this pass are the youngest: the next pass is new pages
            for ident, first, count in spans:
                tagged = self._tagged[ident]
                gone = tagged.pageout(first, count, self._use_dontneed, self._native)
                for run_first, run_pages in _runs(gone):
                    self._book.set_purged(ident, run_first, run_pages)
                if len(gone) < count:
                    kept = sorted(set(range(first, first + count)) - set(gone))
                    for run_first, run_pages in _runs(kept):
                        self._book.renew(ident, run_first, run_pages)
                dropped += len(gone)
            total += dropped
            if total >= npages:
                break
        return total

    def _purged_now(self, region: Region) -> list[int]:
        # The kernel drops lazily freed pages without telling: a volatile page
        # that is not resident was purged (every page was written before it
        # was marked, and a dropped one reads as zeros until written).
        found = super()._purged_now(region)
        tagged = self._pages_of(region)
        for first, count in self._book.spans(region.ident, 0, region.pages, bytes([VOL])):
            found.extend(tagged.gone(first, count, self._native))
        return sorted(found)

    def page_set(self, region: Region) -> object | None:
        """A ``volcache._core.PageSet`` of the region where the C core was built
        (and this class's re-pin is the one in use), else None."""
        if core is None or type(self)._unmark is not KernelBackend._unmark:
            return None
        if type(self)._limit is not Backend._limit:  # fault injection: the Python calls
            return None
        with self._lock:
            self._check_open()
            self._check_region(region)
            pages = self._page_sets.get(region.ident)
            if pages is None:
                tagged = self._pages_of(region)
                book = self._book
                ffi = clib.ffi
                pages = core.PageSet(
                    region.address, region.pages, self.page_size, TAG,
                    ffi.buffer(tagged._saved), book.states(region.ident),
                    book.stamps(region.ident), book.counts, self._core_calls,
                    ffi.buffer(self._native._mismatched), self._lock,
                    ident=region.ident, runs=book.runs, sweep=book.sweep,
                    undrained=self._undrained, drained=self._drained,
                    drain_every=_DRAIN_EVERY, undrained_max=_UNDRAINED_MAX,
                    mark=int(ffi.cast("uintptr_t", ffi.addressof(clib.lib, "vc_mark"))),
                    syscalls=ffi.buffer(self._native._syscalls),
                )  # fmt: skip
                self._page_sets[region.ident] = pages
            return pages

    def _unmap(self, region: Region) -> None:
        pages = self._page_sets.pop(region.ident, None)
        if pages is not None:
            pages.released = True
        self._tagged.pop(region.ident, None)
        self._native.count_syscalls()  # munmap, when the last view of the map is gone

    def _stats(self) -> dict[str, Any]:
        calls, purged = self._core_calls
        return {
            "vrange_calls": self._counters["vrange_calls"] + calls,
            "purged_bytes": self._counters["purged_bytes"] + purged,
            "syscalls": self._native.syscalls,
            "tag_mismatches": self._native.mismatched,
            "reclaim_advice": "MADV_DONTNEED" if self._use_dontneed else "MADV_PAGEOUT",
            "lru_drain": clib.lru_drain(),
            "undrained_marks": len(self._undrained),
            "huge_pages": self._huge_pages,
            "lazyfree_bytes": _lazyfree_bytes(),
        }
