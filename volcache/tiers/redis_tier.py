"""The tier on Redis or Redis Cluster, through redis-py (``pip install 'volcache[redis]'``)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Hashable
from typing import Any

from .base import PartialWrite, Tier

#: Groups a namespace's keys are spread over on a cluster: each a hash tag,
#: on one master; enough that every master holds a fair share of them.
CLUSTER_GROUPS = 256

# Deletes a lock only if it still holds this holder's token: atomic on the server.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def _cluster_node(url: str) -> Any:
    """The startup node a cluster URL names; ``ValueError`` for a URL that cannot be one."""
    from redis.cluster import ClusterNode
    from redis.connection import parse_url

    parsed = parse_url(url)  # ValueError naming the problem for a bad scheme
    if "path" in parsed:
        raise ValueError(f"a cluster is reached over TCP, not a Unix socket: {url!r}")
    if parsed.get("db", 0) != 0:
        raise ValueError(f"a cluster has only database 0: {url!r}")
    return ClusterNode(parsed.get("host", "localhost"), parsed.get("port", 6379))


def _same_options(urls: list[str]) -> None:
    """The startup nodes' URLs differ only in host and port: redis-py takes the
    password, TLS and other options from the first one alone."""
    from redis.connection import parse_url

    def options(url: str) -> dict[str, Any]:  # db is checked alone: 0 or absent
        return {k: v for k, v in parse_url(url).items() if k not in ("host", "port", "db")}

    first = options(urls[0])
    for url in urls[1:]:
        if options(url) != first:
            theirs = options(url)
            differ = sorted(k for k in first.keys() | theirs.keys()
                            if first.get(k) != theirs.get(k))  # fmt: skip
            raise ValueError(
                f"a cluster's startup nodes share their options; {url!r} differs from "
                f"the first URL in {', '.join(differ)}: only host and port may differ"
            )


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
            decides); with ``cluster=True`` a list of them too (startup nodes,
            asked in turn, which differ only in host and port); or a client
            of yours, used as it is: a
            ``redis.Redis``, or a ``redis.cluster.RedisCluster``.
        cluster: the URL is a node of a Redis Cluster (any node: the client
            learns the others from it). ``ValueError`` for a URL that cannot
            be one, or a server that answers and is not in cluster mode.
        options: :class:`~volcache.tiers.Tier`'s.

    ``lock=True`` takes ``SET key token NX PX`` and releases with a
    compare-and-delete script, so an expired lock taken by another is never
    deleted by its late first holder.

    On a cluster, a namespace's keys are spread over 256 hash-tagged groups,
    each with its own generation token beside its keys, so that the masters
    share the keys and a lookup is one ``MGET`` on one master; the breaker is
    kept per master, so a dead master switches off only the keys it holds.
    :meth:`~volcache.VolatileCache.clear` writes a new token for every group;
    a master's groups count as cleared once its replicas confirm (``WAIT``),
    and ``info().tier_clear_pending`` counts those that do not yet.
    """

    requirement = "redis"

    def __init__(self, url_or_client: Any, *, cluster: bool = False, **options: Any) -> None:
        super().__init__(**options)
        redis = _redis()
        from redis.backoff import NoBackoff
        from redis.cluster import RedisCluster
        from redis.retry import Retry

        self._client: Any = None
        self._make: Callable[[], Any] | None = None
        self._release_script: Any = None
        self._making = threading.Lock()
        self._warned = False
        urls = [url_or_client] if isinstance(url_or_client, str) else url_or_client
        if isinstance(urls, (list, tuple)) and urls and all(isinstance(u, str) for u in urls):
            if len(urls) > 1 and not cluster:
                raise TypeError("several URLs are a cluster's startup nodes: pass cluster=True")
            settings = {  # not the tier's **options, which the base class took
                "socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                "retry": Retry(NoBackoff(), 0),
            }  # fmt: skip
            self._owns_client = True
            self.cluster = cluster
            if cluster:
                nodes = [_cluster_node(url) for url in urls]
                _same_options(list(urls))
                self.urls = list(urls)
                startup: dict[str, Any] = {**settings, "retry": Retry(NoBackoff(), 2)}
                # A list of its own each time: redis-py appends the URL's node to it.
                self._make = lambda: RedisCluster(
                    url=urls[0], startup_nodes=list(nodes[1:]), **startup
                )
                self._make_cluster_now()
            else:  # one server's client connects at its first call: a bad URL raises here
                self._client = redis.Redis.from_url(urls[0], **settings)
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
                "RedisTier needs a redis:// URL (a list of them: a cluster's startup "
                "nodes), a redis.Redis or a redis.cluster.RedisCluster, "
                f"got {url_or_client!r}"
            )
        if self.cluster:
            self.groups = CLUSTER_GROUPS

    def _make_cluster_now(self) -> None:
        """The cluster's client, made now if a startup node answers. A server not in
        cluster mode raises ``ValueError``; no node answering raises nothing: the
        client is made at a later call, whose failure the breaker counts, so that
        a cluster down when a process starts is a tier that misses."""
        try:
            self._client = self._new_client()
        except ValueError:
            raise
        except Exception:
            pass

    def _new_client(self) -> Any:
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisClusterException
        from redis.retry import Retry

        assert self._make is not None
        try:
            # Two retries while it is made: redis-py's first question (COMMAND)
            # goes to the first master of its layout, and only a retry asks
            # another if that one is down.
            client = self._make()
        except RedisClusterException as exc:
            if "not enabled" in str(exc):
                raise ValueError(
                    f"cluster=True, but the server at {self.urls[0]} is not in cluster mode "
                    "(cluster-enabled no): pass cluster=False for one server"
                ) from exc
            raise
        client.set_retry(Retry(NoBackoff(), 0))  # then none: the breaker decides
        return client

    @property
    def client(self) -> Any:
        """The redis-py client; a cluster's is made at the first use the cluster answers."""
        client = self._client
        if client is None:
            # Made outside the lock: a fork while another thread waits for the
            # network here leaves the child a lock that nobody holds.
            try:
                client = self._new_client()
            except ValueError as exc:  # a server not in cluster mode: said once
                if not self._warned:
                    self._warned = True
                    warnings.warn(str(exc), RuntimeWarning, stacklevel=2)
                raise
            with self._making:
                if self._client is None:
                    self._client = client
                    client = None
            if client is not None:  # another thread made one first
                client.close()
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
        fails its own writes alone, each followed by ``WAIT`` for the master's
        connected replicas: a write is done only once a replica that may take
        over has it (a clear must survive a failover). Raises
        :class:`~volcache.tiers.PartialWrite` naming the keys of the masters
        that failed, if others did not."""
        client = self.client  # made now: where() names the masters of a made client
        batches: dict[Hashable, list[tuple[str, bytes]]] = {}
        for key, value in items:
            batches.setdefault(self.where(key), []).append((key, value))
        failed: list[str] = []
        failure: Exception | None = None
        for where, batch in batches.items():
            try:
                self._write_batch(client, where, batch)
            except Exception as exc:
                failure = failure or exc
                failed.extend(key for key, _ in batch)
        if failure is None:
            return
        if len(failed) == len(items):
            raise failure
        raise PartialWrite(failed, f"{len(failed)} of {len(items)} not written: {failure}")

    def _write_batch(self, client: Any, where: Hashable, batch: list[tuple[str, bytes]]) -> None:
        pipe = client.pipeline(transaction=False)
        for key, value in batch:
            pipe.set(key, value)
        results = pipe.execute(raise_on_error=False)
        error = next((r for r in results if isinstance(r, Exception)), None)
        if error is not None:
            raise error
        if not self.cluster:
            return
        if where is None:  # no master known for the keys: nobody to confirm them
            raise ConnectionError("no master is known for these keys' slots")
        node = client.get_node(node_name=where)
        if node is None:
            raise ConnectionError(f"no node {where} in the cluster's layout")
        server = client.get_redis_connection(node)
        # The replicas the cluster knows (not failed), not those connected now: one
        # whose link is down can still be promoted, without the new tokens.
        me = server.execute_command("CLUSTER MYID")
        me = me.decode() if isinstance(me, bytes) else me
        known = server.execute_command("CLUSTER REPLICAS", me)  # parsed by redis-py: a dict
        replicas = sum(1 for node in known.values() if "fail" not in node.get("flags", ""))
        if replicas:
            # Under the socket's timeout, so that a short count is an answer, not an error.
            wait_ms = max(1, int(self.timeout * 500))
            acked = int(server.execute_command("WAIT", replicas, wait_ms))
            if acked < replicas:
                raise ConnectionError(
                    f"{acked} of {replicas} replicas of {where} confirmed the write"
                )

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
