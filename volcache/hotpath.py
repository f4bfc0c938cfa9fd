"""The lock-free hot hit: in C (``volcache._core``) where it was built, else in Python.

A hot hit is a dict lookup, a tick of the cache's logical clock written into
the entry (which counts the hit and orders it) and, with a ``maxsize`` or a
TTL, a call that keeps the order. :class:`PyHotBase` is that in Python: the
reference the C version is tested against, and what runs where the C one
could not be built or is stale. The cache and its entries derive from
:data:`HotBase` and :data:`EntryBase`, whichever is in use; this module is
``volcache._core``'s (through :mod:`volcache.coremodule`). The cache's logical clock
(:data:`Clock`) is here too: the hot hit ticks it.

``VOLCACHE_CORE=python`` chooses the Python version (the differential tests
run both).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from .coremodule import core
from .keys import C_HASHED


class PyExpired(Exception):
    """A hot hit's touch found its entry's time up: the locked way removes it."""


# The C core's own where it is in use (it made them once, for every import of it).
if core is not None:
    COLD, MISSING, GETITEM, Expired = core.COLD, core.MISSING, core.GETITEM, core.Expired
else:
    COLD = object()  # Entry.value when the decoded value is not kept (the entry is not hot)
    MISSING = object()  # _hot_value: no hot entry
    GETITEM = object()  # _get_slow's "no default": a lookup as cache[key]
    Expired = PyExpired


def count_of(counter: itertools.count) -> int:
    """How many times ``next`` was called on a counter that started at 1."""
    return int(repr(counter)[6:-1]) - 1


class PyEntryBase:
    """An entry's fields (the C version's ``EntryBase`` has them as members)."""

    __slots__ = (
        "cost", "decode", "detached", "hot_since", "kept", "key", "mark", "own", "pins", "rid",
        "used", "value",
    )  # fmt: skip


class PyClock:
    """A cache's logical clock of uses: ``tick()`` gives 1, 2, 3, ..., atomically
    under the GIL (it is an ``itertools.count``'s ``__next__``)."""

    __slots__ = ("_count", "locked", "tick")

    def __init__(self) -> None:
        self._count = itertools.count(1)
        self.tick = self._count.__next__
        self.locked = 0  # ticks taken with the cache's lock held

    def stamp(self) -> int:
        """The next tick, taken with the cache's lock held (counted in ``locked``)."""
        self.locked += 1
        return self.tick()

    @property
    def taken(self) -> int:
        """Ticks taken so far."""
        return count_of(self._count)


class PyHotBase:
    """The hot hit in Python; the cache sets ``_objects``, ``_touch``, ``_maintain_at``,
    and the logical clock of uses: ``_uses`` (a :data:`Clock`) and ``_tick`` (its ``tick``).

    The hooks it calls on anything but a plain hot hit are the cache's:
    ``_get_slow(key, token)``, ``_uncount_hit()`` and ``_maintain_now()``;
    ``cache[key] = value`` and ``del cache[key]`` are its ``_setitem`` and
    ``_delitem`` (the C version stores a new key in one call where the
    cache's ``_quick`` plan allows: ``core/quick.c``).
    """

    _objects: dict[Hashable, Any]
    _touch: Callable[[Hashable, Any], Any] | None
    _maintain_at: int
    _uses: Any
    _tick: Callable[[], int]

    _quick: Any = None  # the C store's plan (the C version stores in one call with it)
    _stores = 0

    def __getitem__(self, key: Hashable) -> Any:
        value = self._hot_value(key)
        if value is MISSING:
            return self._get_slow(key, GETITEM)  # type: ignore[attr-defined]
        return value

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._setitem(key, value)  # type: ignore[attr-defined]

    def __delitem__(self, key: Hashable) -> None:
        self._delitem(key)  # type: ignore[attr-defined]

    def _hot_value(self, key: Hashable) -> Any:
        """A hot entry's value without the lock, else ``MISSING``.

        No lock: one dict lookup and attribute stores, each atomic under the
        GIL; a racing demotion or delete is harmless (the value read is still
        the value stored)."""
        entry = self._objects.get(key)  # not [key]: raising KeyError costs a miss 0.3 µs
        if entry is None:
            return MISSING
        value = entry.value  # read once: a racing demotion may make it COLD
        if value is COLD:
            return MISSING
        used = entry.used = self._tick()
        touch = self._touch
        if touch is not None:
            try:
                touch(key, entry)
            except KeyError:
                pass
            except Expired:
                self._uncount_hit()  # type: ignore[attr-defined]
                return MISSING
        if used >= self._maintain_at:
            self._maintain_now()  # type: ignore[attr-defined]
        return value


class PyMemoHit:
    """A memoized function's hot hit: :meth:`hit` takes the call's positional
    arguments; if each is of an exact type whose hash is C's
    (:data:`~volcache.keys.C_HASHED`), the tuple is its own key (as cachetools'
    ``hashkey`` makes it) and the cache's hot hit for it is counted in
    :attr:`hits`; else, or if the key is not hot, ``MISSING``. :meth:`call` is
    the whole call: the hit, else ``fallback(args)`` (the C version also makes
    the miss of a key the cache does not hold, in ``core/memo.c``: this one
    leaves every miss to the fallback, the decorator's Python, its reference)."""

    misses = 0  # misses made here (the C version's)

    def __init__(
        self, cache: Any, *, func: Any = None, memoized: Any = None, name: Any = None,
        label: Any = None, fallback: Callable[[tuple], Any] | None = None,
    ) -> None:  # fmt: skip
        self._hot_value = cache._hot_value
        self._count = PyClock()
        self._hit = self._count.tick
        self._fallback = fallback

    def call(self, args: tuple) -> Any:
        """The call's result: its hot hit, else ``fallback(args)`` (``MISSING`` without one)."""
        value = self.hit(args)
        if value is MISSING and self._fallback is not None:
            return self._fallback(args)
        return value

    def hit(self, args: tuple) -> Any:
        """The hot value for the call with these positional arguments, else ``MISSING``."""
        for part in args:
            if type(part) not in C_HASHED:
                return MISSING
        value = self._hot_value(args)
        if value is not MISSING:
            self._hit()
        return value

    @property
    def hits(self) -> int:
        """Hits counted here."""
        return self._count.taken


def _native() -> tuple[type, type, type, type] | None:
    """(HotBase, EntryBase, Clock, MemoHit) from the C module, or None (not built, stale,
    or not chosen)."""
    if core is None:
        return None
    return core.HotBase, core.EntryBase, core.Clock, core.MemoHit


_found = _native()
#: Whether the hot hit runs in C.
NATIVE = _found is not None
if TYPE_CHECKING:  # the C types have the Python ones' fields and methods
    HotBase = PyHotBase
    EntryBase = PyEntryBase
    Clock = PyClock
    MemoHit = PyMemoHit
else:
    HotBase, EntryBase, Clock, MemoHit = _found or (PyHotBase, PyEntryBase, PyClock, PyMemoHit)
