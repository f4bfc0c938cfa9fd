"""The backend contract: vrange modes and results, regions, and the base class.

The semantics are those of John Stultz's ``vrange()`` proposal (2014):

    int vrange(unsigned long start, size_t length, int mode, int *purged);

A call returns how many bytes had their mode set, which may be fewer than
asked, like ``write()``; ``purged`` is independent of that count and speaks
only for the part that was processed. :class:`Backend` checks every argument
the same way for every backend, keeps the page states, and leaves the real
work to a few hooks.
"""

from __future__ import annotations

import abc
import enum
import functools
import mmap
import operator
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from errno import ENOMEM
from typing import Any, ClassVar

from .pages import NONVOL, PURGED, VOL, PageBook


class Mode(enum.IntEnum):
    """What :meth:`Backend.vrange` makes a range: purgeable or pinned."""

    VOLATILE = 0
    NONVOLATILE = 1


VOLATILE = Mode.VOLATILE
NONVOLATILE = Mode.NONVOLATILE
_MODES = {0: VOLATILE, 1: NONVOLATILE}


class BackendUnavailable(RuntimeError):
    """A backend that does not work here.

    Attributes:
        name: the backend's name.
        reason: one sentence saying what is missing and what to do about it.
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"volcache backend {name!r} is unavailable here: {reason}")
        self.name = name
        self.reason = reason


class VRange:
    """The result of :meth:`Backend.vrange`.

    Attributes:
        count: bytes whose mode was set, from the start of the range, in whole
            pages. Less than asked means the call stopped early; pages past
            ``count`` keep their old mode.
        purged_pages: sorted indexes (counted from the region's first page) of
            the pages of the processed part that were purged while volatile.
            Always empty for ``VOLATILE``.
        purged: true if there are any.

    Unpacks as ``count, purged = backend.vrange(...)``.
    """

    # A plain slotted class: a frozen dataclass costs a microsecond per result
    # on the re-pin path, which a cache hit takes.
    __slots__ = ("_count", "_pages")

    def __init__(self, count: int, purged_pages: tuple[int, ...] = ()) -> None:
        self._count = count
        self._pages = purged_pages

    @property
    def count(self) -> int:
        """Bytes whose mode was set."""
        return self._count

    @property
    def purged_pages(self) -> tuple[int, ...]:
        """Purged pages of the processed part, from the region's first page."""
        return self._pages

    @property
    def purged(self) -> bool:
        """True if any page of the processed part had been purged."""
        return bool(self._pages)

    def __iter__(self) -> Iterator[int | bool]:
        yield self._count
        yield bool(self._pages)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VRange):
            return NotImplemented
        return (self._count, self._pages) == (other._count, other._pages)

    def __hash__(self) -> int:
        return hash((self._count, self._pages))

    def __repr__(self) -> str:
        return f"VRange(count={self._count}, purged={self.purged}, purged_pages={self._pages!r})"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What differs between backends: documented, never silent.

    Attributes:
        purger: who decides to purge volatile pages.
        touch_purged: what touching a purged page before re-pinning it does.
        needs: what the backend needs from the machine.
        fault_injection: whether :meth:`Backend.inject_fault` works.
    """

    purger: str
    touch_purged: str
    needs: str
    fault_injection: bool = False


class Region:
    """Page-aligned private anonymous memory handed out by a backend.

    New regions are zero filled and non-volatile. ``view`` is a writable
    ``memoryview`` of the whole region; after :meth:`Backend.release` it is
    released and using the region is a ``ValueError``.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_map",
        "_view",
        "address",
        "ident",
        "page_size",
        "size",
    )

    def __init__(self, backend: Backend, mapping: mmap.mmap, address: int, ident: int) -> None:
        self._backend = backend
        self._map: mmap.mmap | None = mapping
        self._view: memoryview | None = memoryview(mapping)
        self.address = address
        self.ident = ident
        self.page_size = backend.page_size
        self.size = len(mapping)

    @property
    def view(self) -> memoryview:
        """A writable view of the whole region."""
        if self._view is None:
            raise ValueError(f"{self!r} was released")
        return self._view

    @property
    def pages(self) -> int:
        """The number of pages in the region."""
        return self.size // self.page_size

    @property
    def released(self) -> bool:
        """True once the region was released (or its backend closed)."""
        return self._view is None

    @property
    def backend(self) -> Backend:
        """The backend that owns the region."""
        return self._backend

    def _drop(self) -> None:
        view, self._view = self._view, None
        mapping, self._map = self._map, None
        try:
            if view is not None:
                view.release()
            if mapping is not None:
                mapping.close()
        except BufferError:
            # Someone still holds a view derived from ours; the mapping is
            # unmapped when the last of them is gone, never before.
            pass

    def __repr__(self) -> str:
        state = "released" if self.released else f"{self.pages} pages"
        return f"<Region {self._backend.name}#{self.ident} at {self.address:#x}, {state}>"


