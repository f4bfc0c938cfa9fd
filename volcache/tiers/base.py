"""The tier contract: a shared store behind the caches of many processes.

A :class:`Tier` talks to one server (or pool, or cluster); subclass it for
another store by implementing its five storage methods. Every call to the
server goes through :meth:`Tier.call`, which turns any failure into "not
available" and keeps a circuit breaker: after ``failures`` errors in a row
the tier is skipped for ``backoff`` seconds, doubling with each failed trial
up to ``max_backoff``; the first call after the pause is a trial, and a
success closes the breaker. Calls in flight together when the server goes
away are not trials: however many fail, the first pause is ``backoff``.

A tier of several servers keeps a breaker per server (:meth:`Tier.where`
names the one a key lives on), so one dead server switches off only the keys
that live on it, and spreads a namespace over :attr:`Tier.groups` groups of
keys, each read with its own generation in one round trip to its server.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

#: Errors in a row before the tier is skipped.
FAILURES = 3
#: The first pause, and the longest, in seconds.
BACKOFF, MAX_BACKOFF = 1.0, 30.0


class Unavailable(Exception):
    """The tier failed or is being skipped: the caller goes on without it."""


class Skipped(Unavailable):
    """Not even tried: the tier failed lately (the circuit breaker is open)."""


class PartialWrite(Exception):
    """:meth:`Tier.set_many` wrote some of its items, not all.

    ``failed``: the keys that may not have been written (each was either
    not written, or written without the confirmation the tier asks for)."""

    def __init__(self, failed: list[str], message: str) -> None:
        super().__init__(message)
        self.failed = failed


class _Breaker:
    """One server's breaker (the tier's lock guards it)."""

    __slots__ = ("backoff", "failures", "open_until", "trial")

    def __init__(self) -> None:
        self.failures = 0
        self.backoff = BACKOFF
        self.open_until = 0.0
        self.trial = False


class Tier(abc.ABC):
    """A shared second tier: values stored by one process, found by the others.

    Args:
        namespace: where this tier's keys live. A ``VolatileCache`` needs one;
            ``@cached`` defaults to the function's module and qualified name.
        version: bump it after a change of code that changes the values: the
            old ones are not found any more.
        secret: a key (``bytes`` or ``str``) for HMAC-SHA256 over namespace,
            key and value. Without it, only raw buffers (``bytes``, arrays)
            are written and accepted: a pickle from a shared server could run
            anything when loaded.
        ttl: seconds a value lives in the tier (None: until the server evicts it).
        timeout: seconds a server call may take before it counts as failed.
        lock: single flight across processes: one computes a key, the others
            wait for the tier to have it.
        lock_timeout: seconds the lock is held at most (a crashed holder blocks
            nobody longer) and a waiter waits at most before computing itself.
    """

    #: What to ``pip install`` for this tier (for the error when it is missing).
    requirement = ""
    #: Groups a namespace's keys are spread over, each with a generation of its
    #: own on the server that holds the group (a cluster); 0: one generation
    #: for the namespace (one server, or servers that do not need it).
    groups = 0

    def __init__(
        self,
        *,
        namespace: str | None = None,
        version: int = 0,
        secret: bytes | str | None = None,
        ttl: float | None = None,
        timeout: float = 0.05,
        lock: bool = False,
        lock_timeout: float = 10.0,
    ) -> None:
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise TypeError(f"namespace must be a non-empty str or None, got {namespace!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise TypeError(f"version must be an int of 0 or more, got {version!r}")
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and (not isinstance(secret, bytes) or len(secret) < 16):
            raise ValueError("secret must be bytes or str of at least 16 bytes, or None")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be positive or None, got {ttl!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if not lock_timeout > 0:
            raise ValueError(f"lock_timeout must be positive, got {lock_timeout!r}")
        self.namespace = namespace
        self.version = version
        self.secret = secret
        self.ttl = ttl
        self.timeout = timeout
        self.lock = bool(lock)
        self.lock_timeout = lock_timeout
        self._breaker = threading.Lock()
        self._breakers: dict[Hashable, _Breaker] = {None: _Breaker()}
        self.clock: Callable[[], float] = time.monotonic

    # -- the storage, for a subclass --------------------------------------------------

    @abc.abstractmethod
    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """The values of ``keys`` (None where absent), in order."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` (for ``ttl`` seconds if given)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def set_many(self, items: list[tuple[str, bytes]]) -> None:
        """Store each ``(key, value)`` (for good); this default sets them one by one.

        Raises :class:`PartialWrite` naming the keys not written if some were
        (any other exception: none may have been)."""
        failed: list[str] = []
        first: Exception | None = None
        for key, value in items:
            try:
                self.set(key, value, None)
            except Exception as exc:
                failed.append(key)
                first = first or exc
        if first is not None:
            if len(failed) == len(items):
                raise first
            raise PartialWrite(failed, f"{len(failed)} of {len(items)} not written: {first}")

    @abc.abstractmethod
    def incr(self, key: str) -> int:
        """Add one to the integer at ``key`` (absent: 0) and return it.

        volcache itself no longer calls it (a namespace's generation is a random
        token, see :mod:`volcache.tiers.generation`)."""

    @abc.abstractmethod
    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """Store ``value`` (for ``ttl`` seconds if given) only if ``key`` is absent;
        whether it was."""

    def release(self, key: str, value: bytes) -> None:
        """Delete ``key`` if it still holds ``value`` (a lock's token).

        This default reads, then deletes: a lock that expired and was taken by
        another in between would be deleted. Override it with an atomic
        compare-and-delete where the store has one (``RedisTier`` does).
        """
        if self.get_many([key])[0] == value:
            self.delete(key)

    def close(self) -> None:
        """Close the connections (the tier is not used after)."""

    # -- calls, through the breaker -----------------------------------------------------

    def where(self, key: str) -> Hashable:
        """The breaker the calls for ``key`` go through: the server that holds it now
        (None: the tier's one breaker, the default)."""
        return None

    def call(self, operation: Callable[..., T], *args: Any, where: Hashable = None) -> T:
        """``operation(*args)``; ``Unavailable`` if it fails or the breaker of ``where``
        (see :meth:`where`) is open."""
        trial = False
        with self._breaker:
            breaker = self._breakers.get(where)
            if breaker is None:
                breaker = self._breakers[where] = _Breaker()
            if breaker.failures >= FAILURES:
                if self.clock() < breaker.open_until or breaker.trial:
                    raise Skipped("skipped: the tier failed lately")
                trial = breaker.trial = True  # one call tries; the others keep skipping meanwhile
        try:
            result = operation(*args)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # an interrupt: no verdict on the server
                if trial:
                    with self._breaker:
                        breaker.trial = False
                raise
            with self._breaker:
                breaker.failures += 1
                if trial:
                    breaker.trial = False
                    breaker.backoff = min(breaker.backoff * 2, MAX_BACKOFF)
                    breaker.open_until = self.clock() + breaker.backoff
                elif breaker.failures == FAILURES:
                    # Opens now. Calls that were in flight with this one and fail
                    # after it are no trials: they neither double nor extend the pause.
                    breaker.open_until = self.clock() + breaker.backoff
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc
        with self._breaker:
            if trial:
                breaker.trial = False
            breaker.failures = 0
            breaker.backoff = BACKOFF
        return result

    def skipping_at(self, where: Hashable = None) -> bool:
        """Whether calls through the breaker of ``where`` are being skipped now."""
        with self._breaker:
            breaker = self._breakers.get(where)
            return (
                breaker is not None
                and breaker.failures >= FAILURES
                and self.clock() < breaker.open_until
            )

    @property
    def skipping(self) -> bool:
        """Whether calls are being skipped now (the tier's one breaker is open; a
        tier of several servers: any of them)."""
        with self._breaker:
            now = self.clock()
            return any(
                b.failures >= FAILURES and now < b.open_until for b in self._breakers.values()
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r}, version={self.version})"
