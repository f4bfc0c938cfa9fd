"""One volatile cache in shared memory for every process of a machine's user.

:class:`SharedVolatileCache` keeps its entries, index and books in a named
segment (:mod:`.segment`, laid out as :mod:`.layout` says) that any process
of the same user opens by name, or inherits across ``fork``.
"""

from __future__ import annotations

from .cache import SharedCacheInfo, SharedVolatileCache
from .segment import SegmentError

__all__ = ["SegmentError", "SharedCacheInfo", "SharedVolatileCache"]
