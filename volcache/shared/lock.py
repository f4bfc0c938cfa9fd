"""The segment's lock: one holder among every thread of every attached process.

A ``fcntl`` record lock on the segment's file: the kernel releases it when
its process dies, at whatever instruction, so a killed holder blocks nobody
(the next holder finds the header's ``dirty`` word set and recovers). Record
locks belong to a process, not a thread: a ``threading.Lock`` orders the
threads of one process first. A fork renews it in the child (a thread of the
parent may have held it), and a child does not inherit record locks.
"""

from __future__ import annotations

import fcntl
import os
import threading
import weakref
from types import TracebackType

_LOCKS: weakref.WeakSet[SegmentLock] = weakref.WeakSet()


class SegmentLock:
    """Exclusive access to a segment, across threads and processes."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._threads = threading.Lock()
        _LOCKS.add(self)

    def __enter__(self) -> SegmentLock:
        self._threads.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, 0)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, 0)
        finally:
            self._threads.release()

    def _renew(self) -> None:
        self._threads = threading.Lock()


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._renew()


os.register_at_fork(after_in_child=_after_fork_in_child)
