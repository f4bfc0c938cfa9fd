"""A shared second tier behind the volatile cache: Redis, memcached, or your own.

``import volcache.tiers`` needs neither client library; each tier imports
its own when made, and says what to install if it is missing.
"""

from __future__ import annotations

from .base import PartialWrite, Tier, Unavailable
from .memcached_tier import MemcachedTier
from .redis_tier import RedisTier

__all__ = ["MemcachedTier", "PartialWrite", "RedisTier", "Tier", "Unavailable"]