_ALL: weakref.WeakSet[Backend] = weakref.WeakSet()


def _bytes_unless_purged(
    read_bytes: Callable[[Region, int, int], tuple[bytes, tuple[int, ...]]],
    region: Region, start: int, length: int,
) -> bytes | None:  # fmt: skip
    data, purged = read_bytes(region, start, length)
    return None if purged else data


def _new_locks_in_child() -> None:
    # A lock held at fork() by another thread stays held in the child, where
    # that thread does not exist: every later call (and close at exit) would hang.
    for backend in list(_ALL):
        backend._lock = threading.RLock()


os.register_at_fork(after_in_child=_new_locks_in_child)


class Backend(abc.ABC):
    """Hands out regions and sets their volatility with vrange semantics.

    Subclasses implement ``_map``, ``_mark``, ``_unmark``, ``_purge`` and
    ``unavailable_reason``; this class checks arguments, keeps the page book,
    the lock and the counters, so that every backend fails the same way.
    Backends are thread safe and context managers.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, *, page_size: int | None = None) -> None:
        base = mmap.PAGESIZE
        if page_size is None:
            page_size = base
        page_size = operator.index(page_size)
        if page_size < base or page_size & (page_size - 1):
            raise ValueError(
                f"page_size must be a power of two and at least {base}, got {page_size}"
            )
        self.page_size: int = page_size
        self._lock = threading.RLock()
        _ALL.add(self)
        self._book = PageBook()
        self._regions: dict[int, Region] = {}
        self._next_ident = 1
        self._closed = False
        self._counters = {"vrange_calls": 0, "purged_bytes": 0, "reclaimed_bytes": 0}

    # -- what subclasses provide -------------------------------------------

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None if the backend works here, else one sentence a user can act on."""

    @abc.abstractmethod
    def _map(self, nbytes: int) -> tuple[mmap.mmap, int]:
        """Map ``nbytes`` (whole pages) of zeroed private anonymous memory: (map, address)."""

    @abc.abstractmethod
    def _mark(self, region: Region, first: int, npages: int) -> tuple[int, int]:
        """Make non-volatile pages volatile: (pages done, errno if stopped early else 0)."""

    @abc.abstractmethod
    def _unmark(self, region: Region, first: int, npages: int) -> tuple[int, list[int], int]:
        """Re-pin pages of any state: (pages done, purged page indexes, errno or 0).

        The book still holds the old states; the caller updates it afterwards.
        """

    @abc.abstractmethod
    def _purge(self, npages: int) -> int:
        """Purge up to ``npages`` volatile pages, oldest first; return pages purged."""

    def _limit(self, npages: int) -> tuple[int, int]:
        """How many pages the next vrange call may process, and the errno if fewer.

        The place where fault injection cuts a call short.
        """
        return npages, 0

    def _before_call(self) -> None:
        """Backend checks at the start of every call (the lock is held)."""

    def _unmap(self, region: Region) -> None:
        """Backend work before a region's memory is dropped."""

    def _close(self) -> None:
        """Backend work after every region was released."""

    def _stats(self) -> dict[str, Any]:
        """Backend-specific entries of :meth:`stats`."""
        return {}

    # -- the contract --------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def allocate(self, nbytes: int) -> Region:
        """A new zero-filled, non-volatile region of at least ``nbytes``.

        Raises:
            ValueError: if ``nbytes`` is not positive, or the backend is closed.
            MemoryError: if the memory cannot be had.
        """
        nbytes = operator.index(nbytes)
        if nbytes <= 0:
            raise ValueError(f"allocate: nbytes must be positive, got {nbytes}")
        size = -(-nbytes // self.page_size) * self.page_size
        with self._lock:
            self._check_open()
            self._before_call()
            mapping, address = self._map(size)
            region = Region(self, mapping, address, self._next_ident)
            self._next_ident += 1
            self._regions[region.ident] = region
            self._book.add(region.ident, region.pages)
        return region

    def vrange(self, region: Region, start: int, length: int, mode: Mode | int) -> VRange:
        """Set the mode of ``length`` bytes (rounded up to pages) from ``start``.

        Returns a :class:`VRange`. A short ``count`` means the call stopped
        early; ``purged_pages`` lists the purged pages of the processed part.

        Raises:
            ValueError: a bad mode, an unaligned or negative start, a negative
                length, a range outside the region, a released region or a
                closed backend (EINVAL).
            OSError: if nothing could be processed, with its errno.
        """
        try:
            checked = _MODES.get(mode)
        except TypeError:  # unhashable
            checked = None
        if checked is None or isinstance(mode, float):
            raise ValueError(f"vrange: mode must be VOLATILE or NONVOLATILE, got {mode!r}")
        mode = checked
        start = operator.index(start)
        length = operator.index(length)
        if start < 0 or start % self.page_size:
            raise ValueError(
                f"vrange: start must be a non-negative multiple of the page size "
                f"({self.page_size}), got {start}"
            )
        if length < 0:
            raise ValueError(f"vrange: length must not be negative, got {length}")
        first = start // self.page_size
        npages = -(-length // self.page_size)
        with self._lock:
            self._check_open()
            self._before_call()
            self._check_region(region)
            if first + npages > region.pages:
                raise ValueError(
                    f"vrange: [{start}, {start + length}) is outside {region!r} "
                    f"of {region.size} bytes"
                )
            if npages == 0:
                return VRange(0)
            self._counters["vrange_calls"] += 1
            allowed, err = self._limit(npages)
            done, purged = 0, list[int]()
            if allowed and mode is VOLATILE:
                done, stop_err = self._mark_range(region, first, allowed)
            elif allowed:
                done, purged, stop_err = self._unmark(region, first, allowed)
                if done:
                    self._book.set_nonvolatile(region.ident, first, done)
                self._counters["purged_bytes"] += len(purged) * self.page_size
            if done < allowed:
                err = stop_err
        if done == 0:
            raise OSError(err, f"vrange: {os.strerror(err)} (nothing was processed)")
        return VRange(done * self.page_size, tuple(purged))

    def read(self, region: Region, start: int, length: int, into: Any) -> tuple[int, ...]:
        """Copy ``length`` bytes from ``start`` into ``into`` without re-pinning any page.

        The optimistic read: pages keep their mode. Pinned pages are copied; a
        volatile page is copied and then checked not to have been purged
        meanwhile; the backend sees the pages used (its recency for purging).
        Returns the pages (indexes from the region's first) found purged,
        before or during the copy: their bytes in ``into`` must not be used.
        A page not listed held exactly what was written before it was marked.

        Raises:
            ValueError: a negative start or length, a range outside the
                region, a released region or a closed backend.
            TypeError: ``into`` is not a writable buffer of ``length`` bytes or more.
        """
        start, length = self._check_read(region, start, length)
        target = memoryview(into)
        if target.readonly or target.nbytes < length:
            raise TypeError(
                f"read: into must be a writable buffer of at least {length} bytes, got {into!r}"
            )
        with self._lock:
            self._check_open()
            self._check_region(region)
            return tuple(self._read(region, start, length, target.cast("B")))

    def read_bytes(self, region: Region, start: int, length: int) -> tuple[bytes, tuple[int, ...]]:
        """:meth:`read` into a new ``bytes``: (the bytes, the pages found purged)."""
        start, length = self._check_read(region, start, length)
        with self._lock:
            self._check_open()
            self._check_region(region)
            return self._read_bytes(region, start, length)

    def reader(self, region: Region) -> Callable[[int, int], bytes | None]:
        """:meth:`read_bytes` of one region, for an owner that reads it often.

        ``reader(region)(start, length)`` is the bytes, or None if any page
        was found purged. It skips the per-call checks: the caller passes a
        range inside the region, a ``length`` above zero, and stops using it
        once the region is released. Pages keep their mode, as with ``read``.
        """
        with self._lock:
            self._check_open()
            self._check_region(region)
        return functools.partial(_bytes_unless_purged, self.read_bytes, region)

    def page_set(self, region: Region) -> object | None:
        """The region's pages for the cache's C core (a ``volcache._core.PageSet``),
        which then re-pins and reads them without a Python call; None where the
        backend's own Python calls must be made (the default)."""
        return None

    def _check_read(self, region: Region, start: int, length: int) -> tuple[int, int]:
        start = operator.index(start)
        length = operator.index(length)
        if start < 0 or length < 0:
            raise ValueError(f"read: start and length must not be negative, got {start}, {length}")
        if not isinstance(region, Region):
            raise TypeError(f"expected a Region, got {type(region).__name__}")
        if start + length > region.size:
            raise ValueError(
                f"read: [{start}, {start + length}) is outside {region!r} of {region.size} bytes"
            )
        return start, length

    def _read(self, region: Region, start: int, length: int, into: memoryview) -> list[int]:
        """Copy under the lock, which the purger takes too: pages purged are known
        from the book and not touched; volatile pages read are made young."""
        if length == 0:
            return []
        ps = self.page_size
        first, stop = start // ps, (start + length - 1) // ps + 1
        book = self._book
        purged = [
            page
            for span, count in book.spans(region.ident, first, stop, bytes([PURGED]))
            for page in range(span, span + count)
        ]
        view = region.view
        if not purged:
            into[:length] = view[start : start + length]
        else:
            lost = set(purged)
            for page in range(first, stop):
                if page not in lost:
                    low, high = max(start, page * ps), min(start + length, (page + 1) * ps)
                    into[low - start : high - start] = view[low:high]
        for span, count in book.spans(region.ident, first, stop, bytes([VOL])):
            book.renew(region.ident, span, count)
        return purged

    def _read_bytes(self, region: Region, start: int, length: int) -> tuple[bytes, tuple[int, ...]]:
        into = bytearray(length)
        purged = self._read(region, start, length, memoryview(into))
        return bytes(into), tuple(purged)

    def settle(self) -> None:
        """Finish the marking work a backend put off; cheap when there is none.

        The kernel backend drains every CPU's LRU batches at most every 10 ms
        and lazily frees again what it marked in between (a page still waiting
        in another CPU's batch is skipped by ``MADV_FREE``); a program about to
        go idle settles so that no such page stays ordinary memory meanwhile.
        """
        with self._lock:
            if not self._closed:
                self._settle()

    def _settle(self) -> None:
        """Subclasses that put marking work off finish it here (under the lock)."""

    def reclaim(self, nbytes: int) -> int:
        """Purge up to ``nbytes`` (rounded up to pages) of volatile memory now.

        The oldest volatile pages go first. Returns the bytes purged.
        """
        nbytes = operator.index(nbytes)
        if nbytes < 0:
            raise ValueError(f"reclaim: nbytes must not be negative, got {nbytes}")
        with self._lock:
            self._check_open()
            self._before_call()
            purged = self._purge(-(-nbytes // self.page_size)) * self.page_size
            self._counters["reclaimed_bytes"] += purged
        return purged

    def purged_pages(self, region: Region) -> tuple[int, ...]:
        """Volatile pages of a region known to be purged now, without re-pinning any.

        A page listed stays volatile (re-pinning it reports it purged); a page
        not listed may still be purged a moment later. For sweeping what a
        purge took before anyone asks for it.
        """
        with self._lock:
            self._check_open()
            self._check_region(region)
            return tuple(self._purged_now(region))

    def _purged_now(self, region: Region) -> list[int]:
        """The pages the book knows purged; a backend that can see more adds them."""
        return [
            page
            for first, count in self._book.spans(region.ident, 0, region.pages, bytes([PURGED]))
            for page in range(first, first + count)
        ]

    def release(self, region: Region) -> None:
        """Give a region's memory back. Using it afterwards is a ``ValueError``."""
        with self._lock:
            self._check_open()
            self._before_call()
            self._check_region(region)
            self._drop(region)

    def close(self) -> None:
        """Release every region and the backend's resources. Idempotent."""
        with self._lock:
            if self._closed:
                return
            for region in list(self._regions.values()):
                self._drop(region)
            self._closed = True
            self._close()

    def stats(self) -> dict[str, Any]:
        """Counters and sizes; still answers after :meth:`close`.

        Every backend reports ``regions``, ``allocated_bytes``,
        ``pinned_bytes`` (non-volatile), ``volatile_bytes``, ``purged_bytes``
        (found purged by re-pinning, cumulative), ``reclaimed_bytes`` (purged
        by :meth:`reclaim`, cumulative) and ``vrange_calls``.
        """
        ps = self.page_size
        with self._lock:
            book = self._book
            stats: dict[str, Any] = {
                "backend": self.name,
                "page_size": ps,
                "regions": len(self._regions),
                "allocated_bytes": book.pages * ps,
                "pinned_bytes": (book.pages - book.volatile) * ps,
                "volatile_bytes": book.volatile * ps,
                **self._counters,
            }
            stats.update(self._stats())
        return stats

    def inject_fault(self, *, after: int = 0, errno: int = ENOMEM, calls: int = 1) -> None:
        """Make the next ``calls`` vrange calls stop after ``after`` bytes.

        ``after`` is rounded down to pages; a call that can process nothing
        raises ``OSError(errno)``. Only where ``capabilities.fault_injection``.
        """
        raise NotImplementedError(f"the {self.name} backend has no fault injection")

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._regions)} regions"
        return f"<{type(self).__name__} {state}>"

    # -- helpers for subclasses ----------------------------------------------

    def _mark_range(self, region: Region, first: int, npages: int) -> tuple[int, int]:
        """Mark the non-volatile spans of a range; pages already volatile keep their age."""
        stop = first + npages
        if self._book.count(region.ident, first, stop, NONVOL) == npages:
            spans: list[tuple[int, int]] = [(first, npages)]
        else:
            spans = list(self._book.spans(region.ident, first, stop, bytes([NONVOL])))
        for span_first, span_pages in spans:
            done, err = self._mark(region, span_first, span_pages)
            if done:
                self._book.set_volatile(region.ident, span_first, done)
            if done < span_pages:
                return span_first + done - first, err
        return npages, 0

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"the {self.name} backend is closed")

    def _check_region(self, region: Region) -> None:
        if not isinstance(region, Region):
            raise TypeError(f"expected a Region, got {type(region).__name__}")
        if region.released:
            raise ValueError(f"{region!r} was released")
        if self._regions.get(region.ident) is not region:
            raise ValueError(f"{region!r} belongs to another backend")

    def _drop(self, region: Region) -> None:
        self._unmap(region)
        self._book.remove(region.ident)
        del self._regions[region.ident]
        region._drop()
