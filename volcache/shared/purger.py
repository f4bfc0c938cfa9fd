"""Purging a shared segment under memory pressure, from any process attached to it.

Shared memory is not anonymous memory: ``MADV_FREE`` is refused on it, and
without swap the kernel never reclaims it. So each attached process follows
the memory limit it runs under (:mod:`volcache.backends.limits`: its cgroup's,
else the machine's) with the uffd purger's watermark, and whichever sees the
usage cross it purges the segment's least recently used entries, for every
process at once: before a store that would cross it, and from a thread woken
by the limit's events while the process is idle.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backends.limits import MemoryLimit, cgroup_limit, find_limit
from ..backends.pressure import PressureWatcher
from .segment import Segment

#: A store reads the usage again after this long, whatever room the last read left.
RECHECK_S = 0.01


class SharedPurger:
    """Keeps usage under a limit's watermark by purging one segment.

    ``cgroup``: the memory cgroup directory to follow (None: the one this
    process runs in, else the machine); ``headroom``: the bytes kept free
    below its limit (None: an eighth of it, within 8 MiB and 1 GiB).

    A store does not read the usage each time: one read leaves room below the
    watermark, and the stores after it spend half of that room, for at most
    :data:`RECHECK_S`, before the next read (on the machine's limit a read
    parses ``/proc/meminfo``). What others allocate meanwhile is the
    watching thread's to catch, as it is while this process is idle.
    """

    def __init__(
        self, segment: Segment, cgroup: Any = None, headroom: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.segment = segment
        self._cgroup, self._headroom = cgroup, headroom
        self._clock = clock
        self.purged_bytes = 0
        self.reads = 0  # of the usage, by stores and the watching thread
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()  # new in a forked child: a parent's thread may hold it
        self.limit: MemoryLimit = (
            find_limit(self._headroom)
            if self._cgroup is None
            else cgroup_limit(self._cgroup, self._headroom)
        )
        self._watcher = PressureWatcher(self.limit, self._on_pressure)
        self._read_at = -RECHECK_S  # when a store last read the usage
        self._room = 0  # the room below the watermark that read left
        self._spent = 0  # bytes stored since

    def _on_pressure(self, woke: float) -> None:
        self.relieve(0)

    def relieve(self, coming: int) -> int:
        """Purges enough, if ``coming`` more bytes would cross the watermark, to stay
        a slack below it; the bytes purged (``coming`` 0: look now)."""
        if os.getpid() != self._pid:  # a forked child: its own watcher
            self._watcher.forget()
            self._start()
        with self._lock:
            now = self._clock()
            if (coming and now - self._read_at < RECHECK_S
                    and 2 * (self._spent + coming) <= self._room):  # fmt: skip
                self._spent += coming
                return 0
            self.reads += 1
            excess = self.limit.excess(coming)
            self._read_at, self._spent, self._room = now, 0, max(0, -excess)
            if excess <= 0:
                return 0
            freed = self.segment.purge(excess + self.limit.slack)
            self.purged_bytes += freed
            self._room = 0  # what the purge gave back is read again by the next store
            return freed

    def describe(self) -> str:
        """What it follows, in one line."""
        return self.limit.describe()

    def stop(self) -> None:
        """Stop the watching thread (in a forked child: forget its descriptors)."""
        if os.getpid() != self._pid:
            self._watcher.forget()
        else:
            self._watcher.stop()
