"""What a cache reports about itself."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """A snapshot of a :class:`~volcache.VolatileCache`'s counters and sizes.

    ``*_bytes`` are bytes of memory; ``currsize`` is in ``getsizeof`` units.
    The tier's counters are all 0 without a tier.

    Counts:
        hits: lookups answered from the cache (hot or re-pinned intact).
        misses: lookups that found no intact value (absent, or purged).
        purged: entries lost to purges (found when re-pinning their pages).
        regenerated: values produced by ``regenerate`` or ``__missing__``.
        regeneration_seconds: time spent producing them.
        evictions: entries removed to stay within ``maxsize`` or ``memory_budget``.

    Sizes:
        entries, currsize, maxsize: as the mapping sees them.
        hot_entries, hot_bytes: entries kept decoded and pinned for fast hits.
        pinned_entries: entries inside a ``pin()`` block.
        pinned_bytes: stored bytes of entries that are hot or pinned.
        volatile_bytes: pages holding entries that are marked volatile.
        pending_bytes: idle pages waiting to be marked volatile.
        purged_bytes: stored bytes of the entries lost to purges, in all.
        stored_bytes: bytes of all stored values.
        slab_bytes: memory taken from the backend.
        wasted_bytes: stored capacity beyond the values' bytes (page and slot rounding).
        nonvolatile_bytes: the cache's own memory no purge can take: the records
            and allocator books, the Python objects of hot, pinned and
            kept-as-object entries (estimated, keys included), and the hot values.
        memory_budget: the bound on ``nonvolatile_bytes``; past it the least
            recently used entries are evicted.
        idle_entries: entries held as a record only (their key is in volatile memory).
        index_bytes: the records, their hash index and the allocator's books.
        kept_entries: entries whose value the codec refused (it cannot be
            pickled), kept as the object itself: never purged, counted in
            ``nonvolatile_bytes``.

    Tier:
        tier_hits: local misses and purges answered by the tier (not regenerated).
        tier_misses: lookups the tier did not have (absent, expired or cleared).
        tier_errors: calls to the server that failed (timeouts, refused
            connections); the cache went on without it.
        tier_rejected: values found in the tier and refused: a wrong or missing
            MAC, garbage, another format or codec, or a codec's bytes without a
            secret. They were never decoded.
        tier_skipped: calls not made because the tier failed lately (the
            circuit breaker was open).
        tier_clear_pending: groups of the tier's keys (one on a single server,
            256 on a cluster) that the last ``clear()`` has not reached yet, as
            their server could not be told: this process neither reads nor
            writes them, and tries again at each use; other processes may be
            served their old values until then. 0: the clear holds everywhere.
    """

    hits: int
    misses: int
    purged: int
    regenerated: int
    regeneration_seconds: float
    evictions: int
    entries: int
    currsize: float
    maxsize: float
    hot_entries: int
    hot_bytes: int
    pinned_entries: int
    pinned_bytes: int
    volatile_bytes: int
    pending_bytes: int
    purged_bytes: int
    stored_bytes: int
    slab_bytes: int
    wasted_bytes: int
    backend: str
    nonvolatile_bytes: int = 0
    memory_budget: int = 0
    idle_entries: int = 0
    index_bytes: int = 0
    kept_entries: int = 0
    tier_hits: int = 0
    tier_misses: int = 0
    tier_errors: int = 0
    tier_rejected: int = 0
    tier_skipped: int = 0
    tier_clear_pending: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (for JSON)."""
        return asdict(self)
