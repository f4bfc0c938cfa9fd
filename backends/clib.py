"""The one door to the native helper (``volcache.backends._native``).

Each function checks its arguments in Python, calls C once, and turns a
negative return into ``OSError``. If the helper did not build, or is stale,
:func:`unavailable_reason` says so and the backends that need it report
themselves unavailable; nothing else breaks.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The version of the C declarations this module was written against.
NATIVE_VERSION = 7
MADV_FREE = 8  # Linux 4.5+, the same on every architecture

_SOURCES = Path(__file__).resolve().parent / "native"


def _source_hash() -> str | None:
    """The hash of the C sources beside this file (an editable checkout), as build.py makes it."""
    paths = sorted(_SOURCES.glob("*.[ch]"))
    if not paths:
        return None  # an installed wheel: the sources are not shipped
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _not_built(error: ImportError) -> str:
    """Why the helper cannot be imported: the install's own words if it recorded them."""
    unbuilt = Path(__file__).resolve().parent / "_native.unbuilt"
    try:
        why = unbuilt.read_text().strip()
    except OSError:
        why = str(error)
    return (
        f"the native helper (volcache.backends._native) was not built at install: {why}. "
        "Install a C compiler and the Python headers (apt-get install gcc python3-dev) "
        "and reinstall volcache, or install its wheel"
    )


try:
    from ._native import ffi, lib
except ImportError as exc:  # not built: no compiler at install time, or not Linux
    ffi = lib = None
    _REASON: str | None = _not_built(exc)
else:
    if lib.VC_NATIVE_VERSION != NATIVE_VERSION:
        _REASON = (
            f"the native helper is stale (version {lib.VC_NATIVE_VERSION}, this code needs "
            f"{NATIVE_VERSION}); rebuild it by reinstalling volcache (pip install -e .)"
        )
        ffi = lib = None
    elif _source_hash() not in (None, ffi.string(lib.vc_source_hash).decode()):
        _REASON = (
            "the native helper is stale: its C sources changed since it was built; "
            "rebuild it by reinstalling volcache (pip install -e .)"
        )
        ffi = lib = None
    else:
        _REASON = None


def unavailable_reason() -> str | None:
    """None if the native helper is loaded and current, else what to do about it."""
    return _REASON


def _check(result: int, what: str) -> int:
    if result < 0:
        raise OSError(-result, f"{what}: {os.strerror(-result)}")
    return result


def address_of(mapping: mmap.mmap) -> int:
    """The address of a writable mmap's first byte."""
    return int(ffi.cast("uintptr_t", ffi.from_buffer(mapping)))


def madvise(address: int, length: int, advice: int) -> None:
    """``madvise(2)``; raises ``OSError`` on failure."""
    _check(lib.vc_madvise(address, length, advice), "madvise")


def no_huge_pages(address: int, length: int) -> None:
    """``MADV_NOHUGEPAGE``; a kernel without transparent huge pages (EINVAL) has none to refuse."""
    result = lib.vc_madvise(address, length, mmap.MADV_NOHUGEPAGE)
    if result < 0 and -result != errno.EINVAL:
        _check(result, "madvise(MADV_NOHUGEPAGE)")


class Counters:
    """Counters the C code increments: system calls and tag mismatches."""

    def __init__(self) -> None:
        self._syscalls = ffi.new("unsigned long[1]")
        self._mismatched = ffi.new("unsigned long[1]")

    @property
    def syscalls(self) -> int:
        """System calls made by the native helper."""
        return self._syscalls[0]

    @property
    def mismatched(self) -> int:
        """Pages found written to while volatile."""
        return self._mismatched[0]

    def count_syscalls(self, n: int = 1) -> None:
        """Count system calls made from Python on the native helper's behalf."""
        self._syscalls[0] += n


