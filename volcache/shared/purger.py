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
from typing import Any

from ..backends.limits import MemoryLimit, cgroup_limit, find_limit
from ..backends.pressure import PressureWatcher
from .segment import Segment


class SharedPurger:
    """Keeps usage under a limit's watermark by purging one segment.

    ``cgroup``: the memory cgroup directory to follow (None: the one this
    process runs in, else the machine); ``headroom``: the bytes kept free
    below its limit (None: an eighth of it, within 8 MiB and 1 GiB).
    """

    def __init__(self, segment: Segment, cgroup: Any = None, headroom: int | None = None) -> None:
        self.segment = segment
        self._cgroup, self._headroom = cgroup, headroom
        self.purged_bytes = 0
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

    def _on_pressure(self, woke: float) -> None:
        self.relieve(0)

    def relieve(self, coming: int) -> int:
        """Purges enough, if ``coming`` more bytes would cross the watermark, to stay
        a slack below it; the bytes purged."""
        if os.getpid() != self._pid:  # a forked child: its own watcher
            self._watcher.forget()
            self._start()
        with self._lock:
            excess = self.limit.excess(coming)
            if excess <= 0:
                return 0
            freed = self.segment.purge(excess + self.limit.slack)
            self.purged_bytes += freed
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
