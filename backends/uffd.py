"""The ``uffd`` backend: a userspace purger, with userfaultfd catching touches of purged pages.

Here userspace decides what to drop, as production systems with a purge
budget do (Chromium's discardable memory): marking only records the pages as
volatile; a purger drops the oldest volatile pages with ``MADV_DONTNEED`` when
a byte budget is exceeded, when a pressure source fires (PSI, cgroup v1
pressure levels), or on :meth:`reclaim`, and knows exactly what it dropped.
Regions are registered with a userfaultfd in missing mode: touching a purged
page before re-pinning it (vrange answered that with SIGBUS) is caught by a
native handler thread, counted, and resolved with a zero page.
"""

from __future__ import annotations

import atexit
import functools
import math
import mmap
import os
import sys
import time
import weakref
from collections import deque
from errno import EPERM
from statistics import median
from typing import Any

from . import clib
from .contract import Backend, Capabilities, Region, VRange
from .limits import MemoryLimit, cgroup_limit, find_limit
from .pages import PURGED
from .pressure import PressureLevelSource, PressureSource, PressureWatcher, PsiSource

_LIVE: weakref.WeakSet[UffdBackend] = weakref.WeakSet()
_PRESSURES = ("limit", "psi", "pressure_level")


class PurgedAccessError(RuntimeError):
    """A purged page was touched before it was re-pinned (strict mode).

    Attributes:
        region: the region it is in.
        page: its index in the region.
        faults: how many such touches were caught in the region since the last report.
    """

    def __init__(self, region: Region, page: int, faults: int) -> None:
        super().__init__(
            f"page {page} of {region!r} was touched after it was purged and before it was "
            f"re-pinned ({faults} such touch{'es' if faults > 1 else ''}): its bytes are zeros"
        )
        self.region = region
        self.page = page
        self.faults = faults


@functools.cache
def _mode() -> tuple[str | None, bool]:
    """(why uffd cannot work here or None, whether only UFFD_USER_MODE_ONLY works)."""
    if not sys.platform.startswith("linux"):
        return "the uffd backend needs Linux (userfaultfd); use the sim backend here", False
    reason = clib.unavailable_reason()
    if reason is not None:
        return reason, False
    err = clib.uffd_probe(False)
    if err == 0:
        return None, False
    if err == EPERM and clib.uffd_probe(True) == 0:
        return None, True
    return _reason_for(err), False


def _reason_for(err: int) -> str:
    """The actionable sentence for a userfaultfd errno."""
    if err == EPERM:
        return (
            "userfaultfd is not permitted: it needs CAP_SYS_PTRACE, read-write access to "
            "/dev/userfaultfd, or sysctl vm.unprivileged_userfaultfd=1"
        )
    if err in (38, 22):  # ENOSYS, EINVAL
        return (
            "this kernel has no userfaultfd (CONFIG_USERFAULTFD, Linux 4.3+): "
            "use the kernel or sim backend"
        )
    return f"userfaultfd failed here ({os.strerror(err)})"


