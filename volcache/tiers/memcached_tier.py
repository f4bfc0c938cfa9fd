"""The tier on memcached, through pymemcache (``pip install 'volcache[memcached]'``)."""

from __future__ import annotations

import math
from typing import Any

from .base import Tier


def _pymemcache() -> Any:
    try:
        import pymemcache.client.hash
    except ImportError:
        raise ImportError(
            "MemcachedTier needs pymemcache: pip install 'volcache[memcached]' "
            "(or pip install pymemcache)"
        ) from None
    return pymemcache.client


def _expire(ttl: float | None) -> int:
    # memcached counts whole seconds; 0 is "never".
    return 0 if ttl is None else max(1, math.ceil(ttl))


class MemcachedTier(Tier):
    """A tier on one or more memcached servers.

    Args:
        servers: ``"host:port"``, a ``(host, port)`` pair, or a list of them
            (keys are spread over them by consistent hashing; pymemcache takes a
            failing one out of the ring for a while itself, its keys then read as
            misses), or a pymemcache client of yours, used as it is.
        options: :class:`~volcache.tiers.Tier`'s.

    memcached counts time in whole seconds: ``ttl`` and ``lock_timeout`` are
    rounded up. Its lock is ``add`` with an expiry, released by reading then
    deleting (no compare-and-delete there).
    """

    requirement = "pymemcache"

    def __init__(self, servers: Any, **options: Any) -> None:
        super().__init__(**options)
        client = _pymemcache()
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
        common = {"connect_timeout": self.timeout, "timeout": self.timeout}
        if len(parsed) == 1:  # every failure reaches the breaker
            self.client = client.base.PooledClient(parsed[0], default_noreply=False, **common)
        else:
            # pymemcache's HashClient takes a failing server out of the ring by
            # itself (for dead_timeout): its keys then read as misses.
            self.client = client.hash.HashClient(parsed, use_pooling=True, **common)
        self._owns_client = True

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``get`` of several keys: one round trip a server."""
        found = self.client.get_many(keys)
        return [found.get(key) for key in keys]

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """``set``, expiring after ``ttl`` rounded up to a second. A value larger than
        the server's item size (1 MiB unless ``-I`` says more) is not stored: it stays
        local, and the server is not counted as failing for it."""
        from pymemcache.exceptions import MemcacheServerError

        try:
            self.client.set(key, value, expire=_expire(ttl), noreply=False)
        except MemcacheServerError as exc:
            if "too large" not in str(exc):
                raise

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

    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """``add``, expiring after ``ttl`` rounded up to a second (None: never)."""
        return bool(self.client.add(key, value, expire=_expire(ttl), noreply=False))

    def close(self) -> None:
        """Close the client if this tier made it."""
        if self._owns_client:
            self.client.close()
