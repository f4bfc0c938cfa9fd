"""Eviction callbacks: ``on_evict(key, reason)``, called once the cache's lock is released.

Entries leave for a reason while the cache holds its lock (an LRU eviction
inside a store, an expiry found by a lookup, the idle work's sweep). The
lock's outermost release hands what was noted meanwhile to the callback, so
that the callback may use the cache, and a slow one delays nobody holding
the lock. An exception in it goes to ``sys.unraisablehook``, as one in a
``__del__`` does, and the cache goes on.
"""

from __future__ import annotations

import _thread
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

_delivering = threading.local()  # this thread is calling a callback now

#: Why an entry left, as ``on_evict`` is told.
EVICTED, EXPIRED, PURGED = "evicted", "expired", "purged"


# typeshed calls _thread.RLock final and does not list its _is_owned(); CPython
# lets it be subclassed and has had that method as long as RLock itself.
class NotifyingLock(_thread.RLock):  # type: ignore[misc]
    """The cache's reentrant lock, delivering noted evictions at its outermost release."""

    events: deque[tuple[Hashable, str]]
    callback: Callable[[Hashable, str], Any]

    def release(self) -> None:
        """Release; the outermost release of this thread delivers pending events
        (not one inside the callback: the delivery going on takes those too)."""
        super().release()
        owned = self._is_owned()  # type: ignore[attr-defined]
        if self.events and not owned and not getattr(_delivering, "on", False):
            _delivering.on = True
            try:
                deliver(self.events, self.callback)
            finally:
                _delivering.on = False

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def notifying_lock(
    events: deque[tuple[Hashable, str]], callback: Callable[[Hashable, str], Any]
) -> NotifyingLock:
    """A lock for a cache whose ``events`` go to ``callback``."""
    lock = NotifyingLock()
    lock.events = events
    lock.callback = callback
    return lock


def deliver(events: deque[tuple[Hashable, str]], callback: Callable[[Hashable, str], Any]) -> None:
    """Call ``callback`` for each event, oldest first; another thread may share the work."""
    while True:
        try:
            key, reason = events.popleft()
        except IndexError:
            return
        try:
            callback(key, reason)
        except Exception as exc:  # reported, and the cache goes on
            _report(exc)


class _CallbackFailed:
    """Raises its exception from ``__del__``: CPython hands it to ``sys.unraisablehook``
    with the arguments it builds (they cannot be built from Python)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __del__(self) -> None:
        raise self.exc


_CallbackFailed.__del__.__qualname__ = "VolatileCache on_evict callback"


def _report(exc: BaseException) -> None:
    _CallbackFailed(exc)  # dropped at once: reported as unraisable