class UffdBackend(Backend):
    """Volatile memory purged by volcache itself, with touches of purged pages caught.

    By default (``pressure="limit"``) the purger keeps the memory limit this
    process runs under from being reached: the limit of its memory cgroup (the
    tightest up the tree), else the machine's memory. Usage above
    ``limit - headroom`` purges volatile pages at once from a background
    thread, and an allocation or a re-pin of purged pages that would cross it
    purges first, so that this backend's own memory is never what meets the
    limit (see :mod:`volcache.backends.limits`).

    Args:
        budget: resident bytes of this backend's regions (all pages but the
            purged ones) to stay under; the oldest volatile pages go first.
        pressure: ``"limit"`` (the default: follow the memory limit),
            ``"psi"`` or ``"pressure_level"`` (cgroup v1): purge when the
            kernel reports memory pressure, from a background thread; None:
            only the budget and :meth:`reclaim` purge.
        pressure_path: for ``"limit"``, a memory cgroup directory to follow
            instead of this process's own; the PSI file (default
            ``/proc/pressure/memory``; a cgroup v2 ``memory.pressure`` works
            too) or the cgroup v1 memory cgroup directory (default: this
            process's).
        headroom: for ``"limit"``, the bytes kept free below the limit
            (default: an eighth of the limit, within 8 MiB and 1 GiB).
        psi_trigger: the PSI trigger, ``"some <stall us> <window us>"``.
        pressure_level: ``"low"``, ``"medium"`` or ``"critical"`` (cgroup v1).
        pressure_purge: the fraction of the volatile pages to purge per event.
        strict: make the next call after a touch of a purged page raise
            :class:`PurgedAccessError` naming the region and page.
    """

    name = "uffd"
    capabilities = Capabilities(
        purger="volcache's purger: a byte budget, PSI or cgroup pressure events, and reclaim()",
        touch_purged="is caught by userfaultfd, counted per region and resolved with a zero "
        "page (strict=True: the next call raises PurgedAccessError)",
        needs="userfaultfd (root, CAP_SYS_PTRACE, or vm.unprivileged_userfaultfd=1; else "
        "UFFD_USER_MODE_ONLY) and the native helper",
    )

    def __init__(
        self,
        *,
        budget: int | None = None,
        pressure: str | None = "limit",
        pressure_path: str | os.PathLike[str] | None = None,
        headroom: int | None = None,
        psi_trigger: str = "some 50000 2000000",
        pressure_level: str = "low",
        pressure_purge: float = 0.25,
        strict: bool = False,
        page_size: int | None = None,
    ) -> None:
        if page_size not in (None, mmap.PAGESIZE):
            raise ValueError(
                f"uffd: page_size must be the system page size ({mmap.PAGESIZE}), got {page_size}"
            )
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"uffd: budget must be a non-negative int or None, got {budget!r}")
        if pressure not in (None, *_PRESSURES):
            raise ValueError(
                f"uffd: pressure must be None or one of {_PRESSURES}, got {pressure!r}"
            )
        if not 0 < pressure_purge <= 1:
            raise ValueError(f"uffd: pressure_purge must be within (0, 1], got {pressure_purge!r}")
        super().__init__()
        _, self._user_mode_only = _mode()
        self._uffd = clib.Userfaultfd(self._user_mode_only, self.page_size)
        self._native = clib.Counters()
        self._budget_pages = None if budget is None else budget // self.page_size
        self._strict = strict
        self._seen: dict[int, int] = {}  # faults already reported, by region
        self._seen_total = 0
        self._pid = os.getpid()
        self._forked = False  # set in a child after fork(): the handler thread is not there
        self._own = {
            "budget_purged_bytes": 0,
            "pressure_events": 0,
            "pressure_purged_bytes": 0,
            "purge_errors": 0,
        }
        self._last_purge_error: str | None = None
        self._reactions: deque[float] = deque(maxlen=256)
        self._pressure_fraction = pressure_purge
        self._watcher: PressureWatcher | None = None
        self._memory_limit: MemoryLimit | None = None
        if pressure is not None:
            try:
                source = self._source(
                    pressure, pressure_path, headroom, psi_trigger, pressure_level
                )
            except BaseException:
                self._uffd.close()
                raise
            if isinstance(source, MemoryLimit):
                self._memory_limit = source
                self._own.update(limit_purges=0, limit_purged_bytes=0)
            try:
                self._watcher = PressureWatcher(source, self._on_pressure)
            except BaseException:
                source.close()
                self._uffd.close()
                raise
        # A backend dropped without close() must not leave its handler thread,
        # its pressure thread and their descriptors behind.
        self._finalizer = weakref.finalize(self, _release_native, self._uffd, self._watcher)
        self._finalizer.atexit = False  # at exit, _close_all closes it whole, regions first
        _LIVE.add(self)

    @staticmethod
    def _source(
        pressure: str,
        path: str | os.PathLike[str] | None,
        headroom: int | None,
        psi_trigger: str,
        pressure_level: str,
    ) -> PressureSource:
        if pressure == "limit":
            return find_limit(headroom) if path is None else cgroup_limit(path, headroom)
        if pressure == "psi":
            return PsiSource(path or "/proc/pressure/memory", psi_trigger)
        return PressureLevelSource(path, pressure_level)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Linux, userfaultfd permitted, and the native helper; or why not."""
        return _mode()[0]

    # -- the contract ---------------------------------------------------------------

    def allocate(self, nbytes: int) -> Region:
        """A new region, registered with the userfaultfd; may purge to keep the budget."""
        with self._lock:
            region = super().allocate(nbytes)
            self._keep_budget()
        return region

    def vrange(self, region: Region, start: int, length: int, mode: Any) -> VRange:
        """As :meth:`Backend.vrange`; re-pinning purged pages may purge others for the budget."""
        with self._lock:
            result = super().vrange(region, start, length, mode)
            self._keep_budget()
        return result

    def _before_call(self) -> None:
        if self._forked:
            raise RuntimeError(
                f"this uffd backend was made in process {self._pid}, before a fork(); its "
                "fault handler does not exist here: make a new backend in this process"
            )
        if self._strict:
            self._report_touches()

    def _map(self, nbytes: int) -> tuple[mmap.mmap, int]:
        self._make_room(nbytes)
        mapping = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        address = clib.address_of(mapping)
        try:
            clib.no_huge_pages(address, nbytes)
            self._uffd.register(address, nbytes)
        except BaseException:
            mapping.close()
            raise
        self._native.count_syscalls(4)  # mmap, madvise, register, zero page
        return mapping, address

    def _mark(self, region: Region, first: int, npages: int) -> tuple[int, int]:
        return npages, 0  # the purger reads the page book: nothing to tell the kernel

    def _unmark(self, region: Region, first: int, npages: int) -> tuple[int, list[int], int]:
        ps = self.page_size
        purged: list[int] = []
        lost = self._book.count(region.ident, first, first + npages, PURGED)
        if not lost:
            return npages, purged, 0
        # The zero page costs nothing, but the caller is about to write these pages.
        self._make_room(lost * ps)
        for span, count in self._book.spans(region.ident, first, first + npages, bytes([PURGED])):
            # Map the zero page again, so that writing to the page does not fault.
            self._uffd.zero(region.address + span * ps, count * ps)
            self._native.count_syscalls()
            purged.extend(range(span, span + count))
        return npages, purged, 0

    def _purge(self, npages: int) -> int:
        """Drop the oldest volatile pages; never raises.

        It runs after a call has changed page states (and from the pressure
        thread): an error here must not undo a committed change. A span that
        ``madvise`` refuses (mlocked memory: EINVAL) is counted and made young,
        so that the next purge moves on to other pages.
        """
        ps = self.page_size
        total = 0
        for ident, first, count in self._book.oldest(npages):
            address = self._regions[ident].address + first * ps
            self._native.count_syscalls()
            try:
                clib.madvise(address, count * ps, mmap.MADV_DONTNEED)
            except OSError as exc:
                self._own["purge_errors"] += 1
                self._last_purge_error = f"madvise(MADV_DONTNEED): {exc.strerror}"
                self._book.renew(ident, first, count)
                continue
            self._book.set_purged(ident, first, count)
            total += count
        return total

    def _unmap(self, region: Region) -> None:
        self._seen.pop(region.ident, None)
        if not self._forked:
            self._uffd.unregister(region.address, region.size)
            self._native.count_syscalls(2)  # unregister, munmap

    def close(self) -> None:
        """Stop the pressure thread and the fault handler, release every region."""
        # Outside the lock: the pressure thread may be waiting for it to purge,
        # and joining it while holding the lock would wait forever.
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.forget() if self._forked else watcher.stop()
        super().close()

    def _close(self) -> None:
        _LIVE.discard(self)
        self._finalizer.detach()
        self._uffd.forget() if self._forked else self._uffd.close()

    # -- purging ----------------------------------------------------------------------

    def resident_bytes(self) -> int:
        """Bytes of this backend's regions that may hold memory: all but purged pages."""
        return (self._book.pages - self._book.purged) * self.page_size

    def _keep_budget(self) -> None:
        if self._budget_pages is None or self._closed:
            return
        over = self._book.pages - self._book.purged - self._budget_pages
        if over > 0:
            self._own["budget_purged_bytes"] += self._purge(over) * self.page_size

    def _make_room(self, nbytes: int) -> None:
        """Purge first if charging ``nbytes`` more would cross the limit's watermark."""
        if self._memory_limit is None or self._closed:
            return
        try:
            excess = self._memory_limit.excess(nbytes)
        except OSError:  # the group went away: nothing to keep under, the call goes on
            return
        if excess > 0:
            self._purge_for_limit(excess, None)

    def _purge_for_limit(self, excess: int, woke: float | None) -> None:
        slack = self._memory_limit.slack if self._memory_limit is not None else 0
        npages = -(-(excess + slack) // self.page_size)
        purged = self._purge(npages)
        self._own["limit_purges"] += 1
        self._own["limit_purged_bytes"] += purged * self.page_size
        if purged and woke is not None:
            self._reactions.append(time.perf_counter() - woke)

    def _on_pressure(self, woke: float) -> None:
        if self._memory_limit is not None:
            if self._memory_limit.excess() <= 0:  # most wakes: a look, no lock
                return
            with self._lock:
                excess = self._memory_limit.excess()
                if excess > 0 and not self._closed:
                    self._purge_for_limit(excess, woke)
            return
        with self._lock:
            if self._closed:
                return
            unpurged = self._book.volatile - self._book.purged
            purged = self._purge(math.ceil(unpurged * self._pressure_fraction))
            self._own["pressure_events"] += 1
            self._own["pressure_purged_bytes"] += purged * self.page_size
            if purged:
                self._reactions.append(time.perf_counter() - woke)

    # -- touches of purged pages ----------------------------------------------------------

    def _report_touches(self) -> None:
        total = self._uffd.faults
        if total == self._seen_total:
            return
        for region in self._regions.values():
            faults, last = self._uffd.range_faults(region.address)
            new = faults - self._seen.get(region.ident, 0)
            if new:
                # One region a call: the total is taken as seen only once every
                # region's touches were reported, so the next call finds the next.
                self._seen[region.ident] = faults
                raise PurgedAccessError(region, (last - region.address) // self.page_size, new)
        self._seen_total = total

    def touches(self, region: Region) -> int:
        """How many touches of purged pages were caught in a region."""
        with self._lock:
            if self._forked:
                self._before_call()  # raises: the handler is not in this process
            self._check_region(region)
            return self._uffd.range_faults(region.address)[0]

    def _stats(self) -> dict[str, Any]:
        reactions = list(self._reactions)
        caught = 0 if self._uffd.closed else self._uffd.faults
        return {
            "syscalls": self._native.syscalls,
            "caught_faults": caught,
            "user_mode_only": self._user_mode_only,
            "resident_bytes": self.resident_bytes(),
            "budget": None if self._budget_pages is None else self._budget_pages * self.page_size,
            "pressure": None if self._watcher is None else self._watcher.source.name,
            "pressure_errors": 0 if self._watcher is None else self._watcher.errors,
            "last_purge_error": self._last_purge_error,
            **self._limit_stats(),
            **self._own,
            "pressure_reaction_ms": None if not reactions else round(median(reactions) * 1e3, 3),
        }

    def _limit_stats(self) -> dict[str, Any]:
        if self._memory_limit is None:
            return {}
        return {
            "limit": self._memory_limit.describe(),
            "limit_bytes": self._memory_limit.limit,
            "headroom_bytes": self._memory_limit.headroom,
        }


def _release_native(uffd: clib.Userfaultfd, watcher: PressureWatcher | None) -> None:
    if watcher is not None:
        watcher.stop()
    uffd.close()


def _close_all() -> None:
    for backend in list(_LIVE):
        backend.close()


def _forget_in_child() -> None:
    # The handler and pressure threads did not come along: drop their
    # descriptors now, and let calls on these backends say what happened.
    for backend in list(_LIVE):
        backend._forked = True
        backend._uffd.forget()
        if backend._watcher is not None:
            backend._watcher.forget()
            backend._watcher = None


atexit.register(_close_all)
os.register_at_fork(after_in_child=_forget_in_child)
