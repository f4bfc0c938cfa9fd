"""The tier on Redis, through redis-py (``pip install 'volcache[redis]'``)."""

from __future__ import annotations

from typing import Any

from .base import Tier

# Deletes a lock only if it still holds this holder's token: atomic on the server.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def _redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "RedisTier needs redis-py: pip install 'volcache[redis]' (or pip install redis)"
        ) from None
    return redis


class RedisTier(Tier):
    """A tier on a Redis server.

    Args:
        url_or_client: a ``redis://`` URL (a client is made with ``timeout``
            for connecting and for every call, and no retries: the breaker
            decides), or a ``redis.Redis`` client of yours, used as it is.
        options: :class:`~volcache.tiers.Tier`'s.

    ``lock=True`` takes ``SET key token NX PX`` and releases with a
    compare-and-delete script, so an expired lock taken by another is never
    deleted by its late first holder.
    """

    requirement = "redis"

    def __init__(self, url_or_client: Any, **options: Any) -> None:
        super().__init__(**options)
        redis = _redis()
        if isinstance(url_or_client, str):
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self.client = redis.Redis.from_url(
                url_or_client,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
        elif hasattr(url_or_client, "mget") and hasattr(url_or_client, "set"):
            self.client = url_or_client
            self._owns_client = False
        else:
            raise TypeError(
                f"RedisTier needs a redis:// URL or a redis.Redis, got {url_or_client!r}"
            )
        self._release = self.client.register_script(_RELEASE)

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``MGET``: one round trip."""
        return list(self.client.mget(keys))

    def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """``SET``, with ``PX`` if a ``ttl`` is given."""
        self.client.set(key, value, px=None if ttl is None else max(1, round(ttl * 1000)))

    def delete(self, key: str) -> None:
        """``DEL``."""
        self.client.delete(key)

    def incr(self, key: str) -> int:
        """``INCR``."""
        return int(self.client.incr(key))

    def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """``SET NX`` (with ``PX`` if a ``ttl`` is given)."""
        px = None if ttl is None else max(1, round(ttl * 1000))
        return bool(self.client.set(key, value, nx=True, px=px))

    def release(self, key: str, value: bytes) -> None:
        """Compare-and-delete in one script."""
        self._release(keys=[key], args=[value])

    def close(self) -> None:
        """Close the client if this tier made it."""
        if self._owns_client:
            self.client.close()
