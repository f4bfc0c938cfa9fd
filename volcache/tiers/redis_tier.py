"""The tier on Redis or Redis Cluster, through redis-py (``pip install 'volcache[redis]'``)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any

from .base import Tier

#: Groups a namespace's keys are spread over on a cluster: each a hash tag,
#: on one master; enough that every master holds a fair share of them.
CLUSTER_GROUPS = 256

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
    """A tier on a Redis server, or on a Redis Cluster.

    Args:
        url_or_client: a ``redis://`` URL (a client is made with ``timeout``
            for connecting and for every call, and no retries: the breaker
            decides), or a client of yours, used as it is: a ``redis.Redis``,
            or a ``redis.cluster.RedisCluster``.
        cluster: the URL is one node of a Redis Cluster (any node: the client
            learns the others from it).
        options: :class:`~volcache.tiers.Tier`'s.

    ``lock=True`` takes ``SET key token NX PX`` and releases with a
    compare-and-delete script, so an expired lock taken by another is never
    deleted by its late first holder.

    On a cluster, a namespace's keys are spread over 256 hash-tagged groups,
    each with its own generation token beside its keys, so that the masters
    share the keys and a lookup is one ``MGET`` on one master; the breaker is
    kept per master, so a dead master switches off only the keys it holds.
    :meth:`~volcache.VolatileCache.clear` writes a new token for every group
    and counts only once all are written.
    """

    requirement = "redis"

    def __init__(self, url_or_client: Any, *, cluster: bool = False, **options: Any) -> None:
        super().__init__(**options)
        redis = _redis()
        from redis.cluster import RedisCluster

        self._client: Any = None
        self._make: Callable[[], Any] | None = None
        self._release_script: Any = None
        if isinstance(url_or_client, str):
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            make = RedisCluster.from_url if cluster else redis.Redis.from_url
            settings = {  # not the tier's **options, which the base class took
                "socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                "retry": Retry(NoBackoff(), 0),
            }  # fmt: skip
            # A cluster client asks a node for the cluster's layout when it is
            # made: made at the first call instead, whose failure the breaker
            # counts, so that a node down when the process starts raises nothing.
            self._make = functools.partial(make, url_or_client, **settings)
            if not cluster:  # one server's client connects at its first call: made now,
                self._client = self._make()  # so that a bad URL raises here, as before
            self._owns_client = True
            self.cluster = cluster
        elif hasattr(url_or_client, "mget") and hasattr(url_or_client, "set"):
            self._client = url_or_client
            self._owns_client = False
            self.cluster = isinstance(url_or_client, RedisCluster)
            if cluster and not self.cluster:
                raise TypeError(
                    f"cluster=True needs a URL or a RedisCluster, got {url_or_client!r}"
                )
        else:
            raise TypeError(
                "RedisTier needs a redis:// URL, a redis.Redis or a redis.cluster.RedisCluster, "
                f"got {url_or_client!r}"
            )
        if self.cluster:
            self.groups = CLUSTER_GROUPS
        self._making = threading.Lock()

    @property
    def client(self) -> Any:
        """The redis-py client (made at the first use from a URL)."""
        client = self._client
        if client is None:
            with self._making:
                if self._client is None:
                    assert self._make is not None
                    self._client = self._make()
                client = self._client
        return client

    def _release_of(self) -> Any:
        script = self._release_script
        if script is None:
            script = self._release_script = self.client.register_script(_RELEASE)
        return script

    def where(self, key: str) -> Hashable:
        """On a cluster, the master that holds ``key`` as the client knows it (a
        replica that took over is a new one, its breaker closed)."""
        if not self.cluster or self._client is None:  # not made yet: its first call will
            return None
        try:
            return self._client.get_node_from_key(key).name  # type: ignore[no-any-return]
        except Exception:  # no node known for its slot: the cluster's one breaker
            return None

    def get_many(self, keys: list[str]) -> list[bytes | None]:
        """``MGET``: one round trip (on a cluster, keys of one hash tag)."""
        return list(self.client.mget(keys))

    def set_many(self, items: list[tuple[str, bytes]]) -> None:
        """One pipeline; on a cluster, one to each master, so that a dead master
        fails its own writes alone. The first failure is raised after every
        write that could land has."""
        client = self.client  # made now: where() names the masters of a made client
        batches: dict[Hashable, list[tuple[str, bytes]]] = {}
        for key, value in items:
            batches.setdefault(self.where(key), []).append((key, value))
        failure: Exception | None = None
        for batch in batches.values():
            pipe = client.pipeline(transaction=False)
            for key, value in batch:
                pipe.set(key, value)
            try:
                results = pipe.execute(raise_on_error=False)
            except Exception as exc:
                failure = failure or exc
                continue
            failure = failure or next((r for r in results if isinstance(r, Exception)), None)
        if failure is not None:
            raise failure

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
        self._release_of()(keys=[key], args=[value])

    def close(self) -> None:
        """Close the client if this tier made it."""
        if self._owns_client and self._client is not None:
            self._client.close()
