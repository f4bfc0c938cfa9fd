"""Prometheus metrics for a cache, read from its ``info()`` when scraped.

``pip install 'volcache[metrics]'`` brings ``prometheus_client``; importing
this module without it works, and making a collector says what to install.
Nothing is counted twice and nothing runs between scrapes: the collector
reads the counters the cache keeps anyway.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_COUNTERS = (
    ("hits", "Lookups answered from the cache."),
    ("misses", "Lookups that found no intact value (absent, expired or purged)."),
    ("purged", "Entries lost to purges of their memory."),
    ("regenerated", "Values made again after a miss or a purge."),
    ("evictions", "Entries evicted past maxsize or the memory budget."),
    ("regeneration_seconds", "Seconds spent making values again."),
)
_TIER_COUNTERS = (
    ("tier_hits", "Lookups answered by the shared tier."),
    ("tier_errors", "Calls to the tier's server that failed."),
    ("tier_rejected", "Values from the tier refused (MAC, format or codec)."),
)
_GAUGES = (
    ("entries", "Entries in the cache."),
    ("volatile_bytes", "Bytes of memory holding entries, marked volatile."),
    ("nonvolatile_bytes", "Bytes of the cache's own memory that no purge takes."),
)


def _prometheus() -> Any:
    try:
        import prometheus_client.core
    except ImportError:
        raise ImportError(
            "PrometheusCollector needs prometheus_client: pip install 'volcache[metrics]' "
            "(or pip install prometheus-client)"
        ) from None
    return prometheus_client


class PrometheusCollector:
    """A ``prometheus_client`` collector of one cache's counters and sizes.

    Args:
        target: a ``VolatileCache``, a ``ThumbnailCache`` or a function (or
            method) decorated with ``@cached``/``lru_cache``, whose caches are
            summed.
        name: the value of the ``cache`` label of every metric.
        registry: where to register (default ``prometheus_client.REGISTRY``;
            None: not registered, call ``registry.register`` yourself).

    Metrics: counters ``volcache_hits_total``, ``volcache_misses_total``,
    ``volcache_purged_total``, ``volcache_regenerated_total``,
    ``volcache_evictions_total``, ``volcache_regeneration_seconds_total``
    (and ``volcache_tier_*_total`` with a tier); gauges ``volcache_entries``,
    ``volcache_volatile_bytes``, ``volcache_nonvolatile_bytes``.
    """

    def __init__(self, target: Any, name: str, registry: Any = "default") -> None:
        prometheus_client = _prometheus()
        if not isinstance(name, str) or not name:
            raise TypeError(f"name must be a non-empty str, got {name!r}")
        memoized = getattr(target, "_memoized", target)
        if not callable(getattr(target, "info", None)) and not hasattr(memoized, "_caches"):
            raise TypeError(
                "PrometheusCollector collects a VolatileCache, a ThumbnailCache or a @cached "
                f"function, got {target!r}"
            )
        self.target = target
        self.name = name
        if registry == "default":
            registry = prometheus_client.REGISTRY
        if registry is not None:
            registry.register(self)

    def _numbers(self) -> dict[str, float]:
        target = self.target
        if callable(getattr(target, "info", None)):
            return target.info().as_dict()
        memoized = getattr(target, "_memoized", target)
        calls = memoized.cache_info()
        totals: dict[str, float] = {}
        for cache in memoized._caches():
            for field, value in cache.info().as_dict().items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[field] = totals.get(field, 0) + value
        # The calls' own counts, as cache_info() reports them.
        totals.update(
            hits=calls.hits, misses=calls.misses, purged=calls.purged,
            regenerated=calls.regenerated,
        )  # fmt: skip
        return totals

    def _tiered(self) -> bool:
        target = self.target
        cache = getattr(getattr(target, "_memoized", target), "cache", target)
        return any(getattr(one, "_tier", None) is not None for one in (target, cache))

    def collect(self) -> Iterator[Any]:
        """The metrics, read now."""
        core = _prometheus().core
        numbers = self._numbers()
        counters = _COUNTERS + (_TIER_COUNTERS if self._tiered() else ())
        for field, text in counters:
            family = core.CounterMetricFamily(f"volcache_{field}", text, labels=["cache"])
            family.add_metric([self.name], numbers.get(field, 0))
            yield family
        for field, text in _GAUGES:
            family = core.GaugeMetricFamily(f"volcache_{field}", text, labels=["cache"])
            family.add_metric([self.name], numbers.get(field, 0))
            yield family

    def describe(self) -> Iterator[Any]:
        """Nothing up front: the registry then calls :meth:`collect` only when scraped."""
        return iter(())
