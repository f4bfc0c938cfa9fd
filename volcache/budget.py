"""Memory budgets: the bound on what caches keep that no purge takes back.

A cache's values and keys are volatile; its records, books, hot values and
Python objects are not. A :class:`MemoryBudget` bounds the sum of those over
the caches that share it: each cache reports its figure as it changes, and
one that pushes the sum past the limit evicts, from itself or, when its
share is below an even split, from the member that holds the most. Caches
made without ``memory_budget`` share one default budget, an eighth of the
memory limit the process runs under, so that a thousand per-instance
``@cached`` caches are bounded together, not each on its own.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections import deque
from typing import Any

from .backends.limits import process_limit

_BUDGET_SHARE = 8  # the default budget: an eighth of the process's memory limit
_LARGEST_EVERY = 64  # over-budget calls between two searches for the largest member


class MemoryBudget:
    """A limit in bytes on the non-volatile memory of the caches that share it.

    Pass one as ``memory_budget=`` to several caches (or to ``@cached`` with
    ``per_instance=True``, whose instances then share it).
    """

    def __init__(self, limit: int) -> None:
        if type(limit) is not int or limit < 1:
            raise ValueError(f"memory_budget must be a positive int, got {limit!r}")
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._members: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._reported: dict[int, int] = {}
        # Members collected without close(), appended by their finalizers:
        # those run inside any allocation, even one made under this lock, so
        # they take no lock; the next call under the lock drains them.
        self._gone: deque[int] = deque()
        self._largest = 0  # id of the member found largest last
        self._searches = 0
        _ALL.add(self)

    def __repr__(self) -> str:
        return f"MemoryBudget(limit={self.limit}, used={self.used}, members={len(self._members)})"

    @property
    def members(self) -> int:
        """How many caches share it."""
        return len(self._members)

    @property
    def over(self) -> bool:
        """Whether the members hold more than the limit."""
        with self._lock:
            self._drain()
            return self.used > self.limit

    def join(self, member: Any) -> None:
        """Count a member (by identity; it is not kept alive)."""
        with self._lock:
            self._drain()
            self._members[id(member)] = member
            self._reported.setdefault(id(member), 0)
        weakref.finalize(member, self._gone.append, id(member))

    def leave(self, member: Any) -> None:
        """Stop counting a member: what it reported is given back."""
        with self._lock:
            self._drain()
            self._forget(id(member))

    def _forget(self, ident: int) -> None:
        self.used -= self._reported.pop(ident, 0)
        self._members.pop(ident, None)

    def _drain(self) -> None:
        while self._gone:
            self._forget(self._gone.popleft())

    def report(self, member: Any, nbytes: int) -> bool:
        """A member holds ``nbytes`` now; returns whether the members are over the limit."""
        ident = id(member)
        with self._lock:
            self._drain()
            old = self._reported.get(ident)
            if old is not None:  # a member that left does not count again
                self._reported[ident] = nbytes
                self.used += nbytes - old
            return self.used > self.limit

    def share(self, member: Any) -> int:
        """The bytes a member reported last."""
        return self._reported.get(id(member), 0)

    def donor(self, member: Any) -> Any:
        """The member to evict from: the largest other one if ``member`` holds less
        than an even split of the limit, else ``member`` itself."""
        with self._lock:
            self._drain()
            count = len(self._reported)
            if count < 2 or self._reported.get(id(member), 0) * count >= self.limit:
                return member
            self._searches += 1
            if self._searches % _LARGEST_EVERY == 0 or self._largest not in self._reported:
                self._largest = max(self._reported, key=self._reported.__getitem__)
            largest = self._members.get(self._largest)
            return largest if largest is not None else member

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy of a cache (pickle, copy) gets a budget of the same limit, not this one.
        return MemoryBudget, (self.limit,)


_ALL: weakref.WeakSet[MemoryBudget] = weakref.WeakSet()


def _new_locks_in_child() -> None:
    # A budget's lock held at fork() by another thread would hang the child.
    for budget in list(_ALL):
        budget._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_in_child)


@functools.cache
def default_memory_budget() -> int:
    """An eighth of the memory this process may use (its cgroup's limit, else the
    machine's memory), read once per process."""
    return process_limit() // _BUDGET_SHARE


@functools.cache
def shared_default_budget() -> MemoryBudget:
    """The budget shared by every cache made without ``memory_budget``."""
    return MemoryBudget(default_memory_budget())
