"""The tier on memcached, through pymemcache (``pip install 'volcache[memcached]'``)."""

from __future__ import annotations

import math
from typing import Any

from .base import Tier


def _pymemcache() -> Any:
    try:
        from pymemcache.client.hash import HashClient
    except ImportError:
        raise ImportError(
            "MemcachedTier needs pymemcache: pip install 'volcache[memcached]' "
            "(or pip install pymemcache)"
        ) from None
    return HashClient


def _expire(ttl: float | None) -> int:
    # memcached counts whole seconds; 0 is "never".
    return 0 if ttl is None else max(1, math.ceil(ttl))


class MemcachedTier(Tier):
    """A tier on one or more memcached servers.

    Args:
        servers: ``"host:port"``, a ``(host, port)`` pair, or a list of them
            (keys are spread over them by consistent hashing), or a pymemcache
            client of yours, used as it is.
        options: :class:`~volcache.tiers.Tier`'s.

    memcached counts time in whole seconds: ``ttl`` and ``lock_timeout`` are
    rounded up. Its lock is ``add`` with an expiry, released by reading then
    deleting (no compare-and-delete there).
    """

    requirement = "pymemcache"

    def __init__(self, servers: Any, **options: Any) -> None:
        super().__init__(**options)
        hash_client = _pymemcache()
        if hasattr(servers, "get_many") and hasattr(servers, "add"):
            self.client, self._owns_client = servers, False
            return
        if isinstance(servers, str | tuple):
            servers = [servers]
        parsed = []
        for server in servers:
            if isinstance(server, str):
                host, _, port = server.rpartition(":")
                server = (host or "127.0.0.1", int(port))
            parsed.append(tuple(server))
        self.client = hash_client(
            parsed,
            use_pooling=True,
            connect_timeout=self.timeout,
            timeout=self.timeout,
            retry_attempts=1,
            dead_timeout=0,  # no second breaker inside: the tier's decides
            ignore_exc=False,
            default_noreply=False,
        )
        self._owns_client = True

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``get`` of several keys: one round trip a server."""
        found = self.client.get_many(keys)
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """``set``, expiring after ``ttl`` rounded up to a second."""
        if not self.client.set(key, value, expire=_expire(ttl), noreply=False):
            raise OSError("memcached did not store the value (too large?)")

    def delete(self, key: str) -> None:
        """``delete``."""
        self.client.delete(key, noreply=False)

    def incr(self, key: str) -> int:
        """``incr``, creating the counter at 0 first if it is absent."""
        value = self.client.incr(key, 1, noreply=False)
        if value is None:
            self.client.add(key, b"0", noreply=False)
            value = self.client.incr(key, 1, noreply=False)
        return int(value)

    def add(self, key: str, value: bytes, ttl: float) -> bool:
        """``add``, expiring after ``ttl`` rounded up to a second."""
        return bool(self.client.add(key, value, expire=_expire(ttl), noreply=False))

    def close(self) -> None:
        """Close the client if this tier made it."""
        if self._owns_client:
            self.client.close()
