"""Single-flight: one computation per key at a time; the others wait for it.

A wait that could never end raises instead: a thread (or asyncio task) that
would wait, directly or through others waiting in turn, for a computation it
is itself running. Every flight in the process is in one graph of who waits
for whom, so cycles through several caches are found too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from .coremodule import core

# Who waits for which flight: a thread's ident -> the _Flight it waits for,
# or an asyncio task -> the task it awaits. Checked and changed under _WAITS.
_WAITS = threading.Lock()
_waiting: dict[Any, Any] = {}


def _forget_waits_in_child() -> None:
    # The waiting threads do not exist in a child; the lock may have been held.
    global _WAITS
    _WAITS = threading.Lock()
    _waiting.clear()


os.register_at_fork(after_in_child=_forget_waits_in_child)


class DeadlockError(RuntimeError):
    """A computation needs, through others waiting in turn, a result it is computing itself."""


_LEAD, _WAIT, _AGAIN = range(3)  # run(): computes, waits for another thread, re-enters


class _PyFlight:
    """A computation others may wait for (``volcache._core.Flight`` in C, which a
    memoized function's miss made in C registers)."""

    __slots__ = ("done", "error", "finished", "key", "owner", "value")

    def __init__(self, key: Any) -> None:
        # Made when a second caller arrives: most computations have no waiter,
        # and an Event costs more than the rest of the bookkeeping.
        self.done: threading.Event | None = None
        self.key = key
        self.owner = threading.get_ident()
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False


if TYPE_CHECKING:  # the C type has the Python one's fields
    _Flight = _PyFlight
else:
    _Flight = core.Flight if core is not None else _PyFlight


class SingleFlight:
    """Runs ``compute(key)`` once per key at a time, across threads.

    Callers that arrive while a computation for the same key runs wait for
    it and get its result, or its exception. Nothing is remembered after it
    ends: a failure is not cached.

    Args:
        reentrant: a computation that needs its own key again in the same
            thread computes it again (as ``functools.lru_cache`` does),
            instead of raising.
    """

    def __init__(self, reentrant: bool = False) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}
        self._reentrant = reentrant

    def run(self, key: Hashable, compute: Callable[[Hashable], Any], label: Any = None) -> Any:
        """``compute(key)``, or the result of the one already running for ``key``.

        ``label`` names the computation in errors (default: ``key``).

        Raises:
            RuntimeError: ``compute`` needs the same key again in the same
                thread, and the flight is not ``reentrant``.
            DeadlockError: waiting would never end: the computation of ``key``
                waits, through other threads, for one this thread is running.
        """
        me = threading.get_ident()
        with self._lock:
            found = self._flights.get(key)
            if found is None:
                flight = self._flights[key] = _Flight(key if label is None else label)
                role = _LEAD
            elif found.owner == me:
                if not self._reentrant:
                    what = key if label is None else label
                    raise RuntimeError(f"computing {what!r} needs {what!r} again: a cycle")
                flight, role = found, _AGAIN  # computed again, below, outside the flight
            else:
                flight, role = found, _WAIT
                if flight.done is None:
                    flight.done = threading.Event()
        if role == _AGAIN:
            return compute(key)
        if role == _WAIT:
            _wait(flight, me)
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            flight.value = compute(key)
            return flight.value
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            flight.finished = True  # before anyone wakes: no longer a link in a cycle
            with self._lock:
                del self._flights[key]
                done = flight.done
            if done is not None:
                done.set()

    def __len__(self) -> int:
        return len(self._flights)


def _wait(flight: _Flight, me: int) -> None:
    """Wait for another thread's flight, unless that wait would close a cycle."""
    with _WAITS:
        link: _Flight | None = flight
        for _ in range(len(_waiting) + 1):
            if link is None:
                break
            if link.owner == me:
                raise DeadlockError(
                    f"waiting for {flight.key!r} would never end: its computation waits, "
                    f"through other threads, for {link.key!r}, which this thread is computing"
                )
            link = _waiting.get(link.owner)
            if link is None or link.finished:
                break
        _waiting[me] = flight
    try:
        if flight.done is not None:  # always, for a flight waited for: run() made it
            flight.done.wait()
    finally:
        with _WAITS:
            del _waiting[me]


def await_check(me: Any, task: Any, label: Any) -> None:
    """Before task ``me`` awaits ``task`` (computing ``label``): raise if that never ends."""
    with _WAITS:
        link = task
        for _ in range(len(_waiting) + 1):
            if link is me:
                raise DeadlockError(
                    f"awaiting {label!r} would never end: its computation awaits, through "
                    "other tasks, the task that asks for it"
                )
            link = _waiting.get(link)
            if link is None or link.done():
                break
        _waiting[me] = task


def await_done(me: Any) -> None:
    """Task ``me`` no longer awaits anything (see :func:`await_check`)."""
    with _WAITS:
        _waiting.pop(me, None)