class TaggedPages:
    """The native state of one region: saved first words, scratch for results."""

    def __init__(self, address: int, npages: int, page_size: int) -> None:
        self.address = address
        self.npages = npages
        self.page_size = page_size
        self._saved = ffi.new("uint64_t[]", npages)
        self._purged = ffi.new("uint32_t[]", npages)
        self._gone = ffi.new("uint8_t[]", npages)
        self._err = ffi.new("int[1]")

    def _span(self, first: int, npages: int) -> int:
        if first < 0 or npages <= 0 or first + npages > self.npages:
            raise ValueError(f"pages [{first}, {first + npages}) outside 0..{self.npages}")
        return self.address + first * self.page_size

    def mark(
        self, first: int, npages: int, tag: int, drain: bool, counters: Counters
    ) -> tuple[int, int]:
        """Tag and lazily free pages, after draining every CPU's LRU batches if
        ``drain``: (pages marked, errno if fewer else 0).

        Raises:
            OSError: if no page could be marked.
        """
        address = self._span(first, npages)
        done = lib.vc_mark(
            address,
            npages,
            self.page_size,
            tag,
            int(drain),
            self._saved + first,
            self._err,
            counters._syscalls,
        )
        _check(done, "madvise(MADV_FREE)")
        return done, self._err[0]

    def unmark(self, first: int, npages: int, tag: int, counters: Counters) -> list[int]:
        """Re-pin tagged pages; the purged ones, as region page indexes."""
        address = self._span(first, npages)
        n = lib.vc_unmark(
            address,
            npages,
            self.page_size,
            tag,
            self._saved + first,
            self._purged,
            counters._mismatched,
        )
        return [first + i for i in self._purged[0:n]]

    def read(self, start: int, length: int, tag: int, states: bytearray, into: Any) -> list[int]:
        """Copy bytes of the region without re-pinning; the pages found purged.

        ``states`` is the region's page book (pinned, volatile or purged).
        """
        n = lib.vc_read(
            self.address, start, length, self.page_size, tag, self._saved,
            ffi.from_buffer(states), ffi.from_buffer(into), self._purged,
        )  # fmt: skip
        return list(self._purged[0:n]) if n else []

    def reader(
        self, tag: int, states: bytearray, region: Any
    ) -> Callable[[int, int], bytes | None]:
        """``read(start, length)``: the bytes in a new ``bytes``, or None if any page
        was purged; one native call. ``length`` must be above zero. A read after
        ``region`` was released (its ``_view`` gone) raises ``ValueError``."""
        address, page_size, saved, purged = self.address, self.page_size, self._saved, self._purged
        state = ffi.from_buffer(states)
        native, buffer = lib.vc_read, ffi.from_buffer

        def read(start: int, length: int) -> bytes | None:
            # Unmapped memory would crash the process, not raise: a region
            # released (or a backend closed) under its owner is an error here.
            if region._view is None:
                raise ValueError(f"{region!r} was released")
            # bytes(n) with n > 0 is a new object nobody else holds yet: filled
            # in place, it saves a second copy.
            into = bytes(length)
            if native(address, start, length, page_size, tag, saved, state, buffer(into), purged):
                return None
            return into

        return read

    def free_again(self, first: int, npages: int, counters: Counters) -> None:
        """``MADV_FREE`` volatile pages once more (their tags stay in place)."""
        counters.count_syscalls()
        _check(lib.vc_madvise(self._span(first, npages), npages * self.page_size, MADV_FREE),
               "madvise(MADV_FREE)")  # fmt: skip

    def gone(self, first: int, npages: int, counters: Counters) -> list[int]:
        """Pages not resident now (one ``mincore``), as region page indexes; none re-pinned."""
        address = self._span(first, npages)
        n = _check(lib.vc_gone(address, npages, self.page_size, self._gone, counters._syscalls),
                   "mincore")  # fmt: skip
        if n == 0:
            return []
        gone = bytes(ffi.buffer(self._gone, npages))
        return [first + i for i in range(npages) if gone[i]]

    def pageout(self, first: int, npages: int, use_dontneed: bool, counters: Counters) -> list[int]:
        """Drop pages now; those no longer resident, as region page indexes."""
        address = self._span(first, npages)
        n = _check(
            lib.vc_pageout(
                address, npages, self.page_size, use_dontneed, self._gone, counters._syscalls
            ),
            "madvise(MADV_PAGEOUT)",
        )
        if n == npages:
            return list(range(first, first + npages))
        gone = bytes(ffi.buffer(self._gone, npages))
        return [first + i for i in range(npages) if gone[i]]


def floor_read(address: int, length: int, page_size: int, tag: int, into: Any) -> int:
    """The floor of an optimistic read (check tags, copy, check): pages not in place."""
    return lib.vc_floor_read(address, length, page_size, tag, ffi.from_buffer(into))


def drain(counters: Counters) -> None:
    """Drain every CPU's LRU batches now."""
    lib.vc_drain(counters._syscalls)


def lru_drain() -> str:
    """How every CPU's LRU batches are drained before a marking or a page out."""
    return "MADV_COLLAPSE" if lib.vc_drain_method() == 1 else "visiting each CPU"


def uffd_probe(user_mode_only: bool) -> int:
    """0 if a userfaultfd can be made here, else the errno."""
    return -lib.vc_uffd_probe(int(user_mode_only))


class Userfaultfd:
    """A userfaultfd and its native handler thread, which resolves faults on
    missing pages of registered ranges with the zero page and counts them."""

    def __init__(self, user_mode_only: bool, page_size: int) -> None:
        handle = ffi.new("struct vc_uffd **")
        _check(lib.vc_uffd_open(int(user_mode_only), page_size, handle), "userfaultfd")
        self._u = handle[0]
        self._last = ffi.new("uintptr_t *")

    def register(self, address: int, length: int) -> None:
        """Catch missing-page faults in a range (its pages map the zero page now)."""
        _check(lib.vc_uffd_register(self._u, address, length), "UFFDIO_REGISTER")

    def unregister(self, address: int, length: int) -> None:
        """Stop catching faults in a range."""
        _check(lib.vc_uffd_unregister(self._u, address, length), "UFFDIO_UNREGISTER")

    def zero(self, address: int, length: int) -> None:
        """Map the zero page over the missing pages of a range."""
        _check(lib.vc_uffd_zero(self._u, address, length), "UFFDIO_ZEROPAGE")

    @property
    def closed(self) -> bool:
        """True once closed (or forgotten after a fork)."""
        return self._u is None

    @property
    def faults(self) -> int:
        """Faults caught in all."""
        return lib.vc_uffd_faults(self._u)

    def range_faults(self, address: int) -> tuple[int, int]:
        """(faults caught, last faulting page address) in the range holding ``address``."""
        faults = _check(lib.vc_uffd_range_faults(self._u, address, self._last), "range")
        return faults, int(self._last[0])

    def close(self) -> None:
        """Stop and join the handler thread, close the descriptors."""
        u, self._u = self._u, None
        if u is not None:
            _check(lib.vc_uffd_close(u), "closing the userfaultfd")

    def forget(self) -> None:
        """In a forked child: close the descriptors; there is no thread to stop."""
        u, self._u = self._u, None
        if u is not None:
            lib.vc_uffd_forget(u)


def native_info() -> dict[str, Any]:
    """What the helper is: for ``volcache info``."""
    if lib is None:
        return {"loaded": False, "reason": _REASON}
    return {"loaded": True, "version": lib.VC_NATIVE_VERSION, "file": _native_file()}


def _native_file() -> str:
    from . import _native

    return _native.__file__
