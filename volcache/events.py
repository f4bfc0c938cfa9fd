"""Eviction callbacks: ``on_evict(key, reason)``, called once the cache's lock is released.

Entries leave for a reason while the cache holds its lock (an LRU eviction
inside a store, an expiry found by a lookup, the idle work's sweep). The
thread's outermost release of the cache locks it holds hands what was noted
meanwhile to the callback, so that the callback may use the cache (or any
other), and a slow one delays nobody holding a lock. Events noted while a
callback runs (by a cache it writes to) are delivered by the same delivery.
An exception in it goes to ``sys.unraisablehook``, as one in a
``__del__`` does, and the cache goes on.
"""

from __future__ import annotations

import _thread
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from typing import Any


class _ThreadState(threading.local):
    """What one thread is doing with callbacks (each thread has its own)."""

    def __init__(self) -> None:
        self.delivering = False  # calling a callback now (a delivery takes later events too)
        self.deferring = 0  # holding a cache's lock while it takes and releases another's
        # Locks whose events wait for this thread to hold no cache's lock, in order.
        self.waiting: dict[NotifyingLock, None] = {}


_thread_state = _ThreadState()

#: Why an entry left, as ``on_evict`` is told.
EVICTED, EXPIRED, PURGED = "evicted", "expired", "purged"


# typeshed calls _thread.RLock final and does not list its _is_owned(); CPython
# lets it be subclassed and has had that method as long as RLock itself.
class NotifyingLock(_thread.RLock):  # type: ignore[misc]
    """A cache's reentrant lock; a thread's outermost release of the cache locks it
    holds delivers the events noted meanwhile, of every cache, oldest cache first.

    Every cache has one, with or without a callback: a cache that evicts from
    another (a shared memory budget) releases that one's lock while holding
    its own, and its own release is where the other's events are delivered.
    """

    events: deque[tuple[Hashable, str]] | None
    callback: Callable[[Hashable, str], Any] | None

    def release(self) -> None:
        """Release; unless this thread still holds it, or another cache's lock
        (:func:`deferring`), or is delivering already (that delivery takes
        them), deliver the pending events."""
        _release(self)
        if self.events or _thread_state.waiting:  # else nothing to do: the common case
            self._deliver()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # release()'s lines, not a call of it: a lock's every use pays for this frame.
        _release(self)
        if self.events or _thread_state.waiting:
            self._deliver()

    def _deliver(self) -> None:
        if self._is_owned():  # type: ignore[attr-defined]
            return
        state = _thread_state
        if self.events:
            state.waiting[self] = None
        if state.waiting and not state.delivering and not state.deferring:
            _deliver_waiting(state)


_release = _thread.RLock.release


def notifying_lock(
    events: deque[tuple[Hashable, str]] | None, callback: Callable[[Hashable, str], Any] | None
) -> NotifyingLock:
    """A lock for a cache whose ``events`` go to ``callback`` (None: a cache without one)."""
    lock = NotifyingLock()
    lock.events = events
    lock.callback = callback
    return lock


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """While a cache's lock is held: another cache's lock released inside delivers
    nothing; its events wait for this thread's release of the outer lock."""
    state = _thread_state
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1


def _deliver_waiting(state: _ThreadState) -> None:
    state.delivering = True
    try:
        while state.waiting:
            lock = next(iter(state.waiting))
            del state.waiting[lock]
            if lock.events is not None and lock.callback is not None:
                deliver(lock.events, lock.callback)
    finally:
        state.delivering = False


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
