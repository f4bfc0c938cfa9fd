"""The segment's lock: one holder among every thread of every attached process.

An open-file-description lock (``F_OFD_SETLKW``) on the segment's file:

- the kernel releases it when the last descriptor of its open file
  description closes, as when its process dies at whatever instruction, so a
  killed holder blocks nobody (the next holder finds the header's ``dirty``
  word set and recovers);
- unlike a ``lockf`` record lock, it belongs to the open file description,
  not to the process: two caches of one segment in one process exclude each
  other, and closing one does not release the other's lock.

Threads sharing one description are one owner to the kernel: a
``threading.Lock`` orders them first. A forked child shares its parent's
descriptions, and so its locks: each lock's descriptor is reopened in the
child (a description of its own) and its thread lock renewed (a thread of
the parent may have held it).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import weakref
from types import TracebackType

_LOCKS: weakref.WeakSet[SegmentLock] = weakref.WeakSet()
# struct flock on Linux x86_64/aarch64: type, whence, start, len, pid (0 for OFD locks).
_FLOCK = struct.Struct("hh4xqqi4x")
_LOCK = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
_UNLOCK = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 1, 0)


class SegmentLock:
    """Exclusive access to a segment, across threads and processes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._threads = threading.Lock()
        _LOCKS.add(self)

    def __enter__(self) -> SegmentLock:
        self._threads.acquire()
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLKW, _LOCK)
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            fcntl.fcntl(self.fd, fcntl.F_OFD_SETLK, _UNLOCK)
        finally:
            self._threads.release()

    def _renew(self) -> None:
        self._threads = threading.Lock()
        if self.fd < 0:
            return
        # A description of the child's own, on the same file (even if unlinked),
        # under the same number: the mapping and every user of the number go on.
        fresh = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR | os.O_CLOEXEC)
        os.dup2(fresh, self.fd, inheritable=False)
        os.close(fresh)

    def forget(self) -> None:
        """The descriptor is being closed: nothing to reopen after a fork."""
        self.fd = -1


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._renew()


os.register_at_fork(after_in_child=_after_fork_in_child)
