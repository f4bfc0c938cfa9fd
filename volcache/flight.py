"""Single-flight: one computation per key at a time; the others wait for it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any


class _Flight:
    __slots__ = ("done", "error", "owner", "value")

    def __init__(self) -> None:
        # Made when a second caller arrives: most computations have no waiter,
        # and an Event costs more than the rest of the bookkeeping.
        self.done: threading.Event | None = None
        self.owner = threading.get_ident()
        self.value: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Runs ``compute(key)`` once per key at a time, across threads.

    Callers that arrive while a computation for the same key runs wait for
    it and get its result, or its exception. Nothing is remembered after it
    ends: a failure is not cached.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, _Flight] = {}

    def run(self, key: Hashable, compute: Callable[[Hashable], Any]) -> Any:
        """``compute(key)``, or the result of the one already running for ``key``.

        Raises:
            RuntimeError: if ``compute`` needs the same key again in the same
                thread (it would wait for itself forever).
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            elif flight.owner == threading.get_ident():
                raise RuntimeError(f"computing {key!r} needs {key!r} again: a cycle")
            elif flight.done is None:
                flight.done = threading.Event()
        if not leader:
            flight.done.wait()
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
            with self._lock:
                del self._flights[key]
                done = flight.done
            if done is not None:
                done.set()

    def __len__(self) -> int:
        return len(self._flights)
